#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite (what CI runs), or with --fast only the unit
# tests (tests/unit and bench's own tests: no daemon, no subprocess, under a minute).
# PostgreSQL tests use ECG_TEST_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
# and skip with a reason if no server answers.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import ecg_gateway, pytest, wfdb" 2>/dev/null; then
  scripts/setup.sh dev,train
fi
. .venv/bin/activate
if [ "${1:-}" = "--fast" ]; then
  shift
  exec python -m pytest -q -m "not slow" tests/unit bench "$@"
fi
exec python -m pytest -q "$@"
