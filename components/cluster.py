"""Where the pipeline runs (image, volumes, secret, resources): fixed at compile time. Only the standard library, so
that ``eqface pipeline compile --help`` shows these defaults without importing kfp."""

from dataclasses import dataclass

from components.images import TRAINING_IMAGE


@dataclass(frozen=True)
class ClusterSettings:
    """Where the pipeline runs: image, volumes, secret, resources. Fixed at compile time (``eqface pipeline compile``
    flags); an empty PVC or secret name leaves that mount out."""

    image: str = TRAINING_IMAGE
    data_pvc: str = "eqface-data"  # datasets (read by prepare-data, and by training when data is referenced)
    data_mount: str = "/mnt/data"
    work_pvc: str = "eqface-work"  # training checkpoints, so a retried pod resumes mid-epoch
    work_mount: str = "/mnt/work"
    models_pvc: str = "eqface-models"  # the Triton model repository, when it is a volume
    models_mount: str = "/mnt/models"
    object_store_secret: str = "eqface-object-store"
    triton_control_secret: str = "eqface-triton-control"  # key "key": Triton's model-control key (deploy step only)
    train_cpu: str = "8"
    train_memory: str = "64Gi"
    shm_size: str = "16Gi"  # DataLoader workers and NCCL use /dev/shm; Kubernetes gives 64 MiB by default
    train_retries: int = 2  # with the work volume, a retry resumes from the last checkpoint (preempted GPU nodes)
    cache_data: bool = False  # the data at a location may change behind the same name: re-read it every run

    @property
    def default_repository(self) -> str:
        return f"{self.models_mount}/eqface" if self.models_pvc else ""

    @property
    def checkpoint_root(self) -> str:
        return f"{self.work_mount}/checkpoints" if self.work_pvc else ""
