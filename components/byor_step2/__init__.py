from components.byor_step2.component import train_quality_frozen

__all__ = ["train_quality_frozen"]
