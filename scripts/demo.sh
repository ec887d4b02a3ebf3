#!/usr/bin/env bash
# The main job on its embedded default: installs, then brings up the local stack — a model built once (cached in
# runs/byor-demo/<hash of its inputs>; --rebuild builds it again) by the bring-your-own-recogniser path from the shared
# pretrained recogniser and the CelebA pack, a real Triton serving it, the aggregation service and Prometheus —
# enrolls held-out CelebA identities, streams their faces and then a real video clip of them through the camera
# client, prints each face's quality, QWFA decision and identification, a summary, and stops everything. Needs the
# shared data folder (../shared/data or $EQFACE_SHARED_DATA). Extra arguments go to `eqface stack demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/eqface stack demo "$@"
