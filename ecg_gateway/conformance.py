"""What the gateway implements on the wire, read from the code itself (no copies).

docs/dicom-conformance.md and docs/hl7-interface.md promise exactly these SOP classes,
transfer syntaxes, statuses, message types and error codes; tests/unit/test_docs.py compares
the documents' tables with the values here, so a code change that the documents do not
follow fails the tests. Nothing here is used at run time.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from types import ModuleType

from pydicom.uid import UID
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

from ecg_gateway.config import DicomConfig
from ecg_gateway.inbound import dicom, dicom_scp, hl7, hl7_receiver, hl7_tokens
from ecg_gateway.inbound.hl7_ack import ACCEPT_CODES, SUPPORTED_VERSIONS, TABLE_0357


@dataclass(frozen=True, slots=True)
class PresentationContext:
    """One abstract syntax the SCP accepts, with the transfer syntaxes it accepts for it."""

    sop_class_uid: str
    name: str
    transfer_syntaxes: tuple[str, ...]


def dicom_contexts(config: DicomConfig | None = None) -> list[PresentationContext]:
    """The presentation contexts of the AE that ``serve`` builds for ``config``."""
    ae = dicom_scp.build_ae(config or DicomConfig())
    return [PresentationContext(str(cx.abstract_syntax), UID(str(cx.abstract_syntax)).name,
                                tuple(str(ts) for ts in cx.transfer_syntax))
            for cx in ae.supported_contexts]


def dicom_storage_transfer_syntaxes() -> dict[str, str]:
    """Transfer syntax UID -> name, in the SCP's order of preference."""
    return {str(ts): UID(str(ts)).name for ts in dicom_scp.TRANSFER_SYNTAXES}


@dataclass(frozen=True, slots=True)
class WaveformLimits:
    """What the decoder accepts for one SOP class (else 0xA900)."""

    max_channels: int
    max_samples: int
    sampling_hz: tuple[float, float]
    sample_kinds: frozenset[tuple[int, str]]  # (Waveform Bits Allocated, Sample Interpretation)


def dicom_waveform_limits() -> dict[str, WaveformLimits]:
    """SOP Class UID -> the per-class waveform limits of the decoder."""
    return {uid: WaveformLimits(lim.channels, lim.samples, lim.fs, frozenset(lim.kinds))
            for uid, lim in dicom.LIMITS.items()}


def dicom_implementation() -> tuple[str, str]:
    """(Implementation Class UID, Implementation Version Name) sent in A-ASSOCIATE-AC."""
    ae = dicom_scp.build_ae(DicomConfig())
    return str(ae.implementation_class_uid), str(ae.implementation_version_name)


def c_store_statuses() -> dict[int, tuple[str, str]]:
    """Every C-STORE status constant of the SCP -> (category, PS3.4/PS3.7 meaning).

    Read from dicom_scp's module constants that are DIMSE statuses, with the meanings from
    pynetdicom's status tables, so a new status constant shows up here on its own.
    """
    known = {**GENERAL_STATUS, **STORAGE_SERVICE_CLASS_STATUS}
    found: dict[int, tuple[str, str]] = {}
    for name, value in vars(dicom_scp).items():
        if name.isupper() and type(value) is int and value in known:
            category, meaning = known[value]
            found[value] = (category, meaning or "Success")
    return dict(sorted(found.items()))


def hl7_accepted_messages() -> dict[str, tuple[str, ...]]:
    """Message type -> accepted trigger events (MSH-9.1, MSH-9.2)."""
    return dict(hl7_receiver.ACCEPTED_EVENTS)


def hl7_versions() -> tuple[str, ...]:
    return tuple(SUPPORTED_VERSIONS)


def hl7_processing_ids() -> tuple[str, ...]:
    """MSH-11 values the receiver accepts (the default ``serve`` uses)."""
    default = inspect.signature(hl7_receiver.Hl7Receiver).parameters["processing_ids"].default
    return tuple(default)


def hl7_charsets() -> dict[str, str]:
    """MSH-18 value -> Python codec the receiver decodes it with ('' = MSH-18 empty)."""
    return dict(hl7_tokens._CHARSETS)


def hl7_accept_codes() -> dict[str, str]:
    """Original-mode code -> enhanced-mode accept acknowledgement code."""
    return dict(ACCEPT_CODES)


_ERROR_SOURCES: tuple[ModuleType, ...] = (hl7_receiver, hl7, hl7_tokens)


def hl7_error_codes() -> dict[int, str]:
    """Table 0357 codes the receiver can put in ERR-3 -> their table text.

    Every non-zero table 0357 code written as a literal in the receiver, the decoder or the
    tokenizer: those are the only places an ERR code is chosen (hl7_ack only formats it).
    """
    codes: set[int] = set()
    for module in _ERROR_SOURCES:
        tree = ast.parse(inspect.getsource(module))
        codes.update(node.value for node in ast.walk(tree)
                     if isinstance(node, ast.Constant) and type(node.value) is int
                     and node.value in TABLE_0357 and node.value != 0)
    return {code: TABLE_0357[code] for code in sorted(codes)}
