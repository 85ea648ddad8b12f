"""Run an ``ecgdatakit`` parser on bytes and turn its record into :class:`Ecg` rows in mV.

ecgdatakit (Apache-2.0) decodes the Philips SierraECG XML and SCP-ECG waveforms (XLI,
Huffman, reference beats: decisions.md). Its parsers read only from a path, so the bytes go
into an anonymous in-memory file (``memfd``): PHI never touches the disk. Its errors become
ours (the dispatcher prefixes the format it recognised); an unexpected exception from it is
reported by type only, since its text may quote the document.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecg_gateway.ecg import Demographics
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.aecg import FS_RANGE, MAX_SAMPLES
from ecg_gateway.inbound.leads import lead_from_label, unit_to_mv

if TYPE_CHECKING:
    from ecgdatakit import ECGRecord, Lead, Parser

#: ecgdatakit's own format prefix, replaced by the dispatcher's (which names the version)
_LIBRARY_PREFIX = re.compile(r"^(SCP-ECG|Sierra XML|SCP(?= Section)):?\s*")


def parse_record(parser: type[Parser], data: bytes) -> ECGRecord:
    """``parser().parse`` on ``data``, its errors as ours (the dispatcher names the format)."""
    from ecgdatakit import ECGDataKitError, MissingElementError

    try:
        with _as_file(data) as path:
            return parser().parse(path)
    except MissingElementError as exc:
        raise InvalidEcgError(f"missing {exc}", field=str(exc)) from exc
    except ECGDataKitError as exc:
        raise UndecodableError(_LIBRARY_PREFIX.sub("", str(exc))) from exc
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError) as exc:
        raise UndecodableError(f"inconsistent data ({type(exc).__name__})") from exc


@contextmanager
def _as_file(data: bytes) -> Iterator[Path]:
    """A readable path holding ``data``: a memfd on Linux, else a private temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ecg", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as out:
                out.write(data)
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="ecg-") as out:  # pragma: no cover - not Linux
        out.write(data)
        out.flush()
        yield Path(out.name)


def standard_rows(record: ECGRecord) -> tuple[float, list[str], list[np.ndarray]]:
    """Sampling rate, canonical lead names and mV rows of the record's standard leads."""
    leads: list[str] = []
    rows: list[np.ndarray] = []
    rates: set[float] = set()
    for lead in record.leads:
        name = lead_from_label(lead.label)
        if name is None or name in leads:
            continue
        leads.append(name)
        rows.append(_lead_mv(lead))
        rates.add(float(lead.sampling_rate))
    if not leads:
        raise InvalidEcgError("no standard ECG lead", field="leads")
    if len(rates) != 1 or len({r.size for r in rows}) != 1:
        raise InvalidEcgError("leads differ in sampling rate or length", field="leads")
    fs = rates.pop()
    if not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        raise InvalidEcgError(f"sampling frequency {fs:g} Hz out of range", field="fs")
    if not 0 < rows[0].size <= MAX_SAMPLES:
        raise InvalidEcgError(f"{rows[0].size} samples per lead", field="samples")
    return fs, leads, rows


def _lead_mv(lead: Lead) -> np.ndarray:
    scale = 1.0 if not lead.is_raw else lead.resolution
    unit = lead.resolution_unit if lead.is_raw else lead.units
    factor = unit_to_mv(unit or "")
    if factor is None or scale == 0 or not np.isfinite(scale):
        raise InvalidEcgError(f"lead {lead.label} has no voltage scale", field="resolution")
    offset = lead.offset if lead.is_raw else 0.0
    return (np.asarray(lead.samples, dtype=np.float64) * scale + offset) * factor


def demographics(record: ECGRecord, *, placer_order: str | None = None) -> Demographics:
    """Patient identifiers of the record (PHI: stored, never logged)."""
    p = record.patient
    name = "^".join(part for part in (p.last_name, p.first_name) if part) or None
    birth = p.birth_date.strftime("%Y%m%d") if isinstance(p.birth_date, datetime) else None
    return Demographics(patient_id=p.patient_id or None, patient_name=name, birth_date=birth,
                        sex=p.sex if p.sex in ("M", "F") else None,
                        location=record.recording.location or None, placer_order=placer_order)


def acquired_at(record: ECGRecord) -> datetime | None:
    """Acquisition time as a naive local datetime, like the other decoders give it."""
    when = record.recording.date
    return when.replace(tzinfo=None) if isinstance(when, datetime) else None
