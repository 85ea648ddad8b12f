"""Decode stored raw bytes (or a file) to :class:`Ecg`, whatever format it arrived in."""

from __future__ import annotations

from pathlib import Path

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import UndecodableError

DICOM = "application/dicom"
HL7V2 = "application/hl7-v2"
AECG = "application/x-hl7-aecg+xml"
MUSE = "application/x-ge-muse+xml"


def decode_message(content_type: str, raw: bytes, *, accept_hemodynamic: bool = True) -> Ecg:
    """Decode a stored message. Stored bytes were validated at receipt, so the lenient
    switch (Hemodynamic class) is on: anything stored must stay decodable."""
    if content_type == DICOM:
        from ecg_gateway.inbound.dicom import decode_dicom_bytes

        return decode_dicom_bytes(raw, accept_hemodynamic=accept_hemodynamic)
    if content_type == HL7V2:
        from ecg_gateway.inbound.hl7 import decode_hl7

        return decode_hl7(raw)
    if content_type == AECG:
        from ecg_gateway.inbound.aecg import decode_aecg

        return decode_aecg(raw)
    if content_type == MUSE:
        from ecg_gateway.inbound.muse import decode_muse

        return decode_muse(raw)
    raise UndecodableError(f"unknown content type {content_type!r}")


def sniff_content_type(head: bytes) -> str:
    """Guess a file's format from its first bytes (for `ecg-gateway triage FILE`)."""
    text = head.lstrip(b"\xef\xbb\xbf\x0b \r\n\t")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    if text.startswith(b"MSH"):
        return HL7V2
    if text.startswith(b"<"):
        lowered = head[:4096].lower()
        if b"annotatedecg" in lowered:
            return AECG
        if b"restingecg" in lowered:
            return MUSE
    raise UndecodableError("unrecognised file format (expected DICOM, HL7 v2, aECG or MUSE XML)")


def decode_file(path: str | Path) -> Ecg:
    """Decode a file by its content; WFDB records are named by their ``.hea`` header."""
    path = Path(path)
    if path.suffix == ".hea":
        from ecg_gateway.inbound.wfdb import read_wfdb

        return read_wfdb(path)
    raw = path.read_bytes()
    return decode_message(sniff_content_type(raw[:4096]), raw)
