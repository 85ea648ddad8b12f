"""The single-document ECG formats: recognise one by content, name it, decode it.

:func:`sniff` recognises a format by content (XML by its root element, in UTF-8 or UTF-16),
:func:`decode_document` runs its decoder and prefixes every error with what it found
("Philips SierraECG 1.04: no parsed waveform"), and :func:`identify` names anything else
("a PDF document"). HL7 v2 is recognised here but decoded by inbound/hl7.py, which embeds
these documents (OBX ED); decode.py dispatches over both, so neither imports the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import InvalidEcgError, UndecodableError

DICOM = "application/dicom"
HL7V2 = "application/hl7-v2"
AECG = "application/x-hl7-aecg+xml"
MUSE = "application/x-ge-muse+xml"
SIERRA = "application/x-philips-sierraecg+xml"
SCP = "application/x-scp-ecg"

#: What each content type is called in errors and docs.
LABELS = {DICOM: "DICOM ECG", HL7V2: "HL7 v2 message", AECG: "HL7 aECG", MUSE: "GE MUSE XML",
          SIERRA: "Philips SierraECG", SCP: "SCP-ECG"}
EXPECTED = "DICOM, HL7 v2, HL7 aECG, GE MUSE XML, Philips SierraECG XML, SCP-ECG or WFDB .hea"
SNIFF_BYTES = 4096

_XML_ROOTS = {"annotatedecg": AECG, "restingecg": MUSE, "restingecgdata": SIERRA}
_PROLOG = re.compile(r"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", re.S)
_ROOT = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")
_SIERRA_VERSION = re.compile(r"<(?:\w+:)?documentversion>\s*([^<\s]{1,16})\s*<")


def _decoder(content_type: str, accept_hemodynamic: bool) -> Callable[[bytes], Ecg]:
    if content_type == DICOM:
        from ecg_gateway.inbound.dicom import decode_dicom_bytes

        return lambda raw: decode_dicom_bytes(raw, accept_hemodynamic=accept_hemodynamic)
    if content_type == AECG:
        from ecg_gateway.inbound.aecg import decode_aecg

        return decode_aecg
    if content_type == MUSE:
        from ecg_gateway.inbound.muse import decode_muse

        return decode_muse
    if content_type == SIERRA:
        from ecg_gateway.inbound.sierra import decode_sierra

        return decode_sierra
    if content_type == SCP:
        from ecg_gateway.inbound.scp import decode_scp

        return decode_scp
    raise UndecodableError(f"unknown content type {content_type!r}")


def decode_document(content_type: str, raw: bytes, *, accept_hemodynamic: bool = True) -> Ecg:
    """Decode one document (not HL7 v2); errors start with the format found. Stored bytes were
    validated at receipt, so the lenient switch (Hemodynamic class) is on by default."""
    decoder = _decoder(content_type, accept_hemodynamic)
    try:
        return decoder(raw)
    except InvalidEcgError as exc:
        raise InvalidEcgError(f"{describe(content_type, raw)}: {exc}", field=exc.field) from exc
    except UndecodableError as exc:
        raise UndecodableError(f"{describe(content_type, raw)}: {exc}") from exc


def describe(content_type: str, raw: bytes) -> str:
    """The format's name, with its version where the format states one cheaply."""
    label = LABELS.get(content_type, content_type)
    if content_type == SIERRA:
        found = _SIERRA_VERSION.search(xml_text(raw[:SNIFF_BYTES]) or "")
        return f"{label} {found.group(1)}" if found else f"{label} XML"
    if content_type == SCP:
        from ecg_gateway.inbound.scp import protocol_version

        version = protocol_version(raw)
        return f"{label} {version}" if version else label
    return label


def sniff(head: bytes) -> str | None:
    """The content type of a file or ED payload from its first bytes, or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    if head.lstrip(b"\xef\xbb\xbf\x0b \r\n\t").startswith(b"MSH"):
        return HL7V2
    root = xml_root(head)
    if root is not None:
        return _XML_ROOTS.get(root.lower())
    from ecg_gateway.inbound.scp import looks_like_scp

    return SCP if looks_like_scp(head) else None


def sniff_content_type(head: bytes) -> str:
    """Like :func:`sniff`, but an unknown format is an error that says what it is instead."""
    found = sniff(head)
    if found is None:
        raise UndecodableError(f"unrecognised file format: {identify(head)} (expected {EXPECTED})")
    return found


def identify(head: bytes) -> str:
    """A short description of any bytes, for errors about payloads that are not ECGs."""
    found = sniff(head)
    if found is not None:
        return describe(found, head)
    if head.startswith(b"%PDF"):
        return "a PDF document"
    root = xml_root(head)
    if root is not None:
        return f"an XML document <{root}>"
    if not head:
        return "empty data"
    return "binary data" if b"\x00" in head[:512] else "text"


def xml_text(head: bytes) -> str | None:
    """``head`` decoded as the start of an XML document (UTF-8, or UTF-16 by BOM or by the
    zero bytes around '<'), or None when it does not start with markup."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head[:len(head) // 2 * 2].decode("utf-16", "ignore")
    elif head.startswith(b"<\x00"):
        text = head[:len(head) // 2 * 2].decode("utf-16-le", "ignore")
    elif head.startswith(b"\x00<"):
        text = head[:len(head) // 2 * 2].decode("utf-16-be", "ignore")
    else:
        text = head.decode("utf-8", "ignore")
    text = text.lstrip("\ufeff \r\n\t")
    return text if text.startswith("<") else None


def xml_root(head: bytes) -> str | None:
    """The root element's local name (prolog, comments and DOCTYPE skipped), or None."""
    text = xml_text(head)
    if text is None:
        return None
    found = _ROOT.match(_PROLOG.sub("", text).lstrip())
    return found.group(1) if found else None
