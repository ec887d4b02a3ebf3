"""What the commands of both pipelines share: the cluster flags fixed when compiling, and a local run's outputs."""

from __future__ import annotations

import argparse


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """The Kubernetes settings fixed when compiling (``ClusterSettings``), shared by both pipelines' commands."""
    from components.cluster import ClusterSettings  # the standard library only: --help stays fast

    cluster = ClusterSettings()  # the defaults shown are the ones compiling uses
    p.add_argument("--image", default=cluster.image, help="container image of every step")
    p.add_argument("--data-pvc", default=cluster.data_pvc, help="PVC with datasets, mounted at /mnt/data ('' for none)")
    p.add_argument(
        "--work-pvc",
        default=cluster.work_pvc,
        help="PVC for training checkpoints and BYOR feature caches, mounted at /mnt/work ('' for none)",
    )
    p.add_argument(
        "--models-pvc",
        default=cluster.models_pvc,
        help="PVC holding the Triton model repository, mounted at /mnt/models ('' for none)",
    )
    p.add_argument(
        "--object-store-secret",
        default=cluster.object_store_secret,
        help="secret with AWS_*/gcs-credentials.json keys ('' for none)",
    )
    p.add_argument(
        "--triton-control-secret",
        default=cluster.triton_control_secret,
        help="secret whose key 'key' unlocks Triton's model control; mounted into the deploy step only ('' for none)",
    )
    p.add_argument(
        "--train-memory", default=cluster.train_memory, help="memory request and limit of each training step"
    )
    p.add_argument("--train-cpu", default=cluster.train_cpu, help="CPU request of each training step")
    p.add_argument(
        "--retries",
        dest="train_retries",
        type=int,
        default=cluster.train_retries,
        help="retries of each training step (and of BYOR Step 2)",
    )
    p.add_argument(
        "--cache-data",
        action="store_true",
        help="let KFP cache the steps that read data locations (only for immutable, versioned locations)",
    )


def cluster_settings(args: argparse.Namespace):
    """The ``ClusterSettings`` the flags of :func:`add_cluster_arguments` name (unset flags keep the defaults)."""
    from components.cluster import ClusterSettings

    names = (
        "image",
        "data_pvc",
        "work_pvc",
        "models_pvc",
        "object_store_secret",
        "triton_control_secret",
        "train_memory",
        "train_cpu",
        "train_retries",
    )
    return ClusterSettings(cache_data=args.cache_data, **{k: getattr(args, k) for k in names})


def print_outputs(result, triton_url: str) -> None:
    """The reports, the ONNX file and the deployment of a local run (``components.local_run.LocalRun``)."""
    if getattr(result, "chosen_model", None) is not None:
        print(f"  model   {result.chosen_model}")
    print(f"  report  {result.report} (HTML)  {result.summary} (Markdown)")
    print(f"  ONNX    {result.onnx}")
    if result.deployed_version is None:
        print(f"  deploy  skipped: the evaluation did not pass the gate ({result.repository} unchanged)")
    else:
        loaded = f", loaded into {triton_url}" if triton_url else ""
        print(f"  deploy  version {result.deployed_version} in {result.repository} (local variant){loaded}")
        if not triton_url:
            print(f"          serve it: eqface serve triton --model-repository {result.repository}")
