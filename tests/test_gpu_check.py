"""bench/gpu_check.sh's CPU dry run: the code the GPU host will run, at toy sizes, with only torch and numpy."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# The project's other dependencies, absent on the bare GPU host: importing one of them fails the run.
NOT_ON_THE_GPU_HOST = ("PIL", "scipy", "sklearn", "tqdm", "matplotlib", "onnx", "onnxruntime", "kfp", "grpc")


def _python_without_extras(tmp_path: Path) -> Path:
    """An interpreter command for which the packages above do not exist (``import PIL`` raises ImportError)."""
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in NOT_ON_THE_GPU_HOST)
    launcher = tmp_path / "python-bare"
    launcher.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "-c" ] && exec {sys.executable} "$@"\n'
        f'exec {sys.executable} -c "import runpy, sys; {block}; sys.argv = sys.argv[1:]; '
        'runpy.run_path(sys.argv[0], run_name=\'__main__\')" "$@"\n'
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    return launcher


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_figure_on_cpu(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": str(_python_without_extras(tmp_path)),
        "OUT": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT / "bench"),  # python3 bench/gpu_check.py has it as sys.path[0]
        "OMP_NUM_THREADS": "1",
    }
    cmd = ["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--no-compile"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    by = {}
    for line in lines:
        by.setdefault(line["figure"], []).append(line)

    train = {f["arm"]: f for f in by["train"]}
    assert set(train) == {"fp32", "bf16", "fp16", "bf16+cl"}, result.stderr[-3000:]
    assert all(f["status"] == "ok" and math.isfinite(f["images_per_s"]) and f["profile_top"] for f in train.values())
    assert train["fp16"]["grad_scale"] > 0 and train["bf16"]["grad_scale"] is None  # the scaler path ran
    (ddp,) = by["ddp_one_process"]
    assert ddp["status"] == "ok" and ddp["backend"] == "gloo" and ddp["world_size"] == 1
    assert [f["batch"] for f in by["inference"]] == [1, 4, 8]
    assert all(f["status"] == "ok" and f["max_cos_gap"] < 0.05 for f in by["inference"])
    assert [(f["status"], f["sample_rate"]) for f in by["partial_fc"]] == [("ok", 0.1), ("ok", 1.0)]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "summary on cpu" in result.stdout and "exit status" in result.stdout
    assert "train bf16+cl" in (tmp_path / "gpu_check.log").read_text()
