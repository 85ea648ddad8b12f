"""Configuration: a YAML file (``--config``) overridden by ``ECG_GATEWAY__SECTION__KEY``.

Validated at start-up; unknown keys are rejected with the key named, and the CLI exits
78 (EX_CONFIG) on any error. Every key has a default so ``serve`` runs with no file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ecg_gateway.ecg import CATEGORY_NAMES, UNINTERPRETABLE
from ecg_gateway.errors import ConfigError

OUTBOUND_CATEGORIES = (*CATEGORY_NAMES, UNINTERPRETABLE)
#: keys read only from the environment (secrets): the example file shows them commented out
ENV_ONLY = {("http", "admin_token")}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(Section):
    url: str = Field("sqlite:///ecg-gateway.db", description="SQLAlchemy URL; SQLite file or postgresql+psycopg://"
                     " (a password only via the environment or password_file)")
    password_file: str | None = Field(None, description="file holding the database password (secret)")
    auto_upgrade: bool = Field(True, description="SQLite only: run migrations at start; PostgreSQL must be at head")


class DicomConfig(Section):
    enabled: bool = True
    ae_title: str = Field("ECG_GATEWAY", max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535, description="0 = any free port (logged)")
    allowed_calling_ae_titles: list[str] = Field(default_factory=list, description="empty = any")
    accept_hemodynamic: bool = Field(False, description="also accept Hemodynamic Waveform Storage (some GE carts)")
    max_associations: int = Field(16, ge=1)
    acse_timeout_s: float = Field(5.0, gt=0, description="an idle socket holds an association slot this long")
    dimse_timeout_s: float = Field(30.0, gt=0)
    network_timeout_s: float = Field(30.0, gt=0)
    max_pdu_bytes: int = Field(1 << 20, ge=4096, le=64 << 20,
                               description="largest PDU we accept; longer length claims drop the connection")
    max_connections_per_ip: int = Field(8, ge=1, description="idle sockets must not exhaust max_associations")
    max_dataset_bytes: int = Field(16 << 20, ge=1 << 20, le=1 << 30,
                                   description="a C-STORE data set above this drops the connection (an ECG is ~1 MB)")
    tls_cert_file: str | None = Field(None, description="PEM certificate: set it (and the key) to require TLS")
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = Field(None, description="PEM CA bundle: set it to require client certificates")
    tls_handshake_timeout_s: float = Field(5.0, gt=0)


class Hl7Config(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=0, le=65535, description="0 = any free port (logged)")
    max_frame_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    message_timeout_s: float = Field(30.0, gt=0, description="deadline for one frame once it started")
    idle_timeout_s: float = Field(300.0, gt=0)
    write_timeout_s: float = Field(10.0, gt=0, description="an ACK the peer has not read within this "
                                   "closes the connection (a peer that never reads must not hold a slot)")
    max_connections: int = Field(64, ge=1,
                                 description="at the cap a new connection evicts the longest-idle one")
    max_connections_per_ip: int = Field(
        8, ge=1, description="idle sockets from one address must not exhaust max_connections")
    decode_threads: int = Field(2, ge=1, le=64, description="threads that decode and commit messages; more than 2 "
                                "only add GIL contention (bench/mllp.py)")
    tls_cert_file: str | None = Field(None, description="PEM certificate: set it (and the key) to require TLS (>= 1.2)")
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = Field(None, description="PEM CA bundle: set it to require client certificates")


class HttpConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 = any free port (logged)")
    admin_token: str | None = Field(None, description="protects admin actions on the web page; a secret, "
                                    "so environment only: ECG_GATEWAY__HTTP__ADMIN_TOKEN (or admin_token_file); "
                                    "refused in this file")
    admin_token_file: str | None = Field(None, description="file holding the admin token")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names the admin page answers to "
                                     "besides localhost, 127.0.0.1, ::1 and http.host (DNS rebinding)")
    request_timeout_s: float = Field(10.0, gt=0, description="per socket read/write of a request")
    max_threads: int = Field(16, ge=1, le=1024, description="requests served at once; more get 503")


class OutboundConfig(Section):
    host: str | None = Field(None, description="EHR MLLP endpoint; unset = keep results, deliver nothing")
    port: int = Field(2576, ge=0, le=65535)
    categories: list[str] = Field(default_factory=lambda: ["acute", UNINTERPRETABLE])
    connect_timeout_s: float = Field(5.0, gt=0)
    ack_timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(10, ge=1)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    attach_pdf: bool = Field(True, description="ED OBX with the rendered 12-lead PDF")
    acute_pdf_budget_s: float = Field(0.15, gt=0, le=10, description="longest an acute ORU waits for its "
                                      "PDF; a later PDF follows in a corrected ORU (OBR-25 C)")
    pdf_ed_type: str = Field("Application^PDF", pattern=r"^[A-Za-z0-9.+-]+\^[A-Za-z0-9.+-]+$",
                             description="ED OBX-5 type of data ^ subtype (tables 0191/0291); e.g. AP^PDF")
    sending_application: str = "ECG-GATEWAY"
    sending_facility: str = "HOSP"
    receiving_application: str = "EHR"
    receiving_facility: str = "HOSP"
    processing_id: Literal["P", "T", "D"] = "P"
    lease_s: float | None = Field(None, gt=0, description="a send holds its row this long before a restarted "
                                  "sender may resend it; null = connect + 2 x ACK timeout + 60 s")
    tls_ca_file: str | None = Field(None, description="PEM CA bundle to verify the EHR; setting any tls_* key "
                                    "turns TLS (>= 1.2) on")
    tls_cert_file: str | None = Field(None, description="client certificate, if the EHR requires one")
    tls_key_file: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)

    @field_validator("categories")
    @classmethod
    def _acute_always(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in OUTBOUND_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; allowed: {list(OUTBOUND_CATEGORIES)}")
        return value if "acute" in value else ["acute", *value]


class ModelConfig(Section):
    path: str | None = Field(None, description="checkpoint file; unset = the bundled default model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    acute_flag_budget: float | None = Field(
        0.10, gt=0.0, lt=1.0,
        description="share of ECGs the acute flag may take: picks the checkpoint's threshold chosen for it "
                    "on PTB-XL fold 9 (the card lists 0.05, 0.1, 0.15, 0.2); null = the checkpoint's default")
    acute_threshold: float | None = Field(
        None, ge=0.0, le=1.0,
        description="explicit acute threshold, overrides acute_flag_budget "
                    "(null = by budget; see the model card's operating points)")
    batch_size: int = Field(32, ge=1, le=4096)
    cpu_precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="CPU inference precision; bfloat16 is ~1.6x faster where the CPU has it "
        "natively (else float32 is used), only for a model `bench/inference.py --bf16` qualified")
    cpu_threads: int = Field(0, ge=0, le=1024, description="CPU cores for inference, run as that many "
                             "single-threaded lanes; 0 = auto: half the cores with --role all, all of them "
                             "with --role worker")


class WorkerConfig(Section):
    poll_interval_s: float = Field(1.0, gt=0)
    lease_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)


class RetentionConfig(Section):
    days: int | None = Field(None, ge=1, description=(
        "daily purge of messages (raw bytes) and their jobs/results/outbound rows older than this "
        "many days, once finished; null = keep forever; events are kept"))
    run_at: str = Field("03:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                        description="local time (HH:MM) of the daily purge")

class SecurityConfig(Section):
    allow_root: Literal["auto"] | bool = Field(
        "auto", description="auto = as root only while every listener is on loopback; false = never; "
                            "true = always (not recommended)")


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_output: bool | None = Field(None, description="null = JSON when stdout is not a TTY")


class Config(BaseSettings):
    """The whole configuration. Sources, strongest first: environment, YAML file, defaults."""

    model_config = SettingsConfigDict(
        env_prefix="ECG_GATEWAY__", env_nested_delimiter="__", extra="forbid", frozen=True,
        case_sensitive=False,
    )

    database: DatabaseConfig = DatabaseConfig()
    dicom: DicomConfig = DicomConfig()
    hl7: Hl7Config = Hl7Config()
    http: HttpConfig = HttpConfig()
    outbound: OutboundConfig = OutboundConfig()
    model: ModelConfig = ModelConfig()
    worker: WorkerConfig = WorkerConfig()
    retention: RetentionConfig = RetentionConfig()
    logging: LoggingConfig = LoggingConfig()
    security: SecurityConfig = SecurityConfig()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the configuration; raise ConfigError naming the bad key."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        data = loaded or {}
    _reject_unknown_env_keys()
    _reject_secrets_in_file(data)
    try:
        config = Config(**data)
    except SettingsError as exc:  # pydantic-settings could not decode a list/mapping value
        raise ConfigError(_undecodable_env_message()) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid config key {key}: {first['msg']}") from exc
    return _with_secret_files(config)


# --- secrets: only from the environment or *_file keys, never printed ----------------------

def _reject_secrets_in_file(data: dict[str, Any]) -> None:
    """A config file gets copied, mailed and committed; secrets must not live in it."""
    http, database = data.get("http") or {}, data.get("database") or {}
    if isinstance(http, dict) and http.get("admin_token"):
        raise ConfigError("invalid config key http.admin_token: secrets are not read from the config file; "
                          "use ECG_GATEWAY__HTTP__ADMIN_TOKEN or http.admin_token_file")
    url = database.get("url") if isinstance(database, dict) else None
    if isinstance(url, str) and _url_password(url):
        raise ConfigError("invalid config key database.url: a password is not read from the config file; "
                          "use ECG_GATEWAY__DATABASE__URL, database.password_file or PGPASSFILE")


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except ArgumentError:
        return None


def _read_secret(path: str, key: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"invalid config key {key}: cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"invalid config key {key}: {path} is empty")
    return value


def _with_secret_files(config: Config) -> Config:
    """Fill secrets from their ``*_file`` keys (the environment value wins if both are set)."""
    updates: dict[str, Any] = {}
    if config.http.admin_token_file and not config.http.admin_token:
        token = _read_secret(config.http.admin_token_file, "http.admin_token_file")
        updates["http"] = config.http.model_copy(update={"admin_token": token})
    if config.database.password_file and not _url_password(config.database.url):
        from sqlalchemy.engine import make_url

        password = _read_secret(config.database.password_file, "database.password_file")
        url = make_url(config.database.url).set(password=password).render_as_string(hide_password=False)
        updates["database"] = config.database.model_copy(update={"url": url})
    return config.model_copy(update=updates) if updates else config


def redacted_dump(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data with every secret masked (for any dump)."""
    dumped = config.model_dump(mode="json")
    if dumped["http"].get("admin_token"):
        dumped["http"]["admin_token"] = "***"
    if _url_password(dumped["database"]["url"]):
        from sqlalchemy.engine import make_url

        dumped["database"]["url"] = make_url(dumped["database"]["url"]).render_as_string(hide_password=True)
    return dumped


