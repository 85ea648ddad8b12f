"""Hostile peers and a failing disk/database against a running ``serve`` (reliability.md T5, T7, T12).

Attackers use source addresses 127.0.0.2 and up (the per-address caps are part of the
defence); the legitimate cart and HL7 sender come from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import sqlite3
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ecg_gateway.mllp import MllpDecoder
from ecg_gateway.store.db import make_engine, make_session_factory
from ecg_gateway.store.models import Event, Job, Message
from tests.support.carts import c_store_timed, connect_from, hl7_exchange
from tests.support.dicom_builders import ecg_dataset
from tests.support.ehr_peer import EhrPeer, aa
from tests.support.gateway import GatewayProcess, write_config
from tests.support.hl7_builders import ptbxl_record, waveform_oru
from tests.support.pace import scaled
from tests.support.paths import shared_data
from tests.support.tls_certs import make_pki

MB = 1 << 20
ALL_CATEGORIES = ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def oru() -> bytes:
    samples, leads, fs = ptbxl_record(shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix(""))
    return waveform_oru(samples, leads, fs, control_id="LEGIT-1")


def _counts(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        counts = (s.scalar(select(func.count()).select_from(Message)), s.scalar(select(func.count()).select_from(Job)))
    engine.dispose()
    return counts


# --- T12: every attack at once ---------------------------------------------------------------

class Attack:
    """Runs the attackers in threads; keeps their sockets open until ``stop``."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.notes: dict[str, object] = {}

    def spawn(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def hold(self, sock: socket.socket) -> None:
        self.sockets.append(sock)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        for sock in self.sockets:
            sock.close()


def _huge_pdu_claim(attack: Attack, port: int, client: ssl.SSLContext) -> None:
    raw = connect_from("127.0.0.12", port)
    tls = client.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 65536)
    tls.settimeout(5)
    try:
        attack.notes["pdu_closed"] = tls.recv(1) == b""
    except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
        attack.notes["pdu_closed"] = not isinstance(exc, TimeoutError)
    attack.hold(tls)


def _huge_frame(attack: Attack, port: int, head: bytes) -> None:
    sock = connect_from("127.0.0.13", port)
    chunk = b"9^" * (MB // 2)
    sock.sendall(b"\x0b" + head.split(b"OBX", 1)[0].replace(b"LEGIT-1", b"HUGE-1"))
    for _ in range(20):
        sock.sendall(chunk)
    sock.sendall(b"\x1c\x0d")
    sock.settimeout(30)
    decoder = MllpDecoder(1 << 20)
    while not (acks := [a for a in decoder.feed(sock.recv(65536)) if isinstance(a, bytes)]):
        pass
    attack.notes["huge_frame_ack"] = acks[0].decode().split("MSA|", 1)[1][:2]
    attack.hold(sock)


def _slow_loris(attack: Attack, port: int) -> None:
    sock = connect_from("127.0.0.14", port)
    sock.sendall(b"\x0bMSH|")
    attack.hold(sock)
    sent = 0
    while not attack.stop.wait(1.0):
        try:
            sock.sendall(b"^")
            sent += 1
        except OSError:
            break
    attack.notes["loris_bytes"] = sent


def test_t12_all_attacks_at_once_legit_traffic_answered_within_2s(tmp_path: Path, oru: bytes) -> None:
    pki = make_pki(tmp_path)
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, http={"enabled": False},
                          dicom={"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key),
                                 "max_connections_per_ip": 4},
                          hl7={"max_connections_per_ip": 8})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    dicom, hl7 = proc.ports["dicom"], proc.ports["hl7"]
    client = ssl.create_default_context(cafile=str(pki.ca))
    assert c_store_timed(dicom, ecg_dataset(), (client, "localhost"))[0] == 0x0000  # warm: imports, first commit
    assert hl7_exchange(hl7, oru.replace(b"LEGIT-1", b"WARM-1"))[0][0] == "AA"
    rss_before, rss_peak = _rss(proc.proc.pid), 0
    attack = Attack()
    try:
        for i in range(100):  # idle sockets: 20 each from 5 addresses (8 per address are kept)
            with contextlib.suppress(OSError):
                attack.hold(connect_from(f"127.0.0.{2 + i % 5}", hl7))
        for i in range(24):  # 20 TLS handshakes that never start (4 per address) + 4 over the cap
            attack.hold(connect_from(f"127.0.0.{7 + i % 5}", dicom))
        attack.spawn(_huge_pdu_claim, attack, dicom, client)
        attack.spawn(_huge_frame, attack, hl7, oru)
        attack.spawn(_slow_loris, attack, hl7)
        time.sleep(1.0)  # the attacks are in progress
        status, store_s = c_store_timed(dicom, ecg_dataset(), (client, "localhost"))
        (ack, control_id, _), hl7_s = hl7_exchange(hl7, oru)
        for _ in range(40):
            rss_peak = max(rss_peak, _rss(proc.proc.pid))
            time.sleep(0.1)
        assert status == 0x0000 and store_s < 2, (status, store_s)
        assert (ack, control_id) == ("AA", "LEGIT-1") and hl7_s < 2, (ack, hl7_s)
    finally:
        attack.close()
        proc.stop()
    assert attack.notes.get("pdu_closed") is True, attack.notes
    assert attack.notes.get("huge_frame_ack") == "AE", attack.notes
    assert rss_peak - rss_before < 50 * MB, (rss_before, rss_peak)
    assert _counts(db_url) == (4, 4)
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        alerts = {e.detail["reason"] for e in s.scalars(select(Event).where(Event.kind == "security_alert"))}
    engine.dispose()
    assert {"evicted idle connection at the connection cap", "PDU length above the cap"} <= alerts


