"""Configuration: a YAML file (``--config``) overridden by ``ECG_GATEWAY__SECTION__KEY``.

Validated at start-up; unknown keys are rejected with the key named, and the CLI exits
78 (EX_CONFIG) on any error. Every key has a default so ``serve`` runs with no file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ecg_gateway.ecg import UNINTERPRETABLE, TriageCategory
from ecg_gateway.errors import ConfigError

OUTBOUND_CATEGORIES = tuple(c.value for c in TriageCategory) + (UNINTERPRETABLE,)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(Section):
    url: str = Field("sqlite:///ecg-gateway.db", description="SQLAlchemy URL; SQLite file or postgresql+psycopg://")
    auto_upgrade: bool = Field(True, description="SQLite only: run migrations at start; PostgreSQL must be at head")


class DicomConfig(Section):
    enabled: bool = True
    ae_title: str = Field("ECG_GATEWAY", max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535, description="0 = any free port (logged)")
    allowed_calling_ae_titles: list[str] = Field(default_factory=list, description="empty = any")
    accept_hemodynamic: bool = Field(False, description="also accept Hemodynamic Waveform Storage (some GE carts)")
    max_associations: int = Field(16, ge=1)
    acse_timeout_s: float = Field(10.0, gt=0)
    dimse_timeout_s: float = Field(30.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    max_pdu_bytes: int = Field(1 << 20, ge=4096, le=64 << 20,
                               description="largest PDU we accept; longer length claims drop the connection")
    max_connections_per_ip: int = Field(8, ge=1, description="idle sockets must not exhaust max_associations")
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
    max_connections: int = Field(64, ge=1)


class HttpConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 = any free port (logged)")
    admin_token: str | None = Field(None, description="protects admin actions on the web page")


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
    sending_application: str = "ECG-GATEWAY"
    sending_facility: str = "HOSP"
    receiving_application: str = "EHR"
    receiving_facility: str = "HOSP"
    processing_id: Literal["P", "T", "D"] = "P"

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
    batch_size: int = Field(32, ge=1, le=4096)
    cpu_threads: int = Field(0, ge=0, le=1024, description="torch CPU threads; 0 = auto: half the cores "
                             "with --role all, all of them with --role worker")


class WorkerConfig(Section):
    poll_interval_s: float = Field(1.0, gt=0)
    lease_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)


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
    logging: LoggingConfig = LoggingConfig()

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
    try:
        return Config(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid config key {key}: {first['msg']}") from exc


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
            lines.append("  " + value.strip()[1:-1])
        lines.append("")
    return "\n".join(lines)
