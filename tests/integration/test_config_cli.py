"""Configuration and CLI through the real entry point (`python -m ecg_gateway`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecg_gateway.config import example_yaml, load_config
from ecg_gateway.errors import ConfigError
from tests.support.gateway import REPO, run_cli, write_config


def test_example_config_is_generated_from_the_model_and_loads() -> None:
    assert (REPO / "config.example.yaml").read_text() == example_yaml()
    config = load_config(REPO / "config.example.yaml")
    assert config.dicom.port == 11112 and config.outbound.categories == ["acute", "uninterpretable"]


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dicom:\n  port: 104\n")
    monkeypatch.setenv("ECG_GATEWAY__DICOM__PORT", "0")
    monkeypatch.setenv("ECG_GATEWAY__DICOM__ALLOWED_CALLING_AE_TITLES", '["CART1"]')
    config = load_config(path)
    assert config.dicom.port == 0 and config.dicom.allowed_calling_ae_titles == ["CART1"]


def test_acute_can_never_be_removed_from_outbound_categories(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("outbound:\n  categories: [subacute]\n")
    assert load_config(path).outbound.categories == ["acute", "subacute"]


@pytest.mark.parametrize(("text", "key"), [
    ("dicom:\n  prot: 11112\n", "dicom.prot"),
    ("dicom:\n  port: 70000\n", "dicom.port"),
    ("nonsense: {}\n", "nonsense"),
    ("model:\n  device: tpu\n", "model.device"),
])
def test_bad_config_names_the_key_and_exits_78(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 78
    assert result.stderr.startswith("ecg-gateway: error:") and key in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_environment_key_exits_78(tmp_path: Path) -> None:
    result = run_cli("check-config", env={"ECG_GATEWAY__DICOM__PROT": "1"})
    assert result.returncode == 78 and "ECG_GATEWAY__DICOM__PROT" in result.stderr


@pytest.mark.parametrize("value", ["[normal,acute]", "{broken"])
def test_environment_list_that_is_not_json_names_the_variable_and_exits_78(value: str) -> None:
    """A list or mapping key read from the environment must be JSON; pydantic-settings raises
    its own error there, which escaped as a traceback with exit 1 (found starting serve by hand)."""
    result = run_cli("check-config", env={"ECG_GATEWAY__OUTBOUND__CATEGORIES": value})
    assert result.returncode == 78
    assert result.stderr.startswith("ecg-gateway: error:") and len(result.stderr.strip().splitlines()) == 1
    assert "ECG_GATEWAY__OUTBOUND__CATEGORIES" in result.stderr and "JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    result = run_cli("status", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 78 and "cannot read config file" in result.stderr


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "sqlite:///x.db")
    result = run_cli("check-config", "--config", str(config), "--json",
                     env={"ECG_GATEWAY__HTTP__ADMIN_TOKEN": "s3cret"})  # secrets: environment or *_file
    assert result.returncode == 0
    dumped = json.loads(result.stdout)
    assert dumped["dicom"]["port"] == 0 and dumped["http"]["admin_token"] == "***"
    assert "s3cret" not in result.stdout


def test_db_upgrade_then_status_on_sqlite(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}")
    assert run_cli("status", "--config", str(config)).returncode == 78  # not migrated yet
    upgraded = run_cli("db", "upgrade", "--config", str(config))
    assert upgraded.returncode == 0 and "head" in upgraded.stdout
    status = run_cli("status", "--config", str(config), "--json")
    assert status.returncode == 0
    report = json.loads(status.stdout)
    assert (report["messages"], report["jobs"], report["results"], report["outbound"]) == (0, {}, {}, {})


@pytest.mark.postgres
def test_serve_refuses_postgres_not_at_head_then_runs_after_upgrade(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path / "c.yaml", pg_url, hl7={"enabled": False}, http={"enabled": False})
    refused = run_cli("serve", "--config", str(config), timeout=60)
    assert refused.returncode == 78 and "migration head" in refused.stderr
    assert run_cli("db", "upgrade", "--config", str(config)).returncode == 0
    assert run_cli("db", "current", "--config", str(config)).returncode == 0


def test_unreachable_database_exits_69(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "postgresql+psycopg://nobody@127.0.0.1:1/none",
                          hl7={"enabled": False}, http={"enabled": False})
    result = run_cli("serve", "--config", str(config), timeout=60)
    assert result.returncode == 69 and "database unavailable" in result.stderr


def test_port_in_use_exits_69(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", dicom={"port": port},
                              hl7={"enabled": False}, http={"enabled": False})
        result = run_cli("serve", "--config", str(config), timeout=60)
    assert result.returncode == 69 and "cannot bind DICOM port" in result.stderr


def test_acute_threshold_override_changes_the_cli_decision(tmp_path: Path) -> None:
    """The operator's operating point (model.acute_threshold) replaces the checkpoint's."""
    ecg = REPO.parent / "shared" / "data" / "ptbxl" / "records100" / "00000" / "00001_lr.hea"
    if not ecg.exists():
        pytest.skip("shared data not present")
    loose = write_config(tmp_path / "loose.yaml", "sqlite:///x.db", model={"acute_threshold": 0.0})
    strict = write_config(tmp_path / "strict.yaml", "sqlite:///x.db", model={"acute_threshold": 1.0})
    a = json.loads(run_cli("triage", "--config", str(loose), "--json", str(ecg)).stdout)
    b = json.loads(run_cli("triage", "--config", str(strict), "--json", str(ecg)).stdout)
    assert a["probabilities"] == b["probabilities"]
    assert a["category"] == "acute"
    assert b["category"] == max(b["probabilities"], key=b["probabilities"].get)


# --- issue #29 D5: what the values name is checked too, and every failure names its key ------

def _bad_references(tmp_path: Path) -> dict[str, tuple[dict[str, dict[str, object]], str]]:
    """case -> (config sections, what the one-line error must contain)."""
    from tests.support.tls_certs import make_pki

    pki = make_pki(tmp_path)
    missing = str(tmp_path / "absent.pem")
    return {
        "outbound CA missing": ({"outbound": {"host": "127.0.0.1", "tls_ca_file": missing}},
                                "outbound.tls_ca_file: "),
        "no driver": ({"database": {"url": "mysql://x"}}, "database.url: the driver for mysql"),
        "unknown database": ({"database": {"url": "oracle9://x"}}, "database.url: unknown database"),
        "HL7 key missing": ({"hl7": {"tls_cert_file": str(pki.server_cert), "tls_key_file": missing}},
                            "hl7.tls_key_file: "),
        "HL7 key is not a key": ({"hl7": {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.ca)}},
                                 "hl7.tls_cert_file, hl7.tls_key_file: the certificate, key or CA cannot"),
        "DICOM key without cert": ({"dicom": {"tls_key_file": str(pki.server_key)}}, "dicom.tls_cert_file: unset"),
        "client CA is not PEM": ({"dicom": {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key),
                                            "tls_client_ca_file": str(tmp_path / "c.yaml")}},
                                 "dicom.tls_client_ca_file"),
        "model missing": ({"model": {"path": str(tmp_path / "absent.pt")}}, "model.path: "),
        "SQLite folder missing": ({"database": {"url": f"sqlite:///{tmp_path / 'nowhere' / 'gw.db'}"}},
                                  "database.url: the folder"),
    }


def test_check_config_checks_files_model_and_driver_each_by_key(tmp_path: Path) -> None:
    """Each of these used to pass `check-config` (exit 0) and crash or mislead `serve`."""
    for case, (sections, message) in _bad_references(tmp_path).items():
        config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", **sections)  # type: ignore[arg-type]
        result = run_cli("check-config", "--config", str(config))
        assert result.returncode == 78, (case, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (case, result.stderr)


@pytest.mark.parametrize("case", ["outbound CA missing", "no driver", "HL7 key missing"])
def test_serve_names_the_key_and_exits_78(tmp_path: Path, case: str) -> None:
    """Issue #29 D5: these were exit 1 (FileNotFoundError, ModuleNotFoundError) or 69 blaming
    the port ("cannot bind HL7 port: [SSL] PEM lib"). A missing model is not among them:
    `serve` runs degraded without one (T8, test_e2e)."""
    sections, message = _bad_references(tmp_path)[case]
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", **sections)  # type: ignore[arg-type]
    result = run_cli("serve", "--config", str(config), timeout=120)
    assert result.returncode == 78 and message in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("ecg-gateway: error: invalid config key")


@pytest.mark.postgres
@pytest.mark.parametrize(("change", "code", "reason"), [
    ("port", 69, "Connection refused"),
    ("database", 78, "does not exist"),
    ("role", 78, 'role "nobody_here" does not exist'),
])
def test_wrong_postgres_url_says_why(tmp_path: Path, pg_url: str, change: str, code: int, reason: str) -> None:
    """Issue #29 D5: a wrong port, database or role was 69 "database unavailable:
    OperationalError" with no reason; a URL naming something absent is now a config error."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    url = {"port": url.set(port=1), "database": url.set(database="no_such_db"),
           "role": url.set(username="nobody_here")}[change]
    config = write_config(tmp_path / "c.yaml", url.render_as_string(hide_password=False),
                          hl7={"enabled": False}, http={"enabled": False})
    result = run_cli("serve", "--config", str(config), timeout=60)
    assert result.returncode == code and reason in result.stderr, result.stderr
    assert "database unavailable" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    if code == 78:
        assert "database.url" in result.stderr
