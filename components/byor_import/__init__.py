from components.byor_import.component import import_recogniser

__all__ = ["import_recogniser"]
