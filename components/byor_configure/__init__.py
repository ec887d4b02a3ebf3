from components.byor_configure.component import configure_byor

__all__ = ["configure_byor"]
