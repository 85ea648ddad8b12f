"""WFDB records (PhysioNet) -> :class:`Ecg`, for training and offline evaluation.

Two flavours occur in our data:

* PTB-XL: ``.hea`` + ``.dat`` read through the ``wfdb`` package (format 516 = FLAC needs
  ``soundfile``; the 68 original 12-lead records are plain format 16).
* PhysioNet/CinC 2021: ``.hea`` + MATLAB v4 ``.mat`` (variable ``val``). Georgia headers name
  the record ``E00271.mat`` on their first line, which ``wfdb.rdheader`` rejects, so these
  headers are parsed here, as the Challenge's own code does.

``wfdb`` (a core dependency, so `ecg-gateway triage x.hea` works after a plain install) is
imported lazily: the daemon never needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecg_gateway.ecg import STANDARD_LEADS, Demographics, Ecg
from ecg_gateway.errors import InvalidEcgError, UndecodableError

_CANONICAL = {name.upper(): name for name in STANDARD_LEADS}
_GAIN = re.compile(r"^(?P<gain>[-+0-9.eE]+)(?:\((?P<baseline>-?\d+)\))?(?:/(?P<units>\S+))?$")
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}


@dataclass(frozen=True, slots=True)
class _Channel:
    file: str
    gain: float
    baseline: int
    units: str
    name: str


@dataclass(frozen=True, slots=True)
class _Header:
    record: str
    n_sig: int
    fs: float
    n_samples: int
    channels: tuple[_Channel, ...]
    comments: tuple[str, ...]


def lead_name(raw: str) -> str:
    """Canonical lead name ('AVR' -> 'aVR'); other names pass through unchanged."""
    return _CANONICAL.get(raw.strip().upper(), raw.strip())


def read_wfdb(path: str | Path) -> Ecg:
    """Read one WFDB record given as ``path/to/rec`` or ``path/to/rec.hea``.

    Raises UndecodableError for a missing/garbled header or signal file and
    InvalidEcgError for a record whose contents are unusable (no leads, bad gain).
    """
    path = Path(path)
    hea = path if path.suffix == ".hea" else path.with_name(path.name + ".hea")
    try:
        text = hea.read_text(encoding="latin-1")
    except OSError as exc:
        raise UndecodableError(f"cannot read WFDB header {hea.name}: {exc.strerror}") from exc
    header = _parse_header(text, hea.name)
    files = {ch.file for ch in header.channels}
    if all(f.lower().endswith(".mat") for f in files):
        digital = _read_mat(hea.parent, files)
    else:
        digital = _read_with_wfdb(hea.with_suffix(""))
    if digital.shape[0] != header.n_sig:
        raise InvalidEcgError(f"{hea.name}: {digital.shape[0]} signals, header says {header.n_sig}")
    signal = np.empty(digital.shape, dtype=np.float32)
    for i, ch in enumerate(header.channels):
        scale = _UNIT_TO_MV.get(ch.units.lower())
        if scale is None or ch.gain == 0:
            raise InvalidEcgError(f"{hea.name}: unusable gain/units for lead {ch.name}", field="gain")
        signal[i] = (digital[i].astype(np.float64) - ch.baseline) / ch.gain * scale
    return Ecg(signal=signal, fs=header.fs, leads=tuple(ch.name for ch in header.channels),
               source="wfdb", uid=header.record, demographics=_demographics(header.comments))


def header_comments(path: str | Path) -> dict[str, str]:
    """``#Key: value`` comment lines of a header (CinC labels live in ``#Dx``)."""
    path = Path(path)
    hea = path if path.suffix == ".hea" else path.with_name(path.name + ".hea")
    out: dict[str, str] = {}
    for line in hea.read_text(encoding="latin-1").splitlines():
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            out[key.strip()] = value.strip()
    return out


def _parse_header(text: str, name: str) -> _Header:
    lines = [ln.strip() for ln in text.splitlines()]
    comments = tuple(ln[1:].strip() for ln in lines if ln.startswith("#"))
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise UndecodableError(f"{name}: empty WFDB header")
    rec = body[0].split()
    try:
        record = rec[0].split("/")[0]
        record = record[:-4] if record.lower().endswith(".mat") else record
        n_sig = int(rec[1])
        fs = float(rec[2].split("/")[0]) if len(rec) > 2 else 250.0
        n_samples = int(rec[3]) if len(rec) > 3 else 0
    except (IndexError, ValueError) as exc:
        raise UndecodableError(f"{name}: bad record line in WFDB header") from exc
    if n_sig < 1 or fs <= 0 or len(body) < n_sig + 1:
        raise UndecodableError(f"{name}: header declares {n_sig} signals at {fs} Hz")
    channels = tuple(_parse_channel(body[1 + i], name) for i in range(n_sig))
    return _Header(record, n_sig, fs, n_samples, channels, comments)


def _parse_channel(line: str, name: str) -> _Channel:
    parts = line.split()
    if len(parts) < 3:
        raise UndecodableError(f"{name}: bad signal line in WFDB header")
    match = _GAIN.match(parts[2])
    if match is None:
        raise UndecodableError(f"{name}: bad gain field {parts[2]!r}")
    gain = float(match["gain"]) or 200.0  # WFDB: gain 0 means the default 200/mV
    adc_zero = int(parts[4]) if len(parts) > 4 else 0
    baseline = int(match["baseline"]) if match["baseline"] is not None else adc_zero
    lead = lead_name(parts[8]) if len(parts) > 8 else f"ch{parts[0]}"
    return _Channel(parts[0], gain, baseline, match["units"] or "mV", lead)


def _read_mat(folder: Path, files: set[str]) -> np.ndarray:
    from scipy.io import loadmat

    if len(files) != 1:
        raise UndecodableError("multi-file .mat records are not supported")
    mat_path = folder / next(iter(files))
    try:
        val = loadmat(mat_path)["val"]
    except (OSError, KeyError, ValueError) as exc:
        raise UndecodableError(f"cannot read {mat_path.name}: {exc}") from exc
    return np.asarray(val)


def _read_with_wfdb(record_path: Path) -> np.ndarray:
    try:
        import wfdb
    except ImportError as exc:  # pragma: no cover - a broken install
        raise UndecodableError("reading WFDB .dat needs the 'wfdb' package (a core dependency)") from exc
    try:
        rec = wfdb.rdrecord(str(record_path), physical=False, return_res=32)
    except (OSError, ValueError) as exc:
        raise UndecodableError(f"cannot read WFDB record {record_path.name}: {exc}") from exc
    return np.asarray(rec.d_signal).T


def _demographics(comments: tuple[str, ...]) -> Demographics:
    for line in comments:
        key, _, value = line.partition(":")
        if key.strip().lower() == "sex" and value.strip().lower() in ("male", "female"):
            return Demographics(sex="M" if value.strip().lower() == "male" else "F")
    return Demographics()