def _huge_associate_claim(attack: Attack, port: int) -> None:
    """A plaintext A-ASSOCIATE-RQ header claiming 4 GiB."""
    sock = connect_from("127.0.0.40", port)
    sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 65536)
    sock.settimeout(10)
    try:
        attack.notes["pdu_closed"] = sock.recv(1) == b""
    except (ConnectionError, TimeoutError) as exc:
        attack.notes["pdu_closed"] = not isinstance(exc, TimeoutError)
    attack.hold(sock)


def test_t12_idle_sockets_from_many_addresses_on_both_listeners_are_evicted_and_memory_bounded(
        tmp_path: Path, oru: bytes) -> None:
    """Issue #29: 60 idle DICOM sockets from 13 addresses (each under the per-address cap) took
    every association slot and a thread pair each (~60 MB); 100 idle HL7 sockets from 20
    addresses filled the 64 MLLP slots; with a 4 GiB PDU claim, a slow-loris and a 20 MB frame
    on top, the real cart got no association and RSS grew 174 MB. At either cap the longest-idle
    connection is now evicted, and nothing idle gets a thread beyond the cap."""
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, http={"enabled": False})  # default caps
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    dicom, hl7 = proc.ports["dicom"], proc.ports["hl7"]
    assert c_store_timed(dicom, ecg_dataset())[0] == 0x0000  # warm: imports, first commit
    assert hl7_exchange(hl7, oru.replace(b"LEGIT-1", b"WARM-1"))[0][0] == "AA"
    rss_before, threads_before, rss_peak, threads_peak = _rss(proc.proc.pid), _threads(proc.proc.pid), 0, 0
    attack = Attack()
    try:
        for i in range(60):  # 4-5 per address: under the per-address cap of 8
            attack.hold(connect_from(f"127.0.0.{2 + i % 13}", dicom))
        for i in range(100):
            attack.hold(connect_from(f"127.0.0.{20 + i % 20}", hl7))
        attack.spawn(_huge_associate_claim, attack, dicom)
        attack.spawn(_huge_frame, attack, hl7, oru)
        attack.spawn(_slow_loris, attack, hl7)
        time.sleep(1.0)  # the attacks are in progress (idle DICOM sockets live 5 s: acse_timeout)
        deadline = scaled(2.0)
        status, store_s = c_store_timed(dicom, ecg_dataset())
        (ack, control_id, _), hl7_s = hl7_exchange(hl7, oru)
        for _ in range(20):
            rss_peak, threads_peak = max(rss_peak, _rss(proc.proc.pid)), max(threads_peak, _threads(proc.proc.pid))
            time.sleep(0.1)
        assert status == 0x0000 and store_s < deadline, (status, store_s, deadline)
        assert (ack, control_id) == ("AA", "LEGIT-1") and hl7_s < deadline, (ack, hl7_s, deadline)
    finally:
        attack.close()
        proc.stop()
    assert attack.notes.get("pdu_closed") is True, attack.notes
    assert attack.notes.get("huge_frame_ack") == "AE", attack.notes
    assert rss_peak - rss_before < 50 * MB, (rss_before, rss_peak)
    # 2 threads per association, and pynetdicom's backstop lets evicted ones linger up to 2 x 16
    # (before: every idle socket had its pair, +120)
    assert threads_peak - threads_before <= 2 * (2 * 16) + 4, (threads_before, threads_peak)
    assert _counts(db_url) == (4, 4)


# --- T5: the database is locked ----------------------------------------------------------------

