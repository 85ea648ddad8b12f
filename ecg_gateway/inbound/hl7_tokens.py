"""A fast, escape-correct HL7 v2 tokenizer: header, segments, fields, numeric arrays.

hl7apy parses a 150 KB waveform ORU in ~1.7 s; inbound messages are tokenized here
instead: split on the message's own delimiters first, unescape leaf values afterwards
(``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\``), and parse NM arrays with vectorised numpy.
The text is decoded by MSH-18 (ASCII, 8859/n, UTF-8; UTF-8 when MSH-18 is empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ecg_gateway.errors import InvalidEcgError, UndecodableError


@dataclass(frozen=True, slots=True)
class ErrLocation:
    """An HL7 ERL: segment id, occurrence (1-based), field, component (None = not known)."""

    segment: str
    sequence: int | None = None
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        text = self.segment + (f"[{self.sequence}]" if self.sequence else "")
        return text + (f"-{self.field}" if self.field else "") + (f".{self.component}" if self.component else "")


class Hl7HeaderError(UndecodableError):
    """MSH missing or unreadable (answered AR): ``code`` is the table 0357 error code."""

    def __init__(self, message: str, code: int, location: ErrLocation) -> None:
        super().__init__(message)
        self.code = code
        self.location = location


class Hl7EncodingError(UndecodableError):
    """Bytes that MSH-18's character set cannot decode, or an unknown MSH-18 (answered AE)."""

    def __init__(self, message: str, code: int = 102) -> None:
        super().__init__(message)
        self.code = code
        self.location = ErrLocation("MSH", 1, 18)


class Hl7ContentError(InvalidEcgError):
    """The message decoded but its ECG content is wrong (answered AE at ``location``)."""

    def __init__(self, message: str, location: ErrLocation, code: int = 102) -> None:
        super().__init__(message, field=f"{location.segment}-{location.field}" if location.field
                         else location.segment)
        self.code = code
        self.location = location


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""  # v2.7+ senders add a fifth character (usually #)

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


