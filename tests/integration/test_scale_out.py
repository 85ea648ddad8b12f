"""Scale-out (issue #29): two complete gateways (`serve --role all`) on one PostgreSQL database.

Carts send some ECGs to one node, some to the other, and some to both: a cart that got no
answer from node A resends to node B, and a cart that sends the same ECG to both at once.
Every ECG must be stored once and triaged once, and the EHR must receive exactly one ORU
per result, with no MSH-10 used twice (whatever its format: issue #27 changes it).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from ecg_gateway.store.models import Job, Message, Outbound, Result
from tests.support.carts import c_store, msa_fields, send_all
from tests.support.dicom_builders import ecg_dataset
from tests.support.ehr_peer import EhrPeer, control_id
from tests.support.gateway import GatewayProcess, write_config
from tests.support.hl7_builders import ptbxl_record, waveform_oru
from tests.support.paths import shared_data

ALL = ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]


def _node(tmp_path: Path, name: str, pg_url: str, ehr: EhrPeer) -> GatewayProcess:
    config = write_config(tmp_path / f"{name}.yaml", pg_url, http={"enabled": False},
                          worker={"poll_interval_s": 0.2},
                          outbound={"host": "127.0.0.1", "port": ehr.port, "categories": ALL,
                                    "attach_pdf": False, "backoff_initial_s": 0.2, "backoff_max_s": 1})
    return GatewayProcess(config, "--role", "all")


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_two_gateways_on_one_postgres_triage_each_ecg_once_and_send_one_oru_each(
        tmp_path: Path, pg_url: str) -> None:
    samples, leads, fs = ptbxl_record(shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix(""))
    upgrade_to_head(pg_url)
    ehr = EhrPeer()
    nodes = [_node(tmp_path, "a", pg_url, ehr), _node(tmp_path, "b", pg_url, ehr)]
    try:
        a, b = (node.wait_started(180) for node in nodes)
        for node in nodes:
            node.wait_for_event("worker_model_ready", timeout=180)
        only_a = [ecg_dataset(uid=f"2.25.1001.{i}") for i in range(4)]
        only_b = [ecg_dataset(uid=f"2.25.1002.{i}") for i in range(4)]
        retried = [ecg_dataset(uid=f"2.25.1003.{i}") for i in range(3)]  # A, then again to B
        raced = [ecg_dataset(uid=f"2.25.1004.{i}") for i in range(3)]  # A and B at the same time
        hl7 = [waveform_oru(samples, leads, fs, control_id=f"SCALE-{i}") for i in range(2)]  # both nodes
        for ds in only_a + retried:
            assert c_store(a.ports["dicom"], ds) == 0x0000
        for ds in only_b + retried:
            assert c_store(b.ports["dicom"], ds) == 0x0000
        answers: list[int] = []
        racers = [threading.Thread(target=lambda n=n: answers.extend(c_store(n.ports["dicom"], ds) for ds in raced))
                  for n in (a, b)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(120)
        assert answers == [0x0000] * 6
        for node in (a, b):
            assert [msa_fields(ack)[1] for ack in send_all(node.ports["hl7"], hl7)] == ["AA", "AA"]
        unique = len(only_a) + len(only_b) + len(retried) + len(raced) + len(hl7)
        received = ehr.wait_for(unique, timeout=240)
        time.sleep(3.0)  # a second copy of any ORU would arrive now
        received = list(ehr.received)
    finally:
        for node in nodes:
            node.stop()
        ehr.close()
    engine = make_engine(pg_url)
    with make_session_factory(engine)() as s:
        messages = s.scalar(select(func.count()).select_from(Message))
        jobs = s.execute(select(Job.state, Job.attempts)).all()
        results_per_message = s.execute(select(Result.message_id, func.count()).group_by(Result.message_id)).all()
        outbound = s.execute(select(Outbound.state, Outbound.control_id)).all()
    engine.dispose()
    controls = [control_id(p) for p in received]
    assert messages == unique and len(jobs) == unique
    assert sorted(jobs) == [("done", 1)] * unique  # every ECG triaged once, by one of the nodes
    assert len(results_per_message) == unique and {n for _, n in results_per_message} == {1}
    assert sorted(state for state, _ in outbound) == ["delivered"] * unique
    assert len(received) == unique, controls  # one ORU per ECG reached the EHR
    assert len(set(controls)) == len(controls)  # no MSH-10 used twice
    assert set(controls) == {c for _, c in outbound}