def _reject_unknown_env_keys() -> None:
    """pydantic-settings ignores unknown env vars; an operator's typo must not pass silently."""
    sections = Config.model_fields
    for name in os.environ:
        if not name.upper().startswith("ECG_GATEWAY__"):
            continue
        parts = name[len("ECG_GATEWAY__"):].lower().split("__")
        section = sections.get(parts[0])
        if section is None or len(parts) != 2 or parts[1] not in section.annotation.model_fields:  # type: ignore[union-attr]
            raise ConfigError(f"invalid config key {name}: unknown setting")


def _undecodable_env_message() -> str:
    """Name the variable whose value pydantic-settings could not decode: list and mapping keys
    are read from the environment as JSON, and its own error names only the section."""
    for name, value in os.environ.items():
        if name.upper().startswith("ECG_GATEWAY__"):
            try:
                json.loads(value)
            except ValueError:
                section, key = name[len("ECG_GATEWAY__"):].lower().split("__")
                if _is_complex(Config.model_fields[section].annotation.model_fields[key].annotation):  # type: ignore[union-attr]
                    return f"invalid config key {name}: a list or mapping must be JSON, e.g. '[\"acute\"]'"
    return "invalid config in the environment: a list or mapping value must be JSON"


def _is_complex(annotation: Any) -> bool:
    """A list, mapping or set (also inside ``X | None``): what pydantic-settings JSON-decodes."""
    if annotation in (list, dict, set, tuple) or get_origin(annotation) in (list, dict, set, tuple):
        return True
    return any(_is_complex(arg) for arg in get_args(annotation))


def example_yaml() -> str:
    """config.example.yaml, generated from the models so the reference never drifts."""
    lines = ["# ecg-gateway configuration: every key with its default.",
             "# Override any key with ECG_GATEWAY__<SECTION>__<KEY> (e.g. ECG_GATEWAY__DICOM__PORT=0).",
             "# Unknown keys are rejected; `ecg-gateway check-config --config FILE` validates a file.", ""]
    defaults = Config().model_dump(mode="json")
    for section, info in Config.model_fields.items():
        lines.append(f"{section}:")
        model = info.annotation
        for key, field_info in model.model_fields.items():  # type: ignore[union-attr]
            if field_info.description:
                lines.append(f"  # {field_info.description}")
            value = yaml.safe_dump({key: defaults[section][key]}, default_flow_style=True, width=200)
            comment = "# " if (section, key) in ENV_ONLY else ""
            lines.append("  " + comment + value.strip()[1:-1])
        lines.append("")
    return "\n".join(lines)
