from components.byor_export.component import export_grafted

__all__ = ["export_grafted"]
