"""/readyz of a running ``serve`` on real PostgreSQL when the database stops taking connections
(``ALLOW_CONNECTIONS false`` + its sessions terminated), and when it comes back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ecg_gateway.store.db import upgrade_to_head
from tests.support.carts import c_store
from tests.support.dicom_builders import ecg_dataset
from tests.support.gateway import GatewayProcess, write_config
from tests.support.paths import PG_ADMIN_URL


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait_ready(base: str, ready: bool, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, raw = _get(f"{base}/readyz")
        body = json.loads(raw)
        if (status == 200) == ready and body["ready"] is ready:
            return body
        time.sleep(0.2)
    raise AssertionError(f"/readyz never became ready={ready}: {body}")


def _allow_connections(name: str, allow: bool) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'))
        if not allow:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
    admin.dispose()


@pytest.mark.postgres
def test_readyz_not_ready_while_postgres_refuses_connections(tmp_path: Path, pg_url: str) -> None:
    upgrade_to_head(pg_url)
    name = pg_url.rsplit("/", 1)[1]
    config = write_config(tmp_path / "c.yaml", pg_url, hl7={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    base = f"http://127.0.0.1:{proc.ports['http']}"
    try:
        assert _wait_ready(base, True)["checks"]["database"] == {"ok": True}
        _allow_connections(name, False)
        try:
            body = _wait_ready(base, False)
            assert body["checks"]["database"] == {"ok": False, "error": "OperationalError"}
            assert body["checks"]["migrations"]["ok"] is False
            assert body["checks"]["listeners"]["ok"] is True  # the ports stay open...
            assert c_store(proc.ports["dicom"], ecg_dataset()) == 0xA700  # ...and say "retry later"
            status, page = _get(f"{base}/")
            assert status == 503 and "Database unavailable" in page
            assert _get(f"{base}/healthz")[0] == 200  # alive, just not ready
        finally:
            _allow_connections(name, True)
        assert _wait_ready(base, True)["checks"]["migrations"] == {"ok": True}
        assert c_store(proc.ports["dicom"], ecg_dataset()) == 0x0000
    finally:
        assert proc.stop() == 0
