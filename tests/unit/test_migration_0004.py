"""Migration 0004 (a second, correction ORU per result) on SQLite and PostgreSQL with data in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from ecg_gateway.store.db import alembic_config, make_engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url_at_0003(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = (f"sqlite:///{tmp_path / 'gateway.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    command.upgrade(alembic_config(url), "0003")
    return url


ROWS = [
    "INSERT INTO messages (id, source, idempotency_key, sha256, content_type, raw, identifiers) "
    "VALUES (1, 'hl7', 'k1', 'x', 'application/hl7-v2', :raw, '{}')",
    "INSERT INTO jobs (id, kind, state, message_id, priority, attempts, max_attempts) "
    "VALUES (1, 'triage', 'done', 1, 100, 1, 3)",
    "INSERT INTO results (id, message_id, job_id, category, quality, model_id, model_sha256) "
    "VALUES (1, 1, 1, 'acute', '{}', 'm', 's')",
    "INSERT INTO outbound (id, result_id, control_id, state, priority, attempts, max_attempts) "
    "VALUES (1, 1, 'ECGGW0000000001', 'delivered', 0, 1, 10)",
]
CORRECTION = ("INSERT INTO outbound (id, result_id, control_id, state, priority, attempts, max_attempts, "
              "kind) VALUES (2, 1, 'ECGGW0000000002', 'pending', 0, 0, 10, 'correction')")


def test_upgrade_keeps_rows_and_allows_a_correction_downgrade_removes_it(url_at_0003: str) -> None:
    engine = make_engine(url_at_0003)
    with engine.begin() as conn:
        for sql in ROWS:
            conn.execute(text(sql), {"raw": b"MSH|"})
    command.upgrade(alembic_config(url_at_0003), "0004")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT kind, state FROM outbound")).all() == [("result", "delivered")]
        conn.execute(text(CORRECTION))
        assert conn.execute(text("SELECT count(*) FROM outbound WHERE result_id = 1")).scalar() == 2
    command.downgrade(alembic_config(url_at_0003), "0003")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id FROM outbound")).all() == [(1,)]
    with pytest.raises(IntegrityError), engine.begin() as conn:  # one ORU per result again
        conn.execute(text("INSERT INTO outbound (id, result_id, control_id, state, priority, attempts, "
                          "max_attempts) VALUES (3, 1, 'ECGGW0000000003', 'pending', 0, 0, 10)"))
    engine.dispose()
