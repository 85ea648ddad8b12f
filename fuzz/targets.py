"""Fuzz targets: the MLLP framer, the HL7 v2 decoder and the DICOM decoder (reliability.md §3).

Each ``TestOneInput(data)`` takes any bytes and fails (raises) only on a real bug:

* ``mllp``: the bytes are cut into chunks (sizes read from the input itself) and fed to
  :class:`MllpDecoder`; the frames must equal those of feeding everything at once, the
  held bytes must stay under the cap, and no frame may contain a start or end byte.
* ``hl7``: header parse + full decode, as the receiver runs them; only our validation errors
  (which become AE/AR answers) may come out. Anything else is a decoder bug (it would be AR 207).
* ``dicom``: ``decode_dicom_bytes``; only UndecodableError / InvalidEcgError may come out.

Used by the atheris harnesses (``fuzz/fuzz_*.py``) and by tests/integration/test_fuzz_harness.py.
"""

from __future__ import annotations

import contextlib
import warnings

from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.mllp import FrameTooLarge, MllpDecoder

FRAME_CAP = 4096


def mllp(data: bytes) -> None:
    if not data:
        return
    sizes, body = data[:8], data[8:]
    whole = MllpDecoder(FRAME_CAP).feed(body)
    chunked, decoder, pos, i = [], MllpDecoder(FRAME_CAP), 0, 0
    while pos < len(body):
        step = 1 + sizes[i % len(sizes)] % 64
        chunked += decoder.feed(body[pos:pos + step])
        assert decoder.pending_bytes <= FRAME_CAP
        pos, i = pos + step, i + 1
    assert chunked == whole, "chunking changed the frames"
    for item in whole:
        if isinstance(item, FrameTooLarge):
            assert item.size > FRAME_CAP and len(item.head) <= 4096
        else:
            assert len(item) <= FRAME_CAP and b"\x0b" not in item and b"\x1c" not in item


def hl7(data: bytes) -> None:
    from ecg_gateway.inbound.hl7 import Hl7Message, decode_parsed
    from ecg_gateway.inbound.hl7_tokens import decode_text, parse_header, split_segments

    try:
        header = parse_header(data)
        decode_parsed(Hl7Message(header, split_segments(decode_text(data, header), header.encoding)))
    except (UndecodableError, InvalidEcgError):
        pass


def dicom(data: bytes) -> None:
    from ecg_gateway.inbound.dicom import decode_dicom_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(UndecodableError, InvalidEcgError):
            decode_dicom_bytes(data, accept_hemodynamic=True)


TARGETS = {"mllp": mllp, "hl7": hl7, "dicom": dicom}
