from components.train_quality.component import train_quality

__all__ = ["train_quality"]
