#!/usr/bin/env bash
# Installs everything, then runs the whole test suite. Missing services fail (not skip) the tests that need them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export EQFACE_REQUIRE_SERVICES=1
exec .venv/bin/python -m pytest "$@"
