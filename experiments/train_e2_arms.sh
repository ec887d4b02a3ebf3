#!/usr/bin/env bash
# E2's Step-3 arms: one Step-2 checkpoint, one schedule, one seed; the arms differ in how Step 3 weighs the samples.
#   qw        s_i from the Step-2 network (the paper)          train.step3_quality=precomputed
#   none      s_i = 1 (no quality weights)                     train.step3_quality=none
#   mean      every s_i = mean(s_i): same logit scale, no per-sample information
#   shuffled  the s_i permuted across samples: same weights, attached to the wrong faces
#   qwdf      QW + QWDF: samples with s_i < 0.1 leave the batch  train.qwdf_threshold=0.1
# Each arm is skipped when its final.pt exists (the trainer returns a finished step as is), so re-running resumes.
# Usage: experiments/train_e2_arms.sh [STEP2_FINAL_PT] [OUT_DIR]   (then: python -m experiments.e2_qw_training)
set -euo pipefail
cd "$(dirname "$0")/.."
START=${1:-runs/mfn-celeba/step2-1/final.pt}
OUT=${2:-runs/e2}
EQFACE=${EQFACE:-.venv/bin/eqface}
PYTHON=${PYTHON:-.venv/bin/python}
# Step 3 keeps the start's (frozen) quality branch, so the arms build it in the start's shape, whatever the preset says.
REDUCE=$("$PYTHON" -c "import json, sys; from eqface.train import checkpoint
print(json.loads(checkpoint.load(sys.argv[1])['model_config']).get('quality_reduce', 0))" "$START")
arm() {
    local name=$1
    shift
    echo "== E2 arm ${name}"
    "$EQFACE" train --preset mobilefacenet-celeba --step 3 --init "$START" --out "$OUT/$name" --no-summary \
        --set "model.quality_reduce=$REDUCE" "$@"
}
arm qw --set train.step3_quality=precomputed
arm none --set train.step3_quality=none
arm mean --set train.step3_quality=mean
arm shuffled --set train.step3_quality=shuffled
arm qwdf --set train.step3_quality=precomputed --set train.qwdf_threshold=0.1