_CHARSETS = {
    "": "utf-8", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "UTF8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """MSH fields the receiver needs; ``raw`` keeps MSH-3..6 escaped, to echo in the ACK."""

    encoding: Encoding
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    trigger_event: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str
    application_ack_type: str
    charset: str
    raw: dict[int, str] = field(default_factory=dict)

    @property
    def enhanced_mode(self) -> bool:
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def codec(self) -> str:
        """Python codec for MSH-18; raises Hl7EncodingError for a set we do not support."""
        name = _CHARSETS.get(self.charset.upper())
        if name is None:
            raise Hl7EncodingError("unsupported character set in MSH-18", code=103)
        return name


@dataclass(slots=True)
class Segment:
    """One segment: ``fields[n]`` is field n (for MSH, ``fields[1]`` is MSH-1, the separator)."""

    id: str
    fields: list[str]
    sequence: int  # occurrence of this segment id in the message, 1-based

    def get(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""


def _strip_payload(raw: bytes) -> bytes:
    return raw.lstrip(b"\xef\xbb\xbf\r\n\t ")


def parse_header(raw: bytes) -> MessageHeader:
    """Read MSH without decoding the rest. Raises Hl7HeaderError (AR 100/102/101)."""
    data = _strip_payload(raw)
    if not data.startswith(b"MSH") or len(data) < 8:
        raise Hl7HeaderError("message does not start with an MSH segment", 100, ErrLocation("MSH"))
    end = min((i for i in (data.find(b"\r"), data.find(b"\n")) if i >= 0), default=len(data))
    line = data[:end].decode("latin-1")  # MSH is ASCII; latin-1 maps every byte 1:1
    if len(line) < 8:  # "MSH|^~\&" at least (fuzzing found "MSH\r…")
        raise Hl7HeaderError("MSH segment is incomplete", 100, ErrLocation("MSH"))
    sep = line[3]
    if sep.isalnum() or sep.isspace():
        raise Hl7HeaderError("invalid field separator", 102, ErrLocation("MSH", 1, 1))
    parts = line.split(sep)
    chars = parts[1]
    if (len(chars) not in (4, 5) or len(set(chars)) != len(chars) or sep in chars
            or any(c.isalnum() or c.isspace() for c in chars)):
        raise Hl7HeaderError("invalid encoding characters", 102, ErrLocation("MSH", 1, 2))
    enc = Encoding(sep, chars[0], chars[1], chars[2], chars[3], chars[4:])

    def msh(n: int) -> str:  # MSH-n lives at parts[n - 1]
        return parts[n - 1] if n - 1 < len(parts) else ""

    def comp(text: str, i: int) -> str:
        pieces = text.split(enc.repetition)[0].split(enc.component)
        return unescape(pieces[i - 1], enc) if i <= len(pieces) else ""

    control_id = unescape(msh(10), enc).strip()
    if not control_id:
        raise Hl7HeaderError("message control id (MSH-10) is empty", 101, ErrLocation("MSH", 1, 10))
    return MessageHeader(
        encoding=enc, sending_application=comp(msh(3), 1), sending_facility=comp(msh(4), 1),
        receiving_application=comp(msh(5), 1), receiving_facility=comp(msh(6), 1),
        message_type=comp(msh(9), 1).upper(), trigger_event=comp(msh(9), 2).upper(),
        control_id=control_id, processing_id=comp(msh(11), 1).upper(), version=comp(msh(12), 1),
        accept_ack_type=comp(msh(15), 1).upper(), application_ack_type=comp(msh(16), 1).upper(),
        charset=comp(msh(18), 1).strip(), raw={n: msh(n) for n in (3, 4, 5, 6)},
    )


def decode_text(raw: bytes, header: MessageHeader) -> str:
    """The whole message as text in MSH-18's character set (Hl7EncodingError otherwise)."""
    try:
        return _strip_payload(raw).decode(header.codec)
    except UnicodeDecodeError as exc:
        raise Hl7EncodingError("message bytes do not match the character set in MSH-18") from exc


def split_segments(text: str, enc: Encoding) -> list[Segment]:
    """Split on CR (also LF or CRLF, which real senders use) and then on the field separator."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for line in text.split("\r"):
        if not line.strip():
            continue
        parts = line.split(enc.field)
        seg_id = parts[0].strip().upper()
        if seg_id == "MSH":
            parts.insert(1, enc.field)  # so that fields[n] is MSH-n
        counts[seg_id] = counts.get(seg_id, 0) + 1
        segments.append(Segment(seg_id, parts, counts[seg_id]))
    return segments


_ESCAPES: dict[Encoding, re.Pattern[str]] = {}


def unescape(value: str, enc: Encoding) -> str:
    """Replace HL7 escape sequences; formatting escapes (\\H\\, \\N\\, \\.br\\) are dropped."""
    if enc.escape not in value:
        return value
    pattern = _ESCAPES.get(enc)
    if pattern is None:
        e = re.escape(enc.escape)
        pattern = _ESCAPES[enc] = re.compile(f"{e}([^{e}]*){e}")
    singles = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition,
               "E": enc.escape, "P": enc.truncation}

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in singles:
            return singles[body]
        if body[:1] == "X" and len(body) % 2 == 1:
            try:
                return bytes.fromhex(body[1:]).decode("latin-1")
            except ValueError:
                return match.group(0)
        if body == ".br":
            return "\n"
        return ""

    return pattern.sub(replace, value)


def component(value: str, enc: Encoding, index: int, sub: int | None = None) -> str:
    """Component ``index`` (1-based) of the first repetition, unescaped; optional subcomponent."""
    parts = value.split(enc.repetition, 1)[0].split(enc.component)
    text = parts[index - 1] if index <= len(parts) else ""
    if sub is not None:
        subs = text.split(enc.subcomponent)
        text = subs[sub - 1] if sub <= len(subs) else ""
    return unescape(text, enc)


# --- numeric arrays (NM grammar: optional sign, digits, optional decimal point) ---------

_NM = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def parse_nm(text: str) -> float:
    """One HL7 NM value (sign, digits, optional point); ValueError for anything else."""
    if not _NM.fullmatch(text):
        raise ValueError("not an HL7 NM value")
    value = float(text)
    if not np.isfinite(value):
        raise ValueError("number out of range")
    return value


_NM_CHARS = np.zeros(256, dtype=bool)
_NM_CHARS[np.frombuffer(b"0123456789+-.", dtype=np.uint8)] = True
_POW10 = 10.0 ** np.arange(16)
_ZERO, _PLUS, _MINUS, _DOT = 48, 43, 45, 46


def parse_numbers(text: str, seps: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse NM values separated by any char in ``seps`` (HL7 NM: sign, digits, point).

    Returns the values (float64) and, for every separator in order, the index into ``seps``
    of that separator (so callers can check the repetition structure of an MA array).
    Raises ValueError for anything that is not HL7 NM: exponents, NaN, inf, blanks, empty
    values, misplaced signs. Integer arrays (what carts send) take a vectorised path.
    """
    try:
        data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as exc:
        raise ValueError("non-ASCII characters in a numeric array") from exc
    allowed = _NM_CHARS.copy()
    is_sep = np.zeros(data.size, dtype=bool)
    for ch in seps:
        allowed[ord(ch)] = True
        is_sep |= data == ord(ch)
    if data.size == 0 or not allowed[data].all():
        raise ValueError("invalid character in a numeric array")
    sep_idx = np.flatnonzero(is_sep)
    kinds = np.zeros(sep_idx.size, dtype=np.int8)
    for k, ch in enumerate(seps[1:], start=1):
        kinds[data[sep_idx] == ord(ch)] = k
    starts = np.concatenate(([0], sep_idx + 1))
    ends = np.concatenate((sep_idx, [data.size]))
    lengths = ends - starts
    if (lengths <= 0).any():
        raise ValueError("empty value in a numeric array")
    if lengths.max() <= 15 and not (data == _DOT).any():
        values = _integers(data, sep_idx, starts, ends, lengths)
    else:
        for ch in seps[1:]:
            text = text.replace(ch, seps[0])
        tokens = text.split(seps[0])  # float() rejects "1.2.3", "+-1", "-", "."
        values = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    if not np.isfinite(values).all():
        raise ValueError("number out of range")
    return values, kinds


def _integers(data: np.ndarray, sep_idx: np.ndarray, starts: np.ndarray, ends: np.ndarray,
              lengths: np.ndarray) -> np.ndarray:
    """Signed integer tokens of at most 15 digits, right-aligned into a [tokens, width] grid."""
    first = data[starts]
    negative = first == _MINUS
    signed = negative | (first == _PLUS)
    if (lengths - signed < 1).any():
        raise ValueError("sign without digits")
    digits = data.copy()
    digits[starts[signed]] = _ZERO
    digits[sep_idx] = _ZERO
    width = int(lengths.max())
    ends32 = ends.astype(np.int32)  # int32 index grids are twice as fast to build as int64
    index = ends32[:, None] + np.arange(-width, 0, dtype=np.int32)
    grid = np.where(index >= starts.astype(np.int32)[:, None], digits[np.maximum(index, 0)],
                    np.uint8(_ZERO)) - np.uint8(_ZERO)
    if (grid > 9).any():  # uint8 arithmetic: a sign or separator left over wraps above 9
        raise ValueError("sign inside a number")
    values = grid.astype(np.float64) @ _POW10[width - 1::-1]
    values[negative] *= -1.0
    return values
