#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with the project and its pinned
# dependencies (torch 2.14.1 / torchvision 0.29.1), then torchvision's weights cache seeded offline.
# Idempotent: a second run only checks. Override the interpreter with PYTHON=python3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python >= 3.11 is needed, this is {sys.version.split()[0]}: set PYTHON=python3.11")
PY
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/patchcore-fetch-weights
