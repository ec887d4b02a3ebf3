from components.train_backbone.component import train_backbone

__all__ = ["train_backbone"]
