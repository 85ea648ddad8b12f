"""Duplicates through a running ``serve`` (reliability.md T6): 1 row, 1 job, 1 ORU; conflicts audited."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from ecg_gateway.audit import export
from ecg_gateway.store.db import make_engine, make_session_factory
from ecg_gateway.store.models import Event, Job, Message, Outbound, Result
from tests.support.carts import c_store, hl7_exchange
from tests.support.dicom_builders import ecg_dataset
from tests.support.ehr_peer import EhrPeer, control_id
from tests.support.gateway import ALL_CATEGORIES, GatewayProcess, write_config
from tests.support.hl7_builders import small_oru


def test_t6_duplicates_store_once_send_one_oru_each_and_conflicts_are_audited(tmp_path: Path) -> None:
    ehr = EhrPeer()
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, http={"enabled": False}, worker={"poll_interval_s": 0.2},
                          outbound={"host": "127.0.0.1", "port": ehr.port, "categories": ALL_CATEGORIES,
                                    "attach_pdf": False})
    proc = GatewayProcess(config).wait_started()
    try:
        ds = ecg_dataset()
        assert [c_store(proc.ports["dicom"], ds) for _ in range(3)] == [0x0000] * 3
        ds.PatientID = "CHANGED"  # same SOP Instance UID, different bytes
        assert c_store(proc.ports["dicom"], ds) == 0x0000
        oru = small_oru("DUP-1")
        assert [hl7_exchange(proc.ports["hl7"], oru)[0][:2] for _ in range(2)] == [["AA", "DUP-1"]] * 2
        assert hl7_exchange(proc.ports["hl7"], oru.replace(b"PAT-0001", b"PAT-0002"))[0][:2] == ["AA", "DUP-1"]
        received = ehr.wait_for(2, timeout=60)
        time.sleep(1.5)  # no third ORU may follow
    finally:
        proc.stop()
        ehr.close()
    assert len(ehr.received) == 2 and len({control_id(p) for p in received}) == 2
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        counts = [s.scalar(select(func.count()).select_from(t)) for t in (Message, Job, Result, Outbound)]
        events = [export(e) for e in s.scalars(select(Event).where(Event.kind.like("received%")))]
        stored_ids = sorted(m["patient_id"].split("^")[0] for m in s.scalars(select(Message.identifiers)))
    engine.dispose()
    assert counts == [2, 2, 2, 2]
    assert Counter(e["kind"] for e in events) == {"received": 2, "received_duplicate": 3, "received_conflict": 2}
    conflicts = [e for e in events if e["kind"] == "received_conflict"]
    assert {e["detail"]["source"] for e in conflicts} == {"dicom", "hl7"}
    assert all(e["dicom"]["EventOutcomeIndicator"] == 4 for e in conflicts)
    assert stored_ids == ["PAT-0001", "SYN0001"]  # the first bytes are kept
