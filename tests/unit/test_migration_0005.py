"""Migration 0005 (results keep acquired_at and the tracing) on SQLite and PostgreSQL with data in it.

A database at 0004 holding rows in every queue state is upgraded to head: every message, job,
result and outbound row is still there, unchanged, and the results whose ORU is still to be
composed have what the sender needs, decoded once by the migration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from pydicom.data import get_testdata_file
from sqlalchemy import Engine, text

from ecg_gateway.ecg import unpack_tracing
from ecg_gateway.store.db import alembic_config, make_engine

DICOM = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
HL7 = b"MSH|^~\\&|CART|H|GW|H|20250101||ORU^R01|1|P|2.5.1\r"  # stored long ago; never decoded here


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url_at_0004(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = (f"sqlite:///{tmp_path / 'gateway.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    command.upgrade(alembic_config(url), "0004")
    return url


#: message id -> (content type, raw); job, result and ORU rows per message below.
MESSAGES = {1: ("application/dicom", DICOM), 2: ("application/dicom", DICOM), 3: ("application/dicom", DICOM),
            4: ("application/dicom", b"not a dicom file"), 5: ("application/hl7-v2", HL7),
            6: ("application/dicom", DICOM), 7: ("application/dicom", DICOM)}
JOBS = [(1, "done", 1), (2, "done", 2), (3, "done", 3), (4, "done", 4), (5, "done", 5),
        (6, "queued", 6), (7, "dead", 7), (8, "running", 1)]  # (id, state, message); 8: a replay
RESULTS = [(1, 1, 1, "acute"), (2, 2, 2, "acute"), (3, 3, 3, "normal"), (4, 4, 4, "acute"),
           (5, 5, 5, "subacute")]  # (id, message, job, category)
#: (id, result, state, kind, payload): 1 delivered, 2 pending uncomposed, 3 composed and dead,
#: 4 undecodable and uncomposed, 5 sending uncomposed, 6 a correction waiting for its PDF.
OUTBOUND = [(1, 1, "delivered", "result", b"MSH|1"), (2, 2, "pending", "result", None),
            (3, 3, "dead", "result", b"MSH|3"), (4, 4, "pending", "result", None),
            (5, 5, "sending", "result", None), (6, 1, "pending", "correction", None)]


def _populate(engine: Engine) -> None:
    with engine.begin() as conn:
        for mid, (content_type, raw) in MESSAGES.items():
            conn.execute(text("INSERT INTO messages (id, source, idempotency_key, sha256, content_type, raw, "
                              "identifiers) VALUES (:id, 'dicom', :key, 'x', :ct, :raw, '{}')"),
                         {"id": mid, "key": f"k{mid}", "ct": content_type, "raw": raw})
        for jid, state, mid in JOBS:
            conn.execute(text("INSERT INTO jobs (id, kind, state, message_id, priority, attempts, max_attempts) "
                              "VALUES (:id, 'triage', :state, :mid, 100, 1, 3)"),
                         {"id": jid, "state": state, "mid": mid})
        for rid, mid, jid, category in RESULTS:
            conn.execute(text("INSERT INTO results (id, message_id, job_id, category, quality, model_id, "
                              "model_sha256, statements) VALUES (:id, :mid, :jid, :cat, '{}', 'm', 's', '[]')"),
                         {"id": rid, "mid": mid, "jid": jid, "cat": category})
        for oid, rid, state, kind, payload in OUTBOUND:
            conn.execute(text("INSERT INTO outbound (id, result_id, control_id, state, kind, payload, priority, "
                              "attempts, max_attempts) VALUES (:id, :rid, :cid, :state, :kind, :payload, 0, 1, 5)"),
                         {"id": oid, "rid": rid, "cid": f"ECGGW{oid:010d}", "state": state, "kind": kind,
                          "payload": payload})


def _snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the four tables, in the columns 0004 has."""
    queries = {
        "messages": "SELECT id, source, idempotency_key, content_type, raw FROM messages ORDER BY id",
        "jobs": "SELECT id, kind, state, message_id, priority, attempts, max_attempts FROM jobs ORDER BY id",
        "results": "SELECT id, message_id, job_id, category, model_id FROM results ORDER BY id",
        "outbound": "SELECT id, result_id, control_id, state, kind, payload, attempts FROM outbound ORDER BY id",
    }
    with engine.connect() as conn:
        return {table: [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                        for row in conn.execute(text(sql))] for table, sql in queries.items()}


def test_upgrade_accounts_for_every_row_and_backfills_what_the_sender_needs(url_at_0004: str) -> None:
    engine = make_engine(url_at_0004)
    _populate(engine)
    before = _snapshot(engine)
    assert [len(before[t]) for t in ("messages", "jobs", "results", "outbound")] == [7, 8, 5, 6]
    command.upgrade(alembic_config(url_at_0004), "head")
    assert _snapshot(engine) == before  # no row lost, added or changed
    with engine.connect() as conn:
        new = {rid: (acquired, tracing) for rid, acquired, tracing in conn.execute(
            text("SELECT id, acquired_at, tracing FROM results ORDER BY id"))}
    for rid in (1, 2):  # an ORU to compose (2; 1: its correction): decoded once, here
        acquired, tracing = new[rid]
        assert acquired == "2013-01-25T10:59:19"
        ecg = unpack_tracing(bytes(tracing))
        assert ecg.signal.shape[0] == 12 and ecg.fs > 0
    assert new[3] == (None, None)  # its ORU was composed before: its bytes are fixed
    assert new[4] == new[5] == (None, None)  # undecodable: as before, the ORU goes without PDF
    command.downgrade(alembic_config(url_at_0004), "0004")
    assert _snapshot(engine) == before
    engine.dispose()