@pytest.fixture
def ingest_gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, str]]:
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    _wait_for_event_row(db_url, "app_start")  # its audit write must not meet the tests' locks
    yield proc, db_url
    proc.stop()


def _wait_for_event_row(db_url: str, kind: str, timeout_s: float = 60) -> None:
    """The audit writer shares the ingest write lock: a test that locks the database while the
    start-up events are still queued measured the writer's busy wait too (8 s, not < 5)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=5) as conn:
            if conn.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]:
                return
        time.sleep(0.05)
    raise TimeoutError(f"no {kind} event within {timeout_s} s")


def test_t5_locked_database_answers_a700_and_ar207_within_5s_then_stores_the_resend_once(
        ingest_gateway: tuple[GatewayProcess, str], oru: bytes) -> None:
    proc, db_url = ingest_gateway
    ds = ecg_dataset()
    locker = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        status, store_s = c_store_timed(proc.ports["dicom"], ds)
        (ack, control_id, err), hl7_s = hl7_exchange(proc.ports["hl7"], oru)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert status == 0xA700 and store_s < 5, (status, store_s)
    assert (ack, control_id) == ("AR", "LEGIT-1") and err.split("|")[3].startswith("207") and hl7_s < 5
    recovered = time.monotonic()
    assert c_store_timed(proc.ports["dicom"], ds)[0] == 0x0000  # the cart resends the same object
    assert hl7_exchange(proc.ports["hl7"], oru)[0][0] == "AA"
    assert time.monotonic() - recovered < 10
    assert c_store_timed(proc.ports["dicom"], ds)[0] == 0x0000  # and once more: still stored once
    assert _counts(db_url) == (2, 2)


# --- T7: the disk is full ----------------------------------------------------------------------

def test_t7_disk_full_answers_a700_and_ar207_leaves_nothing_and_recovers(
        ingest_gateway: tuple[GatewayProcess, str], oru: bytes) -> None:
    """The kernel refuses the daemon's file writes past 4 KiB (RLIMIT_FSIZE, set on the running
    process with prlimit): SQLite gets the write error a full disk gives (EFBIG here, ENOSPC
    there; both abort the transaction). No root, no mount, no monkeypatch."""
    proc, db_url = ingest_gateway
    assert c_store_timed(proc.ports["dicom"], ecg_dataset())[0] == 0x0000
    full, ds = 4096, ecg_dataset()
    resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (full, resource.RLIM_INFINITY))
    try:
        status, _ = c_store_timed(proc.ports["dicom"], ds)
        (ack, _, err), _ = hl7_exchange(proc.ports["hl7"], oru)
        assert status == 0xA700
        assert ack == "AR" and err.split("|")[3].startswith("207")
        assert _counts(db_url) == (1, 1)  # nothing half-written
    finally:
        resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert c_store_timed(proc.ports["dicom"], ds)[0] == 0x0000  # space is back: the resend is stored
    assert hl7_exchange(proc.ports["hl7"], oru)[0][0] == "AA"
    assert _counts(db_url) == (3, 3)
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert proc.proc.poll() is None  # SIGXFSZ did not kill it (Python ignores the signal)


def test_t12_oversized_data_set_is_cut_off_and_the_next_cart_is_served(
        ingest_gateway: tuple[GatewayProcess, str]) -> None:
    """pynetdicom buffers P-DATA fragments without limit: past dicom.max_dataset_bytes (16 MiB)
    the connection is dropped, and memory stays bounded."""
    proc, db_url = ingest_gateway
    huge = ecg_dataset()
    huge.add_new(0x00091010, "OB", b"\x00" * (40 * MB))  # a private blob: 40 MB in one C-STORE
    rss_before = _rss(proc.proc.pid)
    status, _ = c_store_timed(proc.ports["dicom"], huge)
    rss_after = _rss(proc.proc.pid)
    assert status is None  # aborted, no status
    assert rss_after - rss_before < 40 * MB, (rss_before, rss_after)
    assert c_store_timed(proc.ports["dicom"], ecg_dataset())[0] == 0x0000
    assert _counts(db_url) == (1, 1)
    assert "dicom_dataset_too_large" in proc.output()


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_t7_disk_full_makes_readyz_unready_and_the_oru_in_flight_is_recorded_once_space_returns(
        tmp_path: Path) -> None:
    """Issue #29: while SQLite cannot write, /readyz says so (it stayed ready while every store
    failed), and an ORU the EHR acknowledged while the disk was full is recorded delivered as
    soon as space returns (it stayed ``sending`` until its lease ended, then went out again)."""
    hold = threading.Event()
    ehr = EhrPeer(reply=lambda payload: aa(payload) if hold.wait(60) else None)
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, worker={"poll_interval_s": 0.2},
                          outbound={"host": "127.0.0.1", "port": ehr.port, "categories": ALL_CATEGORIES,
                                    "attach_pdf": False, "lease_s": 120, "backoff_initial_s": 0.1,
                                    "backoff_max_s": 0.5})
    proc = GatewayProcess(config).wait_started()
    http = proc.ports["http"]
    try:
        proc.wait_for_event("model_loaded", timeout=120)
        assert c_store_timed(proc.ports["dicom"], ecg_dataset())[0] == 0x0000
        assert len(ehr.wait_for(1, timeout=60)) == 1  # the ORU is at the EHR, its ACK held
        assert _readyz(http)[0] == 200
        resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            hold.set()  # AA now: the sender cannot record it
            assert c_store_timed(proc.ports["dicom"], ecg_dataset())[0] == 0xA700
            code, body = _readyz(http)
            assert code == 503 and body["checks"]["storage"]["ok"] is False, body
            assert _outbound_states(db_url) == ["sending"]
        finally:
            resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        space_back = time.monotonic()
        while (_readyz(http)[0] != 200 or _outbound_states(db_url) != ["delivered"]) \
                and time.monotonic() < space_back + 20:
            time.sleep(0.2)
        assert _readyz(http)[0] == 200 and _outbound_states(db_url) == ["delivered"]
        time.sleep(1.0)  # nothing more may arrive
    finally:
        proc.stop()
        ehr.close()
    assert len(ehr.received) == 1


def _outbound_states(db_url: str) -> list[str]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return [row[0] for row in conn.execute("SELECT state FROM outbound ORDER BY id")]


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError("no Threads line")


def _http(port: int, head: str, timeout: float = 10) -> tuple[int, bytes]:
    """One raw HTTP request; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.split(b"\r\n\r\n", 1)[-1]


