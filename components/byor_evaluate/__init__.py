from components.byor_evaluate.component import evaluate_byor

__all__ = ["evaluate_byor"]
