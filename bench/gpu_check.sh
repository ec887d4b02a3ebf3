#!/usr/bin/env bash
# The GPU proof of issue 15 (bench/gpu_check.py): IResNet-50 training images/s fp32 vs bf16 vs fp16 at batch 128,
# a one-process NCCL DDP step, Partial FC at 1 M identities, fp16 inference images/s at batch 1/32/128.
#
# Prepared to run once, unattended, in under 8 minutes on one GPU with no network: it needs python3 with torch
# (CUDA) and numpy, nothing installed; the project is carried as a folder and found through PYTHONPATH.
#
#   bash bench/gpu_check.sh                  # the GPU run (writes gpu_check.log to $OUT when set, else here)
#   bash bench/gpu_check.sh --device cpu --tiny --no-compile   # the CPU dry run of the same code
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
LOG="${OUT:-$ROOT}/gpu_check.log"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$ROOT" || exit 2

{
  echo "gpu_check: $(date -u +%FT%TZ) on $(hostname), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "available", torch.cuda.is_available(), "numpy", numpy.__version__)' || exit 2
} 2>&1 | tee "$LOG"

# 470 s hard stop (the script's own budget skips sections that would end after ~420 s); default --device cuda.
timeout --signal=INT --kill-after=20 470 "$PYTHON" bench/gpu_check.py --budget-s 420 "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "gpu_check: exit status $status (0: every figure measured; 1: a figure failed or is missing; 124: timed out)" \
  | tee -a "$LOG"
exit "$status"
