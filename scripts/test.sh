#!/usr/bin/env bash
# The project's test command (README): every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then export FERRY_PYTHON="${FERRY_PYTHON:-$PWD/.venv/bin/python}"; fi
exec cargo test --workspace "$@"
