"""Shared fixtures: real SQLite files and a real PostgreSQL database per test session.

Tests under tests/integration start the daemon, servers, subprocesses or train a model: they
are marked ``integration`` and ``slow`` here, so ``-m "not slow"`` (scripts/test.sh --fast)
leaves them out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from tests.support.gateway import reap_daemons, running_daemons
from tests.support.paths import PG_ADMIN_URL

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    """Daemons a test started and left running are killed when it ends (a skip for missing
    data or a failure before the test's own cleanup left two serving the shared PostgreSQL
    database, and later tests saw their senders). Daemons of wider-scoped fixtures, already
    running when the test starts, are left to their fixtures."""
    before = running_daemons()
    yield
    reap_daemons(keep=before)


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        return f"no PostgreSQL reachable at {PG_ADMIN_URL}: {type(exc).__name__}"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (created and dropped here)."""
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ecggw_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _reset_pg(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    """An empty schema in the session's PostgreSQL database."""
    _reset_pg(pg_server_url)
    return pg_server_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a real SQLite file and on real PostgreSQL, migrated to head."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade_to_head(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine):  # type: ignore[no-untyped-def]
    return make_session_factory(engine)
