"""One root exception for everything the gateway raises on purpose, and the exit codes.

Protocol edges translate these into protocol answers (DICOM status, HL7 ACK,
CLI exit code); nothing else should escape into pynetdicom or the MLLP loop.
The exit codes are the table in operator-guide.md (sysexits.h values; 1 is a crash, the
interpreter's own code for an uncaught exception). Factored out so that every command
module and the daemon can import them without importing each other.
"""

from __future__ import annotations

EX_OK = 0
EX_FORCED_EXIT = 1  # serve: a second stop signal cut the drain short (1, as for a crash)
EX_USAGE = 2  # argparse's code for a bad command line
EX_DATAERR = 65  # an input file or a row the command cannot use
EX_UNAVAILABLE = 69  # a port, the database or the peer is unavailable (a restart may help)
EX_CONFIG = 78  # bad config, database not at head, unusable checkpoint (a restart cannot help)


class GatewayError(Exception):
    """Root of all errors raised deliberately by ecg-gateway."""


class ExitError(GatewayError):
    """An error that ends a command or the daemon: one line for stderr and its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StartupError(ExitError):
    """``serve`` could not start in a way the operator must fix."""


class CliError(ExitError):
    """A command failed; the CLI prints the message and exits with the code."""


class PeerError(ExitError):
    """A test peer (``send-dicom``) could not send: unusable file (65) or peer unreachable (69)."""


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
