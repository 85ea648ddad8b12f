#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff (rules in pyproject.toml) over the whole tree
# and mypy over the ecg_gateway package. Usage: scripts/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
  scripts/setup.sh dev,train
fi
. .venv/bin/activate
ruff check .
mypy  # files and options: [tool.mypy] in pyproject.toml
