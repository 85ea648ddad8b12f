"""Security (reliability.md T13, T15, §4): MLLP TLS in and out, root policy, hostile values, secrets.

TLS uses a throwaway CA made by the test (tests/support/tls_certs.py); everything else is a real
``serve`` subprocess or the real config loader.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
from pathlib import Path

import pytest
import yaml
from pydicom import config as pydicom_config
from sqlalchemy import func, inspect, select

from ecg_gateway.config import Config, load_config
from ecg_gateway.errors import ConfigError
from ecg_gateway.mllp import MllpClient, MllpConnectionError, serve_mllp
from ecg_gateway.security import client_context, root_refusal, server_context
from ecg_gateway.store.db import make_engine, make_session_factory
from ecg_gateway.store.models import Job, Message, Outbound
from tests.support.carts import c_store, c_store_timed, hl7_exchange
from tests.support.dicom_builders import ecg_dataset
from tests.support.ehr_peer import EhrPeer
from tests.support.gateway import GatewayProcess, run_cli, write_config
from tests.support.hl7_builders import small_oru
from tests.support.tls_certs import make_pki

ALL = ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]


def _tls_send(port: int, payload: bytes, context: ssl.SSLContext) -> bytes:
    async def go() -> bytes:
        async with MllpClient("127.0.0.1", port, connect_timeout_s=5, ack_timeout_s=10,
                              ssl_context=context) as client:
            return await client.send(payload)
    return asyncio.run(go())


# --- T13: MLLP over TLS, in and out -------------------------------------------------------------

def test_t13_mllp_tls_in_and_out_with_client_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ehr_tls = server_context(str(pki.server_cert), str(pki.server_key), str(pki.ca))  # the EHR wants our cert
    ehr = EhrPeer(ssl_context=ehr_tls)
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(
        tmp_path / "c.yaml", db_url, dicom={"enabled": False}, http={"enabled": False},
        worker={"poll_interval_s": 0.2},
        hl7={"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key),
             "tls_client_ca_file": str(pki.ca)},
        outbound={"host": "127.0.0.1", "port": ehr.port, "categories": ALL, "attach_pdf": False,
                  "tls_ca_file": str(pki.ca), "tls_cert_file": str(pki.client_cert),
                  "tls_key_file": str(pki.client_key)})
    proc = GatewayProcess(config).wait_started()
    port = proc.ports["hl7"]
    try:
        cart = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        ack = _tls_send(port, small_oru("TLS-1"), cart)
        assert b"MSA|AA|TLS-1" in ack
        assert len(ehr.wait_for(1, timeout=60)) == 1  # the ORU went out over mutual TLS

        rogue = client_context(str(pki.ca), str(pki.rogue_cert), str(pki.rogue_key))
        with pytest.raises(MllpConnectionError):
            _tls_send(port, small_oru("TLS-ROGUE"), rogue)
        old = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        old.minimum_version, old.maximum_version = ssl.TLSVersion.MINIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_1
        with pytest.raises(MllpConnectionError):
            _tls_send(port, small_oru("TLS-OLD"), old)
        with pytest.raises((ConnectionError, OSError)):  # plaintext to the TLS port: no ACK, ever
            hl7_exchange(port, small_oru("TLS-PLAIN"), timeout=5)
    finally:
        proc.stop()
        ehr.close()
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        assert s.scalars(select(Message.ecg_uid)).all() == ["TLS-1"]
        assert s.scalar(select(Outbound.state)) == "delivered"
    engine.dispose()
    assert '"tls": true' in proc.output()


async def test_t13_outbound_refuses_an_ehr_it_cannot_verify(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    impostor = server_context(str(pki.rogue_cert), str(pki.rogue_key), None)  # signed by another CA

    async def handler(payload: bytes, peer: str) -> bytes:
        raise AssertionError("the gateway must not send PHI to an unverified peer")

    server = await serve_mllp(handler, "127.0.0.1", 0, ssl_context=impostor)
    async with server:
        client = MllpClient("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout_s=3,
                            ssl_context=client_context(str(pki.ca), None, None))
        with pytest.raises(MllpConnectionError):
            await client.send(b"MSH|^~\\&|X")


# --- T15: hostile values, root ------------------------------------------------------------------

def test_t15_bad_uids_refused_sql_payload_stored_verbatim_nothing_written_outside(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    before = {p for p in tmp_path.rglob("*")}
    payload = "Robert'); DROP TABLE messages;--"
    saved = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        for uid in ("../../../../tmp/evil", "1.2.3\x00.4", "1.2.3/../4", "1.2.3.4' OR 1=1--"):
            ds = ecg_dataset()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            assert c_store_timed(proc.ports["dicom"], ds)[0] == 0xA900, repr(uid)
        sql = ecg_dataset()
        sql.PatientName, sql.PatientID = payload, "1' OR '1'='1"
        assert c_store(proc.ports["dicom"], sql) == 0x0000
        hl7_payload = {"family": "x'; DROP TABLE jobs; --", "given": "Bobby", "patient_id": "1; DELETE FROM events"}
        assert hl7_exchange(proc.ports["hl7"], small_oru("SQL-1", hl7_payload))[0][0] == "AA"
    finally:
        pydicom_config.settings.writing_validation_mode = saved
        proc.stop()
    assert {p for p in tmp_path.rglob("*")} - before <= {tmp_path / "gw.db-wal", tmp_path / "gw.db-shm"}
    assert not Path("/tmp/evil").exists()
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        assert set(inspect(engine).get_table_names()) >= {"messages", "jobs", "events", "outbound", "results"}
        stored = {m.source: m.identifiers for m in s.scalars(select(Message))}
        assert s.scalar(select(func.count()).select_from(Job)) == 2
    engine.dispose()
    assert stored["dicom"]["patient_name"] == payload and stored["dicom"]["patient_id"] == "1' OR '1'='1"
    assert stored["hl7"]["patient_id"] == "1; DELETE FROM events^^^HOSP^MR"  # PID-3, all CX components
    assert "x'; DROP TABLE jobs; --" in stored["hl7"]["patient_name"]


def _cfg(**sections: dict[str, object]) -> Config:
    return Config(**{"security": {"allow_root": "auto"}, **sections})  # type: ignore[arg-type]


def test_t15_root_policy() -> None:
    loopback, exposed = _cfg(), _cfg(dicom={"host": "0.0.0.0"})
    assert root_refusal(loopback, euid=1000) is None and root_refusal(exposed, euid=1000) is None  # not root
    assert root_refusal(loopback, euid=0) is None  # the README's one-liner on a fresh box
    assert "dicom=0.0.0.0" in root_refusal(exposed, euid=0)  # type: ignore[operator]
    assert "hl7=10.0.0.5" in root_refusal(_cfg(hl7={"host": "10.0.0.5"}), euid=0)  # type: ignore[operator]
    assert "http=*" in root_refusal(_cfg(http={"host": ""}), euid=0)  # type: ignore[operator]
    assert root_refusal(_cfg(hl7={"host": "10.0.0.5", "enabled": False}), euid=0) is None
    assert "false" in root_refusal(_cfg(security={"allow_root": False}), euid=0)  # type: ignore[operator]
    assert root_refusal(_cfg(security={"allow_root": True}, dicom={"host": "0.0.0.0"}), euid=0) is None
    assert root_refusal(_cfg(http={"host": "::1"}, hl7={"host": "localhost"}), euid=0) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to run as root to see the refusal")
def test_t15_serve_refuses_to_start_as_root(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", security={"allow_root": False})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = run_cli("serve", "--config", str(config), env={"ECG_GATEWAY__DICOM__PORT": str(port)}, timeout=60)
    assert refused.returncode == 78 and "refusing to run as root" in refused.stderr
    assert "gateway_started" not in refused.stdout and not (tmp_path / "gw.db").exists()
    exposed = run_cli("serve", "--config", str(config), env={"ECG_GATEWAY__SECURITY__ALLOW_ROOT": "auto",
                                                              "ECG_GATEWAY__HL7__HOST": "0.0.0.0"}, timeout=60)
    assert exposed.returncode == 78 and "hl7=0.0.0.0" in exposed.stderr


# --- secrets --------------------------------------------------------------------------------------

def test_secrets_only_from_environment_or_files_and_masked(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    in_file = tmp_path / "c.yaml"
    in_file.write_text(yaml.safe_dump({"http": {"admin_token": "s3cret"}}))
    with pytest.raises(ConfigError, match="http.admin_token.*ADMIN_TOKEN"):
        load_config(in_file)
    in_file.write_text(yaml.safe_dump({"database": {"url": "postgresql+psycopg://u:pw@db/x"}}))
    with pytest.raises(ConfigError, match="database.url.*password"):
        load_config(in_file)

    token, password = tmp_path / "token", tmp_path / "pw"
    token.write_text("t0ken-from-file\n")
    password.write_text("pg-pa$$word\n")
    config = write_config(tmp_path / "ok.yaml", "postgresql+psycopg://gw@db.example/ecg",
                          http={"admin_token_file": str(token)}, database={"password_file": str(password)})
    loaded = load_config(config)
    assert loaded.http.admin_token == "t0ken-from-file"
    assert "pg-pa$$word" in loaded.database.url.replace("%24", "$")
    dumped = run_cli("check-config", "--config", str(config), "--json")
    assert dumped.returncode == 0 and "t0ken" not in dumped.stdout and "pa$$word" not in dumped.stdout
    assert json.loads(dumped.stdout)["database"]["url"] == "postgresql+psycopg://gw:***@db.example/ecg"
    monkeypatch.setenv("ECG_GATEWAY__HTTP__ADMIN_TOKEN", "from-env")
    assert load_config(config).http.admin_token == "from-env"  # the environment wins
    token.unlink()
    monkeypatch.delenv("ECG_GATEWAY__HTTP__ADMIN_TOKEN")
    with pytest.raises(ConfigError, match="http.admin_token_file: cannot read"):
        load_config(config)
