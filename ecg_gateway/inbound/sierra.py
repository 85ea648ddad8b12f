"""Philips SierraECG XML (PageWriter, TraceMasterVue, IntelliSpace ECG) -> :class:`Ecg`.

Document types ``SierraECG`` 1.03 and ``PhilipsECG`` 1.04 / 1.04.01 / 1.04.02, UTF-8 or
UTF-16. The rhythm is ``waveforms/parsedwaveforms``: Base64 16-bit samples, usually
XLI-compressed (LZW + second differences, per lead), in which III, aVR, aVL and aVF are stored
as residuals against I and II. ecgdatakit decodes it (:mod:`.datakit`); this module checks the
document first with defusedxml (version, a parsed waveform present) and bounds the XLI
expansion, since 16 MB of LZW can otherwise unpack to gigabytes.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator
from xml.etree.ElementTree import Element

import numpy as np

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound import datakit
from ecg_gateway.inbound.aecg import MAX_SAMPLES, parse_xml

VERSIONS = ("1.03", "1.04", "1.04.01", "1.04.02")
_LZW_BITS, _LZW_MAX_CODE = 10, 1022
_CHUNK_HEADER = 8
_XLI_MAX_CHUNKS = 32  # PageWriters write 16 (12 leads + 4 spare channels)
_SIGNAL = "dataacquisition/signalcharacteristics/"


def decode_sierra(xml: bytes) -> Ecg:
    """Decode the parsed (rhythm) waveform of a SierraECG document to 12 leads in mV."""
    root = parse_xml(xml, "the document")
    if _local(root.tag) != "restingecgdata":
        raise UndecodableError("not a Philips SierraECG restingecgdata document")
    version = _text(root, "documentinfo/documentversion")
    if version not in VERSIONS:
        raise UndecodableError(f"unsupported document version (reads {', '.join(VERSIONS)})")
    parsed = _find(root, "waveforms/parsedwaveforms")
    if parsed is None or not (parsed.text or "").strip():
        raise InvalidEcgError("no parsed waveform", field="parsedwaveforms")
    _check_xli_size(parsed, root)
    from ecgdatakit.parsing.parsers.sierra_xml import SierraXMLParser

    record = datakit.parse_record(SierraXMLParser, xml)
    fs, leads, rows = datakit.standard_rows(record)
    ecg = Ecg(signal=np.stack(rows).astype(np.float32), fs=fs, leads=tuple(leads), source="sierra",
              acquired_at=datakit.acquired_at(record), demographics=datakit.demographics(record))
    return ecg.with_standard_leads()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(el: Element, path: str) -> Element | None:
    """``path`` below ``el`` in whatever namespace the document uses (1.03 and 1.04 differ)."""
    ns = el.tag[:el.tag.index("}") + 1] if el.tag.startswith("{") else ""
    return el.find("/".join(ns + part for part in path.split("/")))


def _text(el: Element, path: str) -> str | None:
    found = _find(el, path)
    return ((found.text or "").strip() or None) if found is not None else None


def _check_xli_size(parsed: Element, root: Element) -> None:
    """Refuse XLI data whose chunks would expand past the declared samples (2 bytes each)."""
    method = (parsed.get("compression") or parsed.get("compressmethod") or "").upper()
    if method != "XLI":
        return
    try:
        rate = float(parsed.get("samplespersecond") or _text(root, _SIGNAL + "samplingrate") or "")
        samples = float(parsed.get("durationperchannel") or "") * rate / 1000
        data = binascii.a2b_base64(parsed.text or "")
    except (ValueError, binascii.Error) as exc:
        raise InvalidEcgError("parsed waveform attributes or Base64 invalid",
                              field="parsedwaveforms") from exc
    if not 0 < samples <= MAX_SAMPLES:
        raise InvalidEcgError(f"{samples:g} samples per lead declared", field="parsedwaveforms")
    budget = 2 * (int(samples) + 2) + 64
    for index, chunk in enumerate(xli_chunks(data)):
        if index >= _XLI_MAX_CHUNKS or _lzw_output_size(chunk, budget) > budget:
            raise InvalidEcgError("XLI data expands past the declared samples",
                                  field="parsedwaveforms")


def xli_chunks(data: bytes) -> Iterator[bytes]:
    """The LZW bodies of XLI data: each after a 4-byte little-endian size and 4 more bytes."""
    offset = 0
    while offset + _CHUNK_HEADER <= len(data):
        size = max(0, int.from_bytes(data[offset:offset + 4], "little", signed=True))
        start = offset + _CHUNK_HEADER
        yield data[start:start + size]
        offset = start + size


def _lzw_output_size(chunk: bytes, budget: int) -> int:
    """Bytes a 10-bit, MSB-first LZW stream decodes to, from string lengths only (stops past
    ``budget``): a 1 KB chunk can otherwise expand to ~1 MB."""
    n_codes = len(chunk) * 8 // _LZW_BITS
    bits = np.unpackbits(np.frombuffer(chunk, dtype=np.uint8))[:n_codes * _LZW_BITS]
    codes = bits.reshape(-1, _LZW_BITS) @ (1 << np.arange(_LZW_BITS - 1, -1, -1))
    lengths = [1] * 256  # the length of each dictionary string, indexed by code
    total = previous = 0
    for code in codes.tolist():
        if code > _LZW_MAX_CODE or total > budget:
            break
        length = lengths[code] if code < len(lengths) else previous + 1
        if previous and len(lengths) <= _LZW_MAX_CODE:
            lengths.append(previous + 1)
        total += length
        previous = length
    return total
