"""What the commands of both pipelines share: the cluster flags fixed when compiling, and a local run's outputs."""

from __future__ import annotations

import argparse


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """The Kubernetes settings fixed when compiling (``ClusterSettings``), shared by both pipelines' commands."""
    p.add_argument("--image", help="container image of every step (default: components/images.py TRAINING_IMAGE)")
    p.add_argument("--data-pvc", help="PVC with datasets, mounted at /mnt/data ('' for none)")
    p.add_argument(
        "--work-pvc", help="PVC for training checkpoints and BYOR feature caches, mounted at /mnt/work ('' for none)"
    )
    p.add_argument("--models-pvc", help="PVC holding the Triton model repository, mounted at /mnt/models ('' for none)")
    p.add_argument("--object-store-secret", help="secret with AWS_*/gcs-credentials.json keys ('' for none)")
    p.add_argument("--train-memory", help="memory request and limit of each training step")
    p.add_argument("--train-cpu", help="CPU request of each training step")
    p.add_argument(
        "--retries", dest="train_retries", type=int, help="retries of each training step (and of BYOR Step 2)"
    )
    p.add_argument(
        "--cache-data",
        action="store_true",
        help="let KFP cache the steps that read data locations (only for immutable, versioned locations)",
    )


def cluster_settings(args: argparse.Namespace):
    """The ``ClusterSettings`` the flags of :func:`add_cluster_arguments` name (unset flags keep the defaults)."""
    from dataclasses import replace

    from components.pipeline import ClusterSettings

    names = (
        "image",
        "data_pvc",
        "work_pvc",
        "models_pvc",
        "object_store_secret",
        "train_memory",
        "train_cpu",
        "train_retries",
    )
    changes = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    return replace(ClusterSettings(), cache_data=args.cache_data, **changes)


def print_outputs(result, triton_url: str) -> None:
    """The reports, the ONNX file and the deployment of a local run (``components.local_run.LocalRun``)."""
    print(f"  report  {result.report} (HTML)  {result.summary} (Markdown)")
    print(f"  ONNX    {result.onnx}")
    if result.deployed_version is None:
        print(f"  deploy  skipped: the evaluation did not pass the gate ({result.repository} unchanged)")
    else:
        loaded = f", loaded into {triton_url}" if triton_url else ""
        print(f"  deploy  version {result.deployed_version} in {result.repository} (local variant){loaded}")
        if not triton_url:
            print(f"          serve it: eqface serve triton --model-repository {result.repository}")
