#!/usr/bin/env bash
# Creates .venv with the Python packages the peer tests use (tritonclient,
# onnxruntime, scipy). Idempotent; fixtures themselves are committed, not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import onnxruntime, numpy, scipy, tritonclient.http" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
fi
# moto[server]: the S3-compatible store the control plane's S3 tests start.
if ! .venv/bin/python -c "import moto.server" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==5.2.5"
fi
