from components.deploy_triton.component import deploy_triton

__all__ = ["deploy_triton"]
