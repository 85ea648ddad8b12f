#!/usr/bin/env bash
# Create .venv with the pinned CPU torch first (an unpinned torch resolves to a multi-GB CUDA
# build), then the project. Usage: scripts/setup.sh [extras, e.g. dev,train]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
if [ -n "$extras" ]; then
  python -m pip install -q -e ".[${extras}]"
else
  python -m pip install -q -e .
fi
