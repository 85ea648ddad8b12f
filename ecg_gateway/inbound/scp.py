"""SCP-ECG (EN 1064 / ISO 11073-91064) records -> :class:`Ecg`.

A record is a CRC and a size, then sections, each with a 16-byte header; section 0 points to
the others. Section 3 defines the leads (codes 1 I, 2 II, 3-8 V1-V6, 61-64 III/aVR/aVL/aVF),
section 6 holds the rhythm (Huffman-coded with the default or section 2's tables, as first or
second differences), and with reference-beat subtraction sections 4 and 5 give the median
beat to add back. ecgdatakit decodes all of that (:mod:`.datakit`); this module recognises
the record, bounds what section 3 declares before anything is allocated, and refuses a
record whose CRCs do not match: a corrupted ECG is answered, never triaged.
"""

from __future__ import annotations

import functools
import struct
import warnings

import numpy as np

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound import datakit
from ecg_gateway.inbound.aecg import MAX_SAMPLES

_SECTION_HEADER = 16
_POINTERS_AT = 6 + _SECTION_HEADER


def looks_like_scp(head: bytes) -> bool:
    """True when ``head`` starts like an SCP-ECG record: section 0 at byte 7, pointing to itself."""
    if len(head) < _POINTERS_AT + 10:
        return False
    sec0_id, sec0_len = struct.unpack_from("<HI", head, 8)
    first_id, _, first_index = struct.unpack_from("<HII", head, _POINTERS_AT)
    return bool(sec0_id == 0 and sec0_len >= _SECTION_HEADER + 10 and first_id == 0 and first_index == 7)


def protocol_version(data: bytes) -> str | None:
    """'2.0': the protocol version in section 0's header, None when unset."""
    version = data[15] if len(data) > 15 else 0
    return f"{version / 10:.1f}" if version else None


def decode_scp(data: bytes) -> Ecg:
    """Decode the rhythm data of an SCP-ECG record to the 12 standard leads in mV."""
    if not looks_like_scp(data):
        raise UndecodableError("not an SCP-ECG record (no section 0 at byte 7)")
    _check_declared_samples(data)
    from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser

    _quiet_checksum_warnings()
    record = datakit.parse_record(SCPECGParser, data)
    if record.raw_metadata.get("checksum_valid") is False:
        raise UndecodableError("CRC mismatch, the record is corrupted")
    fs, leads, rows = datakit.standard_rows(record)
    ecg = Ecg(signal=np.stack(rows).astype(np.float32), fs=fs, leads=tuple(leads), source="scp",
              acquired_at=datakit.acquired_at(record), demographics=datakit.demographics(record))
    return ecg.with_standard_leads()


@functools.cache
def _quiet_checksum_warnings() -> None:
    """ecgdatakit warns about a CRC mismatch; we answer it as an error instead (once, since
    the warning filters are process-wide)."""
    from ecgdatakit import ChecksumWarning

    warnings.filterwarnings("ignore", category=ChecksumWarning)


def _check_declared_samples(data: bytes) -> None:
    """Section 3's sample ranges, bounded before the decoder sizes arrays from them."""
    body = _section_body(data, 3)
    if body is None or len(body) < 2:
        raise InvalidEcgError("no lead definition (section 3)", field="section 3")
    for i in range(min(body[0], (len(body) - 2) // 9)):
        start, end = struct.unpack_from("<II", body, 2 + 9 * i)
        if not 1 <= start <= end or end - start + 1 > MAX_SAMPLES:
            raise InvalidEcgError(f"lead {i + 1} declares samples {start}-{end}",
                                  field="section 3")


def _section_body(data: bytes, section: int) -> bytes | None:
    """The bytes after the 16-byte header of ``section``, found through section 0's pointers."""
    sec0_end = 6 + struct.unpack_from("<I", data, 10)[0]
    for pos in range(_POINTERS_AT, min(sec0_end, len(data)) - 9, 10):
        sid, length, index = struct.unpack_from("<HII", data, pos)
        if sid == section and length >= _SECTION_HEADER and index >= 1:
            return data[index - 1 + _SECTION_HEADER:index - 1 + length]
    return None
