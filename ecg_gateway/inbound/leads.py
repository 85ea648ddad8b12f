"""Lead names and voltage units as the text-based formats (HL7 v2, aECG, MUSE) spell them.

DICOM has coded lead identities; the other formats use labels such as ``I``, ``Lead II``,
``aVR``, ``AVR``, ``MDC_ECG_LEAD_AVR`` or ``V1``. Everything maps to the names in
:data:`ecg_gateway.ecg.STANDARD_LEADS`; leads we do not use (V7, X/Y/Z, ...) map to None.
"""

from __future__ import annotations

import re

from ecg_gateway.ecg import STANDARD_LEADS

_LABEL = re.compile(r"^(?:MDC_ECG_LEAD_|LEAD[\s_-]*)?(III|II|I|AVR|AVL|AVF|V[1-6])$", re.IGNORECASE)
_CANONICAL = {name.upper(): name for name in STANDARD_LEADS}

#: Factor to millivolts, keyed by the unit spellings seen in HL7 CSU, UCUM, aECG and MUSE.
UNIT_TO_MV: dict[str, float] = {
    "nv": 1e-6, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "v": 1e3, "volt": 1e3, "volts": 1e3,
}


def lead_from_label(text: str) -> str | None:
    """Canonical lead name for a label, or None when it is not one of the 12 standard leads."""
    match = _LABEL.match(text.strip())
    return _CANONICAL[match.group(1).upper()] if match else None


def unit_to_mv(unit: str) -> float | None:
    """Millivolts per ``unit`` (case-insensitive), or None when it is not a voltage unit."""
    return UNIT_TO_MV.get(unit.strip().lower()) if unit else None
