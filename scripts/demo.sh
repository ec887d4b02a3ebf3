#!/usr/bin/env bash
# The main job on its embedded default: installs, then trains EQFace Step 1 → 2 → 3 → 2 on built-in synthetic faces
# and prints held-out verification accuracy and the quality distribution. Extra arguments go to `eqface train`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/eqface train --preset demo --out runs/demo "$@"
