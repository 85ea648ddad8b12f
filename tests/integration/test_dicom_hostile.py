"""Hostile DICOM peers (reliability.md T12/T13): PDU length claims, idle sockets, stalled TLS."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.dicom_builders import TWELVE_LEAD, ecg_dataset
from tests.support.gateway import GatewayProcess, write_config
from tests.support.tls_certs import make_pki


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _timed_store(port: int, tls: tuple[ssl.SSLContext, str] | None = None) -> tuple[int, float]:
    ae = AE(ae_title="CART1")
    ae.acse_timeout = 5
    ae.add_requested_context(TWELVE_LEAD)
    start = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="ECG_GATEWAY", tls_args=tls)
    assert assoc.is_established
    status = assoc.send_c_store(ecg_dataset())
    assoc.release()
    return int(status.Status), time.perf_counter() - start


def _open_from(source_ip: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source_ip, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}",
                          dicom={"max_connections_per_ip": 4, "max_associations": 16},
                          hl7={"enabled": False}, http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    yield proc
    proc.stop()


def test_t12_huge_pdu_length_claim_is_dropped_without_buffering(gateway: GatewayProcess) -> None:
    port = gateway.ports["dicom"]
    rss_before = _rss_kb(gateway.proc.pid)
    attacker = _open_from("127.0.0.2", port)
    attacker.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 65536)
    attacker.settimeout(5)
    try:
        closed = attacker.recv(1) == b""
    except ConnectionResetError:
        closed = True
    attacker.close()
    assert closed
    status, seconds = _timed_store(port)
    assert status == 0x0000 and seconds < 2
    assert _rss_kb(gateway.proc.pid) - rss_before < 50 * 1024


def test_t12_idle_sockets_from_one_address_do_not_lock_out_carts(gateway: GatewayProcess) -> None:
    port = gateway.ports["dicom"]
    idle = [_open_from("127.0.0.2", port) for _ in range(20)]  # far beyond the per-address cap
    try:
        time.sleep(0.3)
        status, seconds = _timed_store(port)
        assert status == 0x0000 and seconds < 2
    finally:
        for sock in idle:
            sock.close()


def test_t13_tls_stalled_handshakes_do_not_block_and_client_certs_are_enforced(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}",
                          dicom={"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key),
                                 "tls_client_ca_file": str(pki.ca), "max_connections_per_ip": 4},
                          hl7={"enabled": False}, http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    port = proc.ports["dicom"]
    stalled = [_open_from(f"127.0.0.{3 + i % 5}", port) for i in range(20)]  # never send a ClientHello
    try:
        client = ssl.create_default_context(cafile=str(pki.ca))
        client.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        status, seconds = _timed_store(port, (client, "localhost"))
        assert status == 0x0000 and seconds < 2

        rogue = ssl.create_default_context(cafile=str(pki.ca))
        rogue.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))
        ae = AE()
        ae.add_requested_context(Verification)
        assert not ae.associate("127.0.0.1", port, tls_args=(rogue, "localhost")).is_established

        old = ssl.create_default_context(cafile=str(pki.ca))
        old.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        assert not ae.associate("127.0.0.1", port, tls_args=(old, "localhost")).is_established

        plain = AE()
        plain.acse_timeout = 3
        plain.add_requested_context(Verification)
        assert not plain.associate("127.0.0.1", port).is_established
    finally:
        for sock in stalled:
            sock.close()
        proc.stop()
