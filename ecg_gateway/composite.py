"""How a composite identifier (XPN name, CX patient id, PL location) is kept in one string.

:class:`~ecg_gateway.ecg.Demographics` holds composites as text: components joined by
``^``, subcomponents by ``&``, and a ``^``, ``&`` or ``\\`` that is *data* written as the
HL7 escapes ``\\S\\``, ``\\T\\``, ``\\E\\``. So ``O'NEIL^ANN^M\\S\\X`` keeps "M^X" as one
middle name, whatever delimiters the inbound message used, and the ORU writes each part
back escaped (oru.py). Rows stored before this convention (plain ``^``-joined) read the same.
"""

from __future__ import annotations

import re

_DATA = {"^": "\\S\\", "&": "\\T\\", "\\": "\\E\\"}
_TABLE = str.maketrans(_DATA)
_UNESCAPE = re.compile(r"\\([STE])\\")
_CHARS = {"S": "^", "T": "&", "E": "\\"}


def join(components: list[list[str]]) -> str | None:
    """Components (each a list of subcomponents, as plain text) -> the stored string;
    trailing empty parts are dropped, and an all-empty composite is ``None``."""
    text = "^".join("&".join(sub.translate(_TABLE) for sub in comp).rstrip("&")
                    for comp in components).rstrip("^")
    return text if text.strip() else None


def single(value: str | None) -> str | None:
    """One plain value (e.g. a DICOM Patient ID) as a one-component composite."""
    return join([[value]]) if value else None


def split(text: str) -> list[list[str]]:
    """The stored string -> components of plain-text subcomponents."""
    return [[_UNESCAPE.sub(lambda m: _CHARS[m.group(1)], sub) for sub in comp.split("&")]
            for comp in text.split("^")]


def first(text: str | None) -> str:
    """The first component as plain text (e.g. the id itself of a CX patient identifier)."""
    return "&".join(split(text)[0]) if text else ""
