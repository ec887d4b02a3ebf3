# syntax=docker/dockerfile:1
# Three images from one file (how to build and push: components/README.md):
#   train    CUDA build of torch + eqface[export,pipeline]: the image every Kubeflow component runs in
#            (components/images.py TRAINING_IMAGE). GPUs come from the NVIDIA container runtime; the CUDA libraries
#            come with the torch wheel, so the base is plain Python.
#   service  slim: the aggregation service (python -m eqface.service) with only its own dependencies (no torch).
#   triton   NVIDIA's Triton server (onnxruntime backend for eqface_onnx) + what the python-backend `preprocess`
#            model imports from eqface (decoding and normalisation: numpy and Pillow, no torch).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.11-py3

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /opt/eqface

# ---------------------------------------------------------------------------------------------- the eqface wheel
FROM base AS wheel
COPY pyproject.toml README.md ./
COPY eqface ./eqface
COPY components ./components
RUN pip wheel --no-deps --wheel-dir /wheels .

# ------------------------------------------------------------------------------------------ GPU training image
FROM base AS train
# torch's CUDA build from PyTorch's own wheel index, pinned together: torch version and CUDA line (cu130 = CUDA 13.0,
# the stable line since torch 2.11). Override both with --build-arg to follow another driver.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}+${TORCH_CUDA}"
COPY constraints.txt /opt/eqface/constraints.txt
COPY --from=wheel /wheels /wheels
# constraints.txt pins torch==2.13.0, which the +cuXXX build above satisfies, so pip keeps it.
RUN pip install --constraint constraints.txt "$(ls /wheels/eqface-*.whl)[export,pipeline]" \
 && python -c "import torch, kfp, kfp.kubernetes, onnx, onnxruntime, tritonclient.grpc, boto3, google.cloud.storage; import eqface.workflow.deploy, eqface.workflow.training, components.pipeline" \
 && python -c "import torch; assert torch.version.cuda, 'torch is a CPU build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
# The NVIDIA container runtime exposes the driver's compute libraries only when asked.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# KFP's launcher creates its artifact folders (/minio, /gcs, /s3) at the root of the file system: stays root.
CMD ["python", "-m", "eqface.cli", "--help"]

# -------------------------------------------------------------------------------------- aggregation service
FROM base AS service
COPY pyproject.toml constraints.txt /opt/eqface/
# Only the service's dependencies, with the version ranges of pyproject.toml (core numpy/pillow + the serve extra's
# gRPC, protobuf + google.rpc types, Prometheus, Redis, tritonclient, PyJWT + cryptography for authentication), then
# eqface itself without its training dependencies.
ARG SERVICE_DEPENDENCIES="numpy pillow grpcio grpcio-health-checking grpcio-reflection protobuf googleapis-common-protos prometheus-client redis tritonclient pyjwt cryptography"
RUN python -c "import re, sys, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
wanted = sys.argv[1].split(); \
reqs = [r for r in p['dependencies'] + p['optional-dependencies']['serve'] if re.match(r'[A-Za-z0-9_.-]+', r).group(0).lower() in wanted]; \
missing = set(wanted) - {re.match(r'[A-Za-z0-9_.-]+', r).group(0).lower() for r in reqs}; \
assert not missing, f'not in pyproject.toml: {missing}'; \
print(*reqs, sep=chr(10))" "${SERVICE_DEPENDENCIES}" > service-requirements.txt \
 && pip install --constraint constraints.txt --requirement service-requirements.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/eqface-*.whl \
 && python -c "import sys, eqface.service.server, eqface.service.cli; assert 'torch' not in sys.modules" \
 && python -m eqface.service --help > /dev/null \
 && useradd --create-home --uid 10001 eqface
USER 10001
EXPOSE 50051 9464
ENTRYPOINT ["python", "-m", "eqface.service"]

# --------------------------------------------------------------------------------------------- Triton server
FROM ${TRITON_IMAGE} AS triton
COPY --from=wheel /wheels /wheels
# The image's system Python runs the python backend; eqface goes in without its training dependencies. That Python
# may be newer than the 3.11 pyproject.toml declares for training; the preprocessing code needs only numpy + Pillow.
RUN python3 -m pip install --no-cache-dir --break-system-packages "numpy>=1.26,<2" "pillow>=10,<14" \
 && python3 -m pip install --no-cache-dir --break-system-packages --no-deps --ignore-requires-python /wheels/eqface-*.whl \
 && python3 -c "import sys, eqface.contract, eqface.data.image_ops; assert 'torch' not in sys.modules"
# uid 1000 is the image's own triton-server user (manifests/ run it as 1000, read-only root filesystem).
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
