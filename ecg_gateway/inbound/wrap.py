"""Wrap an ECG document in the ORU^R01 an ECG management system would send
(``ecg-gateway send-hl7 --wrap``): an installer can test the HL7 path with a cart's file.

The file is decoded first, so only what the gateway would accept is sent, and its patient
fields (PID, PV1, order numbers, acquisition time) fill the segments. The document itself
travels unchanged, Base64, in one ED OBX: ``source ^ application ^ subtype ^ Base64 ^ data``.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from pathlib import Path

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import UndecodableError
from ecg_gateway.inbound.decode import (
    DICOM,
    HL7V2,
    SCP,
    SNIFF_BYTES,
    decode_message,
    sniff_content_type,
)
from ecg_gateway.outbound.oru import escape, escape_composite, hl7_ts

SENDING_APPLICATION = "ECGGW-WRAP"
EKG_STUDY = "11524-6^EKG study^LN"
#: ED data subtype (HL7 table 0291) per content type; the XML documents are "XML".
_SUBTYPES = {DICOM: "DICOM", SCP: "Octet-stream"}


def wrap_ecg_file(path: Path, *, control_id: str | None = None, now: datetime | None = None) -> bytes:
    """ORU^R01 bytes (``\\r`` segment ends) carrying the file as an ED OBX."""
    if path.suffix == ".hea":
        raise UndecodableError("a WFDB record is not a document to encapsulate: send a DICOM, "
                               "aECG, MUSE, SierraECG or SCP-ECG file")
    raw = path.read_bytes()
    content_type = sniff_content_type(raw[:SNIFF_BYTES])
    if content_type == HL7V2:
        raise UndecodableError("already an HL7 v2 message: send it without --wrap")
    ecg = decode_message(content_type, raw)
    return wrap_document(raw, content_type, ecg, control_id or "W" + uuid.uuid4().hex[:19],
                         now or datetime.now())


def wrap_document(raw: bytes, content_type: str, ecg: Ecg, control_id: str, now: datetime) -> bytes:
    demo = ecg.demographics
    observed = hl7_ts(ecg.acquired_at or now)
    segments = [
        f"MSH|^~\\&|{SENDING_APPLICATION}|WRAP|ECG-GATEWAY|HOSP|{hl7_ts(now)}||ORU^R01^ORU_R01"
        f"|{control_id}|P|2.5.1||||||UNICODE UTF-8",
        _segment("PID", "1", "", escape(demo.patient_id), "",
                 escape_composite(demo.patient_name or ""), "", escape(demo.birth_date),
                 escape(demo.sex)),
    ]
    if demo.location:
        segments.append(_segment("PV1", "1", "U", escape_composite(demo.location)))
    placer, filler = escape(demo.placer_order), escape(demo.filler_order)
    if placer or filler:
        segments.append(_segment("ORC", "RE", placer, filler, "", "CM"))
    segments.append(_segment("OBR", "1", placer, filler, EKG_STUDY, "", "", observed))
    data = base64.b64encode(raw).decode("ascii")
    subtype = _SUBTYPES.get(content_type, "XML")
    segments.append(f"OBX|1|ED|{EKG_STUDY}|1|{SENDING_APPLICATION}^application^{subtype}^Base64^{data}"
                    "||||||F")
    return ("\r".join(segments) + "\r").encode("utf-8")


def _segment(name: str, *fields: str) -> str:
    return "|".join((name, *fields)).rstrip("|")
