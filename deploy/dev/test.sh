#!/usr/bin/env bash
# Set up this machine and run the whole test suite, lab tests included (needs root).
# Extra arguments go to pytest, e.g. `-m "not slow"` for the fast subset.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/dev/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
