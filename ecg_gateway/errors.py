"""One root exception for everything the gateway raises on purpose.

Protocol edges translate these into protocol answers (DICOM status, HL7 ACK,
CLI exit code); nothing else should escape into pynetdicom or the MLLP loop.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of all errors raised deliberately by ecg-gateway."""


class ConfigError(GatewayError):
    """The configuration is invalid (exit 78)."""


class InvalidEcgError(GatewayError):
    """The input decoded, but its waveform fails validation.

    ``field`` names the offending element or HL7 field (never a value: values may be PHI).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UndecodableError(GatewayError):
    """The input could not be decoded at all (truncated, not DICOM/HL7, bad encoding)."""


class StoreUnavailableError(GatewayError):
    """The database could not commit; the peer should retry unchanged."""


class CheckpointError(GatewayError):
    """The model checkpoint is missing, corrupt or has a contract we cannot meet."""


class AdminError(GatewayError):
    """An operator asked for something the queue's state does not allow; nothing changed."""