def test_ops_port_caps_threads_times_out_stalled_requests_and_checks_host_and_origin(tmp_path: Path) -> None:
    """Issue #29: 400 stalled POSTs held 400 threads for 30 s+ (here 32, each a thread before
    the fix); POSTs with `Origin: evil` and requests with `Host: evil` were served (DNS
    rebinding could read the admin page)."""
    timeout_s = 15.0  # long enough to open the sockets on a loaded machine before the first is dropped
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}",
                          http={"max_threads": 8, "request_timeout_s": timeout_s})
    proc = GatewayProcess(config, "--role", "ingest", env={"ECG_GATEWAY__HTTP__ADMIN_TOKEN": "t0ken"}).wait_started()
    port = proc.ports["http"]
    stalled: list[socket.socket] = []
    try:
        assert _http(port, "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")[0] == 200
        before = _threads(proc.proc.pid)
        started = time.monotonic()
        for _ in range(32):  # headers promise a body that never comes; 4 x the thread cap
            sock = connect_from("127.0.0.2", port)
            sock.sendall(b"POST /retry HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
            stalled.append(sock)
        time.sleep(0.5)
        held = _threads(proc.proc.pid) - before
        assert held <= 8, f"{held} threads held by stalled requests"
        assert _http(port, "GET /healthz HTTP/1.0\r\n\r\n")[0] == 503  # busy, answered at once
        assert time.monotonic() - started < timeout_s, "too slow to test the cap: raise timeout_s"
        freed = started + timeout_s + scaled(2.0)  # request_timeout_s: the stalled requests are dropped
        while _http(port, "GET /healthz HTTP/1.0\r\n\r\n")[0] != 200:
            assert time.monotonic() < freed, "stalled requests still hold the threads"
            time.sleep(0.2)
        for sock in stalled[:8]:
            sock.settimeout(5)
            assert sock.recv(65536) is not None  # closed (an error page or EOF), not hanging
        assert _http(port, "GET / HTTP/1.0\r\nHost: evil.example:8080\r\n\r\n")[0] == 400
        assert _http(port, "GET / HTTP/1.0\r\n\r\n")[0] == 400  # no Host at all
        form = "target=job:1&token=t0ken"
        post = (f"POST /retry HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded"
                f"\r\nContent-Length: {len(form)}\r\n")
        assert _http(port, post + "Origin: http://evil.example\r\n\r\n" + form)[0] == 403
        assert _http(port, post + f"Origin: http://127.0.0.1:{port}\r\n\r\n" + form)[0] == 303
        assert _http(port, post + "\r\n" + form)[0] == 303  # no Origin: a script, not a browser
        assert _http(port, "GET /readyz HTTP/1.0\r\nHost: evil.example\r\n\r\n")[0] == 200  # probes: any Host
    finally:
        for sock in stalled:
            sock.close()
        proc.stop()
