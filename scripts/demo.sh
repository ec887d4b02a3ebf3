#!/usr/bin/env bash
# The main job on its embedded default: installs, then brings up the local stack — a trained model (the newest
# runs/*/model.pt, else it trains the demo preset on built-in synthetic faces first), a real Triton serving it, the
# aggregation service and Prometheus — streams a demo video of several subjects, prints each subject's quality,
# QWFA decision and identification, a summary, and stops everything. Extra arguments go to `eqface stack demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/eqface stack demo "$@"
