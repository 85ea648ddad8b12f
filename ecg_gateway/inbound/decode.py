"""Decode stored raw bytes (or a file) to :class:`Ecg`, whatever format it arrived in.

One dispatch for the CLI, the worker and the sender: HL7 v2 to inbound/hl7.py, every other
format to :func:`~ecg_gateway.inbound.formats.decode_document`. The format names and the
sniffing live in formats.py and are re-exported here for the callers that use both.
"""

from __future__ import annotations

from pathlib import Path

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import UndecodableError
from ecg_gateway.inbound.formats import (
    AECG,
    DICOM,
    EXPECTED,
    HL7V2,
    LABELS,
    MUSE,
    SCP,
    SIERRA,
    SNIFF_BYTES,
    decode_document,
    describe,
    identify,
    sniff,
    sniff_content_type,
    xml_root,
    xml_text,
)

__all__ = ["AECG", "DICOM", "EXPECTED", "HL7V2", "LABELS", "MUSE", "SCP", "SIERRA", "SNIFF_BYTES",
           "decode_file", "decode_message", "describe", "identify", "sniff", "sniff_content_type",
           "xml_root", "xml_text"]

_WFDB_SIGNAL_SUFFIXES = (".dat", ".mat", ".xyz")


def decode_message(content_type: str, raw: bytes, *, accept_hemodynamic: bool = True) -> Ecg:
    """Decode a stored message. Stored bytes were validated at receipt, so the lenient
    switch (Hemodynamic class) is on: anything stored must stay decodable."""
    if content_type == HL7V2:
        from ecg_gateway.inbound.hl7 import decode_hl7

        return decode_hl7(raw)  # its errors carry the HL7 location and are answered as they are
    return decode_document(content_type, raw, accept_hemodynamic=accept_hemodynamic)


def decode_file(path: str | Path) -> Ecg:
    """Decode a file by its content; WFDB records are named by their ``.hea`` header."""
    path = Path(path)
    if path.suffix == ".hea":
        from ecg_gateway.inbound.wfdb import read_wfdb

        return read_wfdb(path)
    if path.suffix.lower() in _WFDB_SIGNAL_SUFFIXES and path.with_suffix(".hea").is_file():
        raise UndecodableError(f"WFDB signal file: triage its header {path.stem}.hea instead")
    raw = path.read_bytes()
    return decode_message(sniff_content_type(raw[:SNIFF_BYTES]), raw)
