"""The ops port of a running ``serve``: /metrics after real traffic, the admin page in
headless Chromium with its token-protected retry, and ``replay`` re-triaging a message.

One daemon serves the module (tests run in order and build on each other's traffic):
C-STORE + HL7 in, ORUs out to a real MLLP EHR peer that can be told to refuse (AR).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from ecg_gateway.store.db import make_engine, make_session_factory
from ecg_gateway.store.models import Event, Message, Outbound, Result
from tests.support.browser import Dom, dump_dom, require_chromium, screenshot
from tests.support.carts import c_store, msa_fields, send_all
from tests.support.dicom_builders import ecg_dataset
from tests.support.ehr_peer import EhrPeer, aa, control_id
from tests.support.gateway import GatewayProcess, run_cli, write_config
from tests.support.hl7_builders import DEFAULT_PATIENT, ptbxl_record, waveform_oru
from tests.support.paths import shared_data

TOKEN = "s3cret-admin-token"
PHI = ("SYN0001", "TEST^SYNTHETIC", DEFAULT_PATIENT["patient_id"], DEFAULT_PATIENT["family"],
       DEFAULT_PATIENT["birth"])


class Ehr:
    """The EHR peer, answering AA or (while ``refuse`` is set) AR."""

    def __init__(self) -> None:
        self.refuse = False
        self.peer = EhrPeer(reply=self._reply)

    def _reply(self, payload: bytes) -> bytes:
        if not self.refuse:
            return aa(payload)
        return aa(payload).replace(b"MSA|AA|", b"MSA|AR|")


class Daemon:
    def __init__(self, tmp: Path, ehr: Ehr) -> None:
        self.db_url = f"sqlite:///{tmp / 'gw.db'}"
        token_file = tmp / "admin-token"
        token_file.write_text(TOKEN + "\n")  # secrets come from files or the environment only
        self.config = write_config(
            tmp / "c.yaml", self.db_url, worker={"poll_interval_s": 0.5},
            http={"admin_token_file": str(token_file)},
            retention={"days": 30, "run_at": "03:30"},
            outbound={"host": "127.0.0.1", "port": ehr.peer.port, "attach_pdf": False,
                      "categories": ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]})
        self.proc = GatewayProcess(self.config).wait_started()
        self.proc.wait_for_event("model_loaded", timeout=60)
        self.base = f"http://127.0.0.1:{self.proc.ports['http']}"
        self.engine = make_engine(self.db_url)
        self.sessions = make_session_factory(self.engine)

    def rows(self, table: type, *where: Any) -> list[Any]:
        with self.sessions() as s:
            return list(s.scalars(select(table).where(*where).order_by(table.id)))

    def wait(self, what: str, check: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.proc.output()[-3000:]}")


@pytest.fixture(scope="module")
def ehr() -> Iterator[Ehr]:
    e = Ehr()
    yield e
    e.peer.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, ehr: Ehr) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("ops"), ehr)
    yield d
    d.engine.dispose()
    d.proc.stop()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}; raw text checked for PHI too."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    assert not any(value in text for value in PHI)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_consistent_with_the_traffic(daemon: Daemon, ehr: Ehr) -> None:
    # the record first: a skip after the C-STORE would leave its ORU to the next test's counts
    samples, leads, fs = ptbxl_record(shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix(""))
    assert c_store(daemon.proc.ports["dicom"], ecg_dataset()) == 0x0000
    oru = waveform_oru(samples, leads, fs, control_id="OPS-1")
    adt = oru.replace(b"ORU^R01^ORU_R01|OPS-1", b"ADT^A01^ADT_A01|OPS-2")
    assert [msa_fields(a)[1] for a in send_all(daemon.proc.ports["hl7"], [oru, adt])] == ["AA", "AR"]
    broken = ecg_dataset()
    broken.WaveformSequence[0].NumberOfWaveformChannels = 13
    assert c_store(daemon.proc.ports["dicom"], broken) == 0xA900
    assert len(ehr.peer.wait_for(2, timeout=30)) == 2
    m = daemon.wait("both deliveries counted", lambda: (
        s if metric(s := scrape(daemon.base), "ecg_gateway_oru_deliveries_total", outcome="delivered") == 2
        else None))
    results = daemon.rows(Result)
    assert len(results) == 2
    for source in ("dicom", "hl7"):
        assert metric(m, "ecg_gateway_ecgs_received_total", source=source, outcome="stored") == 1
        assert metric(m, "ecg_gateway_ecgs_received_total", source=source, outcome="rejected") == 1
    assert metric(m, "ecg_gateway_dicom_statuses_total", status="0x0000") == 1
    assert metric(m, "ecg_gateway_dicom_statuses_total", status="0xA900") == 1
    assert metric(m, "ecg_gateway_hl7_acks_total", code="AA") == 1
    assert metric(m, "ecg_gateway_hl7_acks_total", code="AR") == 1
    for category in {r.category for r in results}:
        assert metric(m, "ecg_gateway_triaged_total", category=category) == \
            sum(r.category == category for r in results)
    assert metric(m, "ecg_gateway_inference_batch_size_sum") == 2
    assert metric(m, "ecg_gateway_inference_seconds_count") >= 1
    acute = sum(r.category == "acute" for r in results)
    assert metric(m, "ecg_gateway_acute_end_to_end_seconds_count") == acute
    assert metric(m, "ecg_gateway_acute_end_to_end_seconds_bucket", le="+Inf") == acute
    if acute:  # received -> acknowledged by the EHR, both on the database clock
        assert 0 < metric(m, "ecg_gateway_acute_end_to_end_seconds_sum") < 30 * acute
    assert metric(m, "ecg_gateway_queue_depth", table="jobs", state="done") == 2
    assert metric(m, "ecg_gateway_queue_depth", table="outbound", state="delivered") == 2
    assert metric(m, "ecg_gateway_queue_oldest_age_seconds", table="jobs") == 0
    info = [labels for (name, labels) in m if name == "ecg_gateway_model_info"]
    assert info and dict(info[0])["model_id"] == results[0].model_id
    assert "retention_scheduled" in daemon.proc.output()


def test_admin_page_shows_dead_letters_and_retries_with_the_token(daemon: Daemon, ehr: Ehr,
                                                                   tmp_path: Path) -> None:
    require_chromium()
    ehr.refuse = True
    assert c_store(daemon.proc.ports["dicom"], ecg_dataset()) == 0x0000
    dead = daemon.wait("an ORU refused with AR", lambda: daemon.rows(Outbound, Outbound.state == "dead"))[0]
    ehr.refuse = False

    dom = Dom(dump_dom(f"{daemon.base}/"))
    assert dom.ids["ready"] == "ready"
    messages = len(daemon.rows(Message))
    queue = {row[0]: row[1] for row in dom.tables["queue"][1:]}
    assert queue["messages"] == str(messages) and "dead=1" in queue["outbound"]
    dead_rows = dom.tables["dead-outbound"][1:]
    assert [row[0] for row in dead_rows] == [str(dead.id)] and dead_rows[0][2] == dead.control_id
    (retry,) = [b for b in dom.buttons if b.get("value") == f"outbound:{dead.id}"]
    assert "disabled" not in retry
    recent = dom.tables["recent"]
    assert recent[0][:3] == ["message", "source", "received"] and len(recent) == 1 + messages
    assert recent[1][0] == str(messages) and recent[1][recent[0].index("ORU state")] == "dead"  # newest first
    assert not any(value in dump_dom(f"{daemon.base}/") for value in PHI)
    width, height = screenshot(f"{daemon.base}/", tmp_path / "admin.png")
    assert (width, height) == (1280, 1400) and (tmp_path / "admin.png").stat().st_size > 20_000
    _assert_rendered(tmp_path / "admin.png")

    assert _post(daemon.base, f"outbound:{dead.id}", "wrong-token")[0] == 403
    assert _post(daemon.base, f"outbound:{dead.id}", None)[0] == 403
    assert daemon.rows(Outbound, Outbound.id == dead.id)[0].state == "dead"
    assert len(daemon.rows(Event, Event.kind == "admin_denied")) == 2
    status, location = _post(daemon.base, f"outbound:{dead.id}", TOKEN)
    assert status == 303 and location.startswith("/?notice=requeued")
    delivered = daemon.wait("the retried ORU delivered",
                            lambda: daemon.rows(Outbound, Outbound.id == dead.id, Outbound.state == "delivered"))
    assert delivered[0].control_id == dead.control_id  # same MSH-10 as the refused attempt
    assert [control_id(p) for p in ehr.peer.received].count(dead.control_id) == 2
    (event,) = daemon.rows(Event, Event.kind == "admin_outbound_requeue")
    assert (event.actor, event.peer, event.detail["ids"]) == ("web", "127.0.0.1", [dead.id])

    after = Dom(dump_dom(f"{daemon.base}{location}"))
    assert after.ids["notice"] == f"Requeued outbound {dead.id}."
    assert "dead-outbound" not in after.tables  # "none" now
    m = scrape(daemon.base)
    assert metric(m, "ecg_gateway_oru_deliveries_total", outcome="dead") == 1
    assert metric(m, "ecg_gateway_oru_deliveries_total", outcome="delivered") == \
        len(daemon.rows(Outbound, Outbound.state == "delivered"))


def test_replay_retriages_with_the_current_model_and_keeps_the_old_result(daemon: Daemon, ehr: Ehr) -> None:
    first = daemon.rows(Message)[0]
    before = daemon.rows(Result, Result.message_id == first.id)
    sent_before = len(ehr.peer.received)
    done = run_cli("replay", str(first.id), "--config", str(daemon.config), "--json")
    assert done.returncode == 0, done.stderr
    (created,) = json.loads(done.stdout)["replayed"]
    results = daemon.wait("the replayed result", lambda: (
        r if len(r := daemon.rows(Result, Result.message_id == first.id)) == 2 else None))
    assert results[0].id == before[0].id and results[1].job_id == created["job_id"]
    assert results[1].category == results[0].category and results[1].model_sha256 == results[0].model_sha256
    for key in ("p_normal", "p_abnormal_not_acute", "p_subacute", "p_acute"):
        assert getattr(results[1], key) == pytest.approx(getattr(results[0], key), abs=1e-5)
    received = ehr.peer.wait_for(sent_before + 1, timeout=30)
    new_row = daemon.rows(Outbound, Outbound.result_id == results[1].id)[0]
    assert control_id(received[-1]) == new_row.control_id  # a new ORU, new control id
    assert new_row.control_id not in {control_id(p) for p in received[:-1]}


def _post(base: str, target: str, token: str | None) -> tuple[int, str]:
    from urllib.parse import urlencode

    body = urlencode({"target": target, **({"token": token} if token is not None else {})}).encode()
    request = urllib.request.Request(f"{base}/retry", data=body, method="POST")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        response = urllib.request.build_opener(NoRedirect).open(request, timeout=10)
        return response.status, response.headers.get("Location", "")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location", "")


def _assert_rendered(png: Path) -> None:
    """The screenshot shows a page: mostly white background, dark text, the red dead-letter title."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))[..., :3]
    white = (pixels > 0.95).all(axis=-1).mean()
    dark = (pixels < 0.3).all(axis=-1).mean()
    red = ((pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.2) & (pixels[..., 2] < 0.2)).sum()
    assert 0.5 < white < 0.995 and dark > 0.002 and red > 20
