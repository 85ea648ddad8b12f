"""PHI-free logging (reliability.md §4, T14): every way text reaches stdout/stderr is scrubbed.

The scenarios run in a subprocess with the daemon's logging set-up (it replaces global
hooks: root handler, warnings capture, sys/threading excepthooks), JSON and console.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.gateway import REPO

SCENARIOS = r'''
import asyncio, gc, logging, sys, threading, warnings
import structlog
from ecg_gateway.logs import configure_logging
configure_logging("DEBUG", json_output=sys.argv[1] == "json")
log = structlog.get_logger("ecg_gateway.scenario")

def parse(value):
    local_copy = value  # structlog's default dict tracebacks would print this local
    raise ValueError(f"Invalid value for VR DA: {value!r}")

try:
    parse("ZZCANARY-19011231")
except ValueError:
    log.exception("decode_failed", patient_name="ZZCANARY^JANE", patient_id="ZZCANARY-ID",
                  raw=b"PID|1||ZZCANARY", error_count=1)
try:
    try:
        parse("ZZCANARY-inner")
    except ValueError as exc:
        raise RuntimeError("wrapped ZZCANARY") from exc
except RuntimeError:
    log.error("chained", exc_info=True)
logging.getLogger("pydicom").warning("Invalid value for VR PN: 'ZZCANARY^JOHN'.")
logging.getLogger("pynetdicom.events").error("Exception in handler: %s", "ZZCANARY-arg")
logging.getLogger("hl7apy").info("segment PID|1||ZZCANARY")
logging.getLogger("alembic.runtime").warning("Running upgrade 0001 -> 0002")
warnings.warn("value 'ZZCANARY' looks odd")

async def failing():
    raise KeyError("ZZCANARY-in-task")

async def main():
    asyncio.get_running_loop().create_task(failing())
    await asyncio.sleep(0.05)
    gc.collect()

asyncio.run(main())
gc.collect()
thread = threading.Thread(target=parse, args=("ZZCANARY-thread",), name="assoc-1")
thread.start()
thread.join()
print("scenarios done", file=sys.stderr)
parse("ZZCANARY-main")
'''


@pytest.mark.parametrize("mode", ["json", "console"])
def test_t14_exceptions_library_logs_warnings_and_crashes_carry_no_phi(mode: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIOS, mode], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    out = done.stdout + done.stderr
    assert "scenarios done" in out and done.returncode == 1  # the last parse() is uncaught: exit 1
    assert out.count("ZZCANARY") == 0 and "19011231" not in out, out
    for expected in ("decode_failed", "chained", "pydicom message withheld", "Exception in handler: %s",
                     "hl7apy message withheld", "Running upgrade 0001 -> 0002", "python_warning",
                     "uncaught_exception", "assoc-1", "builtins.ValueError", "builtins.RuntimeError",
                     "in parse", "hmac:"):
        assert expected in out, (expected, out)
    if mode == "json":
        records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        first = next(r for r in records if r["event"] == "decode_failed")
        assert first["raw"] == "[redacted]" and first["patient_id"].startswith("hmac:")
        assert first["error_count"] == 1 and first["exc"]["type"] == "builtins.ValueError"
        assert any(r["event"] == "asyncio message withheld" and "exc" in r for r in records), records
