"""Crash safety (reliability.md T1-T3): SIGKILL during ingest, inference and send.

T1 is the chaos run of bench/chaos.py at test size; T2 kills a worker process inside
inference; T3 kills ``serve`` while the EHR holds the ACK of an ORU it already received.
Everything is real: subprocesses, sockets, SQLite files, the bundled model.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from ecg_gateway.store.ingest import InboundMessage, Ingestor
from ecg_gateway.store.models import Event, Job, Outbound, Result
from tests.support.carts import c_store
from tests.support.chaos import Spec, failures, run
from tests.support.dicom_builders import ecg_dataset
from tests.support.ehr_peer import EhrPeer, aa
from tests.support.gateway import REPO, GatewayProcess, write_config
from tests.support.paths import shared_data

ALL = ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]


@pytest.mark.timeout(900)  # six daemon starts: each takes half a minute on a loaded 2-core box
def test_t1_sixty_ecgs_five_sigkills_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    """An aimed kill waits for its phase to happen (a store in flight, a job leased, an ORU
    being sent) instead of firing after 3 s whatever is going on: on a loaded machine the
    restarted daemon needs longer than that to load its model, and the send kill used to miss
    (issue #29). The assertion that a kill hit a send keeps its teeth: it is observed."""
    spec = Spec(ecgs=60, kills=5, rate_per_s=6.0, acute_share=None, deliver_all=True, faults={},
                attach_pdf=False, uptime_s=(0.5, 2.0), recordings=6, seed=11, drain_timeout_s=120,
                phase_timeout_s=120)
    shared_data("ptbxl", "records100", "00000")  # the recordings it sends; skipped without them
    report = run(spec, tmp_path, log=lambda line: None)
    assert failures(report) == [], report
    assert report["kills"] == 5 and report["acked"] == 60 and report["lost"] == 0
    assert report["non_terminal"] == 0 and report["jobs"] == {"done": 60}
    assert report["outbound"] == {"delivered": 60}  # every ORU delivered, none dead
    assert report["orus_on_wire"] - 60 == report["duplicates_after_aa"] <= report["interrupted_sends"]
    assert {"ingest", "send"} <= set(report["kills_hit"]), report["kills_hit"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("gw.db")) == ["chaos.yaml"]


def _dicom_bytes() -> bytes:
    buffer = io.BytesIO()
    ecg_dataset().save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _worker(db_url: str, delay_s: float, signals: Path) -> subprocess.Popen[bytes]:
    signals.mkdir(exist_ok=True)
    module = "tests.support.slow_worker_proc"
    return subprocess.Popen([sys.executable, "-m", module, db_url, str(delay_s), str(signals)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_file(path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_t2_sigkill_during_inference_is_reclaimed_after_the_lease(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade_to_head(db_url)
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    Ingestor(sessions).accept(InboundMessage(source="dicom", idempotency_key="dicom:1.2.3", raw=_dicom_bytes(),
                                             content_type="application/dicom", peer="CART1", ecg_uid="1.2.3",
                                             identifiers={}))
    slow, rescuer = _worker(db_url, 60, tmp_path / "slow"), _worker(db_url, 0, tmp_path / "rescuer")
    try:
        _wait_file(tmp_path / "slow" / "inferring")
        _wait_file(tmp_path / "rescuer" / "ready")
        slow.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        slow.wait(10)
        (tmp_path / "rescuer" / "go").write_text("1")
        deadline = killed_at + 10
        while time.monotonic() < deadline:
            with sessions() as s:
                if s.scalar(select(func.count()).select_from(Result)):
                    break
            time.sleep(0.05)
        reclaimed_s = time.monotonic() - killed_at
    finally:
        for proc in (slow, rescuer):
            proc.kill()
            proc.wait(10)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 1
        job = s.scalars(select(Job)).one()
        assert (job.state, job.attempts) == ("done", 2)
        assert s.scalar(select(func.count()).select_from(Event).where(Event.kind == "triaged")) == 1
    engine.dispose()
    assert reclaimed_s < 2 + 1, f"reclaimed after {reclaimed_s:.2f} s (lease 2 s)"


def test_t3_sigkill_while_the_ehr_holds_the_ack_resends_the_same_msh10_once(tmp_path: Path) -> None:
    answers = iter([None])  # the first copy is never acknowledged; every later one gets AA
    ehr = EhrPeer(reply=lambda payload: next(answers, aa(payload)))
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, hl7={"enabled": False}, http={"enabled": False},
                          worker={"poll_interval_s": 0.2},
                          outbound={"host": "127.0.0.1", "port": ehr.port, "categories": ALL, "lease_s": 2,
                                    "ack_timeout_s": 60, "attach_pdf": False})
    proc = GatewayProcess(config).wait_started()
    try:
        proc.wait_for_event("model_loaded", timeout=60)
        assert c_store(proc.ports["dicom"], ecg_dataset()) == 0x0000
        ehr.wait_for(1, timeout=30)
        assert len(ehr.received) == 1
        proc.kill()  # SIGKILL: the EHR has the ORU, the gateway never saw its ACK
        proc = GatewayProcess(config).wait_started()
        received = ehr.wait_for(2, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with make_session_factory(engine := make_engine(db_url))() as s:
                row = s.scalars(select(Outbound)).one()
            engine.dispose()
            if row.state == "delivered":
                break
            time.sleep(0.1)
        time.sleep(0.5)  # nothing more may arrive
    finally:
        proc.stop()
        ehr.close()
    assert len(ehr.received) == 2
    assert received[0] == received[1]  # same bytes, hence the same MSH-10
    assert (row.state, row.attempts, row.control_id) == ("delivered", 2, received[0].split(b"|")[9].decode())
