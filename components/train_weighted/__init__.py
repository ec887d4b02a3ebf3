from components.train_weighted.component import train_weighted

__all__ = ["train_weighted"]
