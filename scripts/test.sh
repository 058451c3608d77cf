#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the whole test suite on the CPU. Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export FIFTYONE_DO_NOT_TRACK=true FIFTYONE_DATABASE_VALIDATION=false
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
