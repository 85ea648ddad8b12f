"""Write SCP-ECG records for tests (EN 1064 layout, CRC-CCITT on the record and each section).

``scp_record`` encodes integer samples (units of ``avm_nv``) as section 6, either raw 16-bit
or Huffman-coded with :data:`CUSTOM_TABLE` (section 2), as amplitudes or first/second
differences, optionally with reference-beat subtraction (sections 4 and 5): the encodings the
real sample file does not use, so the decoder can be checked on them against known samples.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

import numpy as np

#: (value, prefix bits as sent, extra bits): 0, +-1, +-2 short; anything else as 16 bits.
CUSTOM_TABLE = [(0, "0", 0), (1, "10", 0), (-1, "110", 0), (2, "1110", 0), (-2, "11110", 0),
                (0, "11111", 16)]
LEAD_CODES = {"I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
              "III": 61, "aVR": 62, "aVL": 63, "aVF": 64}


@dataclass(frozen=True)
class ReferenceBeat:
    """A median beat (``[leads, n]``) subtracted around each QRS fiducial (1-based samples)."""

    beat: np.ndarray
    fiducial: int
    qrs: list[tuple[int, int, int]]  # (start, fiducial, end) in the rhythm, 1-based


def section(sid: int, body: bytes) -> bytes:
    body += b"\x00" * (len(body) % 2)
    content = struct.pack("<HI", sid, 16 + len(body)) + bytes([20, 20]) + b"SCPECG" + body
    return struct.pack("<H", binascii.crc_hqx(content, 0xFFFF)) + content


def scp_record(samples: np.ndarray, leads: tuple[str, ...], *, fs: int = 500, avm_nv: int = 2500,
               diff: int = 2, huffman: bool = True, reference: ReferenceBeat | None = None,
               bimodal: bool = False, patient_id: str = "SCP-TEST-1",
               declared_samples: int | None = None) -> bytes:
    ints = np.asarray(samples, dtype=np.int64)
    interval = 1_000_000 // fs
    sections = {1: _section1(patient_id),
                3: _section3(declared_samples or ints.shape[1], leads, reference is not None)}
    if huffman:
        sections[2] = _section2()
    rhythm = ints.copy()
    if reference is not None:
        sections[4] = _section4(reference, interval)
        sections[5] = _waveform(reference.beat, avm_nv, interval, diff, huffman, flag=0)
        rhythm = _subtract(rhythm, reference)
    sections[6] = _waveform(rhythm, avm_nv, interval, diff, huffman, flag=int(bimodal))
    return _assemble(sections)


def _assemble(bodies: dict[int, bytes]) -> bytes:
    encoded = {sid: section(sid, body) for sid, body in bodies.items()}
    sec0_length = 16 + 12 * 10
    index, pointers = 7 + sec0_length, [struct.pack("<HII", 0, sec0_length, 7)]
    for sid in range(1, 12):
        data = encoded.get(sid, b"")
        pointers.append(struct.pack("<HII", sid, len(data), index if data else 0))
        index += len(data)
    body = section(0, b"".join(pointers)) + b"".join(encoded[sid] for sid in sorted(encoded))
    size = 6 + len(body)
    rest = struct.pack("<I", size) + body
    return struct.pack("<H", binascii.crc_hqx(rest, 0xFFFF)) + rest


def _section1(patient_id: str) -> bytes:
    def tag(number: int, value: bytes) -> bytes:
        return struct.pack("<BH", number, len(value)) + value

    return (tag(0, b"TEST\x00") + tag(2, patient_id.encode() + b"\x00")
            + tag(25, struct.pack("<HBB", 2024, 3, 5)) + tag(26, bytes([14, 30, 0]))
            + tag(255, b""))


def _section2() -> bytes:
    out = struct.pack("<HH", 1, len(CUSTOM_TABLE))
    for value, prefix, extra in CUSTOM_TABLE:
        stored = int(prefix[::-1], 2)  # first bit sent is stored in the least significant bit
        out += struct.pack("<BBBhI", len(prefix), len(prefix) + extra, 1, value, stored)
    return out


def _section3(n: int, leads: tuple[str, ...], subtraction: bool) -> bytes:
    flags = int(subtraction) | 0x04 | (len(leads) << 3)
    return bytes([len(leads), flags]) + b"".join(
        struct.pack("<IIB", 1, n, LEAD_CODES[name]) for name in leads)


def _section4(ref: ReferenceBeat, interval: int) -> bytes:
    length_ms = ref.beat.shape[1] * interval // 1000
    out = struct.pack("<HHH", length_ms, ref.fiducial, len(ref.qrs))
    out += b"".join(struct.pack("<HIII", 0, start, fid, end) for start, fid, end in ref.qrs)
    return out + b"".join(struct.pack("<II", start, end) for start, _, end in ref.qrs)


def _subtract(rhythm: np.ndarray, ref: ReferenceBeat) -> np.ndarray:
    for start, fid, end in ref.qrs:
        for s in range(start, end + 1):  # s is a 1-based rhythm sample
            b = s - fid + ref.fiducial - 1
            if 0 <= b < ref.beat.shape[1]:
                rhythm[:, s - 1] -= ref.beat[:, b]
    return rhythm


def _waveform(ints: np.ndarray, avm: int, interval: int, diff: int, huffman: bool, flag: int) -> bytes:
    coded = [_encode(_differences(row, diff), huffman) for row in ints]
    head = struct.pack("<HHBB", avm, interval, diff, flag)
    return head + b"".join(struct.pack("<H", len(c)) for c in coded) + b"".join(coded)


def _differences(x: np.ndarray, mode: int) -> np.ndarray:
    d = x.copy()
    if mode == 1:
        d[1:] = x[1:] - x[:-1]
    elif mode == 2:
        d[2:] = x[2:] - 2 * x[1:-1] + x[:-2]
    return d


def _encode(values: np.ndarray, huffman: bool) -> bytes:
    if not huffman:
        return values.astype("<i2").tobytes()
    short = {value: prefix for value, prefix, extra in CUSTOM_TABLE if not extra}
    escape = CUSTOM_TABLE[-1][1]
    bits = "".join(short.get(v) or escape + format(v & 0xFFFF, "016b") for v in values.tolist())
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
