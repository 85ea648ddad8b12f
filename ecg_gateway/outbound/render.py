"""The 12-lead ECG as a one-page vector PDF: 3x4 leads plus a lead II rhythm strip.

Standard paper layout on A4 landscape: 25 mm/s, 10 mm/mV, 1 mm / 5 mm grid, a 1 mV
calibration pulse at the start of each row; each of the four columns shows 2.5 s of its
three leads (simultaneous), the strip below shows 10 s of lead II. The scale is exact when
printed at 100 %.

Built with reportlab (decisions.md, issue #28): the grid, the calibration pulses and the
column marks are one form XObject whose content is computed once per process; each lead is
one polyline written as integer coordinates (0.05 mm units) through reportlab's
``addLiteral``; text is text in the PDF core fonts (nothing embedded). A lead keeps every
sample except those within half a stroke width of the line drawn through its neighbours
(:func:`keep_mask`), so the page stays small without visibly changing a single beat.
"""

from __future__ import annotations

import contextlib
import io
import zlib
from dataclasses import replace
from functools import lru_cache

import numpy as np
from reportlab import rl_config
from reportlab.pdfbase import pdfdoc
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import InvalidEcgError
from ecg_gateway.outbound.page import PageText

PAGE_MM = (297.0, 210.0)
MM_PER_S = 25.0
MM_PER_MV = 10.0
COLUMN_S = 2.5
STRIP_S = 10.0
ROW_MM = 40.0
GRID_X_MM = (-10.0, MM_PER_S * STRIP_S)  # 10 mm left of t=0 for the calibration pulse
GRID_Y_MM = (0.0, 4 * ROW_MM)
GRID_BOTTOM_MM = 10.0
GRID_LEFT_MM = (PAGE_MM[0] - (GRID_X_MM[1] - GRID_X_MM[0])) / 2  # page edge -> grid edge
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
STRIP_BASE_MM = ROW_MM * 0.5
MINOR_RGB, MAJOR_RGB = (0.961, 0.776, 0.776), (0.878, 0.541, 0.541)  # #f5c6c6, #e08a8a
MINOR_WIDTH_MM, MAJOR_WIDTH_MM, TRACE_WIDTH_MM = 0.05, 0.14, 0.18
#: A sample may be left out when it lies within half the trace's stroke of the line drawn.
TOLERANCE_MM = TRACE_WIDTH_MM / 2
#: Trace coordinates are integers in this unit: one sample per unit at 500 Hz and 25 mm/s.
QUANTUM_MM = 0.05
#: Above this rate a lead is thinned to it first (peaks kept): finer steps are not drawable.
DISPLAY_FS = 500.0
PT_PER_MM = 72 / 25.4
HEADER_TOP_MM, LINE_MM = 9.0, 3.7  # title baseline, then one line per LINE_MM
FINDINGS_X_MM = 170.0  # the right header column
HEADER_ROWS = 7  # lines per column between the title and the grid
FONT, BOLD = "Helvetica", "Helvetica-Bold"

#: reportlab wraps compressed streams in ASCII85 by default (a 7-bit-clean transport of 1999):
#: +25 % bytes and, without its C accelerator, most of a page's render time. Binary streams
#: are what every PDF writer emits now; the ORU carries the PDF base64-encoded anyway.
rl_config.useA85 = 0


class _FastFlate(pdfdoc.PDFStreamFilterZCompress):
    """Deflate at level 1. reportlab compresses every stream at zlib's default level 6 and
    has no setting for it; on a page of trace operators level 6 took 9x longer (most of the
    render) for 15 % fewer bytes (decisions.md, issue #28)."""

    def encode(self, text: str | bytes) -> bytes:
        return zlib.compress(text.encode("utf-8") if isinstance(text, str) else text, 1)


pdfdoc.PDFZCompress = _FastFlate()  # the filter object reportlab looks up for each stream


def render_pdf(ecg: Ecg, text: PageText) -> bytes:
    """One A4 landscape page with ``text`` above the grid."""
    buf = io.BytesIO()
    canvas = Canvas(buf, pagesize=(PAGE_MM[0] * PT_PER_MM, PAGE_MM[1] * PT_PER_MM),
                    pageCompression=1, invariant=1)
    canvas.setTitle("12-lead ECG")  # never the patient's name: metadata is not the document
    canvas.setCreator("ecg-gateway")
    canvas.beginForm("grid")
    canvas.addLiteral(_grid_ops())
    canvas.endForm()
    canvas.doForm("grid")
    traces, strip = _traces(ecg)
    canvas.addLiteral(traces)
    _labels(canvas, strip)
    _header(canvas, text)
    canvas.setFont(FONT, 7)
    canvas.drawString(GRID_LEFT_MM * PT_PER_MM, 4.0 * PT_PER_MM,
                      f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV   {ecg.fs:g} Hz   "
                      f"{ecg.duration_s:.1f} s   source {ecg.source}")
    canvas.showPage()
    canvas.save()
    return buf.getvalue()


def warm_up() -> None:
    """Import reportlab and build the grid once, before the first acute ORU needs a page."""
    signal = np.zeros((1, 500), dtype=np.float32)
    render_pdf(Ecg(signal=signal, fs=500.0, leads=("II",), source="warm-up"), PageText("warm-up"))


# --- static parts: built once per process ---------------------------------------------------

def _to_grid(scale_mm: float) -> str:
    """The operator that maps (scale_mm units, origin at t=0 on the grid's bottom) to the page."""
    s = scale_mm * PT_PER_MM
    return (f"{s:.6f} 0 0 {s:.6f} {(GRID_LEFT_MM - GRID_X_MM[0]) * PT_PER_MM:.4f} "
            f"{GRID_BOTTOM_MM * PT_PER_MM:.4f} cm")


@lru_cache(maxsize=1)
def _grid_ops() -> str:
    """Minor and major grid lines, calibration pulses and column marks, in mm."""
    (x0, x1), (y0, y1) = GRID_X_MM, GRID_Y_MM
    ops = ["q", _to_grid(1.0)]
    for major, rgb, width in ((False, MINOR_RGB, MINOR_WIDTH_MM), (True, MAJOR_RGB, MAJOR_WIDTH_MM)):
        ops.append(f"{rgb[0]} {rgb[1]} {rgb[2]} RG {width} w")
        ops += [f"{x} {y0:g} m {x} {y1:g} l" for x in range(int(x0), int(x1) + 1) if (x % 5 == 0) == major]
        ops += [f"{x0:g} {y} m {x1:g} {y} l" for y in range(int(y0), int(y1) + 1) if (y % 5 == 0) == major]
        ops.append("S")
    ops.append(f"0 0 0 RG {TRACE_WIDTH_MM} w 1 J 1 j")
    for base in (*(_row_base(row) for row in range(len(LAYOUT))), STRIP_BASE_MM):
        top = base + MM_PER_MV  # a 1 mV x 200 ms square pulse left of t=0
        ops.append(f"-9 {base:g} m -7.5 {base:g} l -7.5 {top:g} l -2.5 {top:g} l -2.5 {base:g} l "
                   f"-1 {base:g} l")
        if base != STRIP_BASE_MM:
            ops += [f"{col * COLUMN_S * MM_PER_S:g} {base - 3:g} m {col * COLUMN_S * MM_PER_S:g} "
                    f"{base + 3:g} l" for col in range(1, 4)]
    ops += ["S", "Q"]
    return "\n".join(ops)


def _row_base(row: int) -> float:
    """Baseline (mm) of a 3x4 row, counted from the top."""
    return GRID_Y_MM[1] - (row + 0.5) * ROW_MM


# --- traces ---------------------------------------------------------------------------------

def _lead_signals(ecg: Ecg) -> dict[str, np.ndarray]:
    """The 12 standard leads when derivable, else whatever leads the ECG has."""
    with contextlib.suppress(InvalidEcgError):
        ecg = ecg.with_standard_leads()
    signal = ecg.signal
    return dict(zip(ecg.leads, signal - _medians(signal)[:, None], strict=True))


def _medians(signal: np.ndarray) -> np.ndarray:
    """Each lead's median, NaNs left out; 0 for a lead without samples. One partition per
    complete lead (numpy's median partitions twice, 10x slower, and nanmedian more still)."""
    finite = np.isfinite(signal)
    complete = finite.all(axis=1)
    gapped = finite.any(axis=1) & ~complete
    medians = np.zeros(len(signal), dtype=signal.dtype)
    half = signal.shape[1] // 2
    if complete.any() and signal.shape[1]:
        upper = np.partition(signal[complete], half, axis=1)
        odd = signal.shape[1] % 2
        medians[complete] = upper[:, half] if odd else (upper[:, half] + upper[:, :half].max(axis=1)) / 2
    if gapped.any():
        medians[gapped] = np.nanmedian(signal[gapped], axis=1)
    return medians


def _display_rate(ecg: Ecg) -> Ecg:
    """At most DISPLAY_FS: of every k samples the one farthest from the lead's median, so a
    QRS peak or a one-sample pacemaker spike survives (0.05 mm steps are below what a trace
    can show). The block's mean would not do at k = 2: both samples are equally far from it.
    A NaN is picked only when its whole block is NaN; ties go to the first sample."""
    k = int(ecg.fs // DISPLAY_FS)
    if k < 2:
        return ecg
    n = ecg.n_samples // k * k
    blocks = ecg.signal[:, :n].reshape(len(ecg.leads), n // k, k)
    centre = _medians(ecg.signal)[:, None]
    picked, farthest = blocks[:, :, 0], np.nan_to_num(np.abs(blocks[:, :, 0] - centre), nan=-1.0)
    for j in range(1, k):  # elementwise over the k columns: no reductions over a short axis
        column = blocks[:, :, j]
        far = np.nan_to_num(np.abs(column - centre), nan=-1.0)
        better = far > farthest
        picked, farthest = np.where(better, column, picked), np.where(better, far, farthest)
    return replace(ecg, signal=np.ascontiguousarray(picked), fs=ecg.fs / k)


def _traces(ecg: Ecg) -> tuple[str, str | None]:
    """Every lead as one stroked polyline (PDF path operators), and the rhythm strip's lead."""
    ecg = _display_rate(ecg)
    leads = _lead_signals(ecg)
    per_column = round(COLUMN_S * ecg.fs)
    pieces: list[tuple[float, float, np.ndarray]] = []  # (x mm, baseline mm, mm above it)
    for row, names in enumerate(LAYOUT):
        for col, name in enumerate(names):
            start = col * per_column
            if name in leads and start < ecg.n_samples:
                values = leads[name][start:start + per_column]
                pieces.append((col * COLUMN_S * MM_PER_S, _row_base(row), values))
    strip = RHYTHM_LEAD if RHYTHM_LEAD in leads else next(iter(leads), None)
    if strip is not None:
        pieces.append((0.0, STRIP_BASE_MM, leads[strip][: round(STRIP_S * ecg.fs)]))
    pieces = [piece for piece in pieces if len(piece[2])]
    masks = keep_masks([mv.astype(np.float64) * MM_PER_MV for _, _, mv in pieces], TOLERANCE_MM)
    paths = _polylines([mv for _, _, mv in pieces], masks, ecg.fs)
    ops = ["q", _to_grid(QUANTUM_MM), f"0 0 0 RG {TRACE_WIDTH_MM / QUANTUM_MM:g} w 1 J 1 j"]
    for (x_mm, base_mm, _), path in zip(pieces, paths, strict=True):
        ops += ["q", f"1 0 0 1 {x_mm / QUANTUM_MM:g} {base_mm / QUANTUM_MM:g} cm", path, "S Q"]
    ops.append("Q")
    return "\n".join(ops), strip


def _polylines(leads: list[np.ndarray], keeps: list[np.ndarray], fs: float) -> list[str]:
    """Each lead's kept samples as ``x y m x y l ...`` in QUANTUM_MM units from the lead's
    origin; a NaN gap starts a new subpath. All leads in one pass (no numpy call per lead)."""
    lengths = np.array([len(mv) for mv in leads])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    kept = np.flatnonzero(np.concatenate(keeps))
    sample = kept - starts[kept]  # index within its lead
    y_mm = np.concatenate(leads)[kept].astype(np.float64) * MM_PER_MV
    finite = np.isfinite(y_mm)
    moves = (sample == 0) | np.concatenate(([True], ~finite[:-1]))
    x = np.rint(sample * (MM_PER_S / fs / QUANTUM_MM)).astype(np.int64)
    y = np.rint(np.clip(y_mm, -200.0, 200.0) / QUANTUM_MM)
    text, ends = path_text(x[finite], y[finite].astype(np.int64), moves[finite])
    per_lead = np.bincount(np.repeat(np.arange(len(leads)), lengths)[kept][finite], minlength=len(leads))
    bounds = np.concatenate(([0], ends))[np.concatenate(([0], np.cumsum(per_lead)))].tolist()
    return [text[a:b].decode("ascii") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


#: Trace coordinates stay below this in magnitude: x <= 10 s / QUANTUM, |y| <= 200 mm / QUANTUM.
_COORDINATE_LIMIT = 10_000


@lru_cache(maxsize=1)
def _number_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``b"%d "`` of every integer in (-LIMIT, LIMIT), zero-padded to 8 bytes and read as one
    uint64 (row ``v + LIMIT``), the matching mask (0x01 for each byte that is text) and the
    length."""
    text = np.zeros((2 * _COORDINATE_LIMIT, 8), dtype=np.uint8)
    shown = np.zeros((2 * _COORDINATE_LIMIT, 8), dtype=np.uint8)
    for value in range(-_COORDINATE_LIMIT + 1, _COORDINATE_LIMIT):
        item = b"%d " % value
        text[value + _COORDINATE_LIMIT, : len(item)] = np.frombuffer(item, dtype=np.uint8)
        shown[value + _COORDINATE_LIMIT, : len(item)] = 1
    return text.view(np.uint64)[:, 0], shown.view(np.uint64)[:, 0], shown.sum(axis=1, dtype=np.int64)


_OPERATORS = np.frombuffer(b"l\n\0\0\0\0\0\0m\n\0\0\0\0\0\0", dtype=np.uint64)  # line, move
_OPERATOR_SHOWN = np.frombuffer(b"\1\1\0\0\0\0\0\0", dtype=np.uint64)[0]


def path_text(x: np.ndarray, y: np.ndarray, moves: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``x y m`` (where ``moves``) or ``x y l`` lines of integer points, and where each
    point's line ends in the text.

    Each number is one 8-byte word from a table; the words of all points are laid side by
    side and their padding masked away, so a page of ~10^4 points formats without a Python
    call per point (``%`` formatting was a third of the render). Both coordinates below
    ``_COORDINATE_LIMIT`` in magnitude.
    """
    if len(x) and max(np.abs(x).max(), np.abs(y).max()) >= _COORDINATE_LIMIT:
        raise ValueError("path coordinates out of range")
    table, table_shown, length = _number_table()
    rows_x, rows_y = x + _COORDINATE_LIMIT, y + _COORDINATE_LIMIT
    words = np.empty((len(x), 3), dtype=np.uint64)
    shown = np.empty((len(x), 3), dtype=np.uint64)
    words[:, 0], words[:, 1], words[:, 2] = table[rows_x], table[rows_y], _OPERATORS[moves.astype(np.intp)]
    shown[:, 0], shown[:, 1], shown[:, 2] = table_shown[rows_x], table_shown[rows_y], _OPERATOR_SHOWN
    text = words.view(np.uint8)[shown.view(bool)].tobytes()
    return text, np.cumsum(length[rows_x] + length[rows_y] + 2)


def keep_mask(y: np.ndarray, tol: float) -> np.ndarray:
    """:func:`keep_masks` of the rows of ``y`` [rows, n], as one [rows, n] array."""
    return np.array(keep_masks(list(y), tol), dtype=bool).reshape(y.shape)


def keep_masks(leads: list[np.ndarray], tol: float) -> list[np.ndarray]:
    """Which samples of each lead (evenly spaced) to draw.

    Bottom-up over dyadic blocks (2, 4, 8 ... samples from each lead's start): a block's
    inner samples are dropped when the chord between its end samples passes within ``tol``
    of every sample in it and both its halves qualified too. So every dropped sample is within
    ``tol`` (vertically) of the drawn line; NaNs never qualify. All leads at once, one pass
    per level over the blocks still in question (none per sample or per lead).
    """
    lengths = np.array([len(lead) for lead in leads], dtype=np.int64)
    flat = np.concatenate([*leads, [np.nan]]).astype(np.float64)  # NaN: a block past the end fails
    offsets = np.cumsum(lengths) - lengths
    ends = offsets + lengths - 1  # each lead's last sample (flat index)
    starts = np.concatenate([np.arange(o, e - 1, 2) for o, e in zip(offsets, ends, strict=True)]
                            ).astype(np.int64)
    owner_end = np.repeat(ends, np.maximum(lengths - 1, 0) // 2)
    lead_start = np.repeat(offsets, lengths)
    marks = np.zeros(len(flat) + 1, dtype=np.int64)  # +1 at a dropped run's start, -1 past it
    fitting = np.zeros(len(flat), dtype=bool)
    step = 2
    while len(starts):
        ok = _chord_fits(flat, starts, step, tol)
        starts, owner_end = starts[ok], owner_end[ok]
        marks[starts + 1] += 1
        marks[starts + step] -= 1
        # a block of the next level: an aligned block that fits, its right neighbour fits too
        fitting[:] = False
        fitting[starts] = True
        pair = ((starts - lead_start[starts]) % (2 * step) == 0) & (starts + 2 * step <= owner_end)
        pair[pair] = fitting[starts[pair] + step]
        starts, owner_end, step = starts[pair], owner_end[pair], 2 * step
    drop = np.cumsum(marks[:-2]) > 0
    return np.split(~drop, np.cumsum(lengths)[:-1])


def _chord_fits(flat: np.ndarray, starts: np.ndarray, step: int, tol: float) -> np.ndarray:
    """Whether every sample of each block ``flat[start:start + step + 1]`` lies within ``tol``
    of the chord between its end samples."""
    first, last = flat[starts], flat[starts + step]
    inner = np.arange(1, step)[:, None]  # [inner sample, block]: reductions run over rows
    chord = first + (last - first) * (inner / step)
    with np.errstate(invalid="ignore"):
        return np.abs(flat[starts + inner] - chord).max(axis=0) <= tol


# --- text -----------------------------------------------------------------------------------

def _labels(canvas: Canvas, strip: str | None) -> None:
    canvas.setFont(FONT, 7)
    x0 = (GRID_LEFT_MM - GRID_X_MM[0] + 1.0) * PT_PER_MM
    for row, names in enumerate(LAYOUT):
        y = (GRID_BOTTOM_MM + _row_base(row) + 8.0) * PT_PER_MM
        for col, name in enumerate(names):
            canvas.drawString(x0 + col * COLUMN_S * MM_PER_S * PT_PER_MM, y, name)
    if strip is not None:
        canvas.drawString(x0, (GRID_BOTTOM_MM + STRIP_BASE_MM + 8.0) * PT_PER_MM, strip)


def _header(canvas: Canvas, text: PageText) -> None:
    right = (PAGE_MM[0] - GRID_LEFT_MM) * PT_PER_MM
    left = GRID_LEFT_MM * PT_PER_MM
    findings = FINDINGS_X_MM * PT_PER_MM
    canvas.setFont(BOLD, 10)
    canvas.drawString(left, _from_top(HEADER_TOP_MM), _fit(text.title, BOLD, 10, right - left))
    canvas.setFont(FONT, 8)
    left_width = (findings if text.findings else right) - left - 3 * PT_PER_MM
    for i, line in enumerate(text.details[:HEADER_ROWS]):
        canvas.drawString(left, _from_top(HEADER_TOP_MM + (i + 1.2) * LINE_MM),
                          _fit(line, FONT, 8, left_width))
    for i, line in enumerate(text.findings[:HEADER_ROWS]):
        canvas.drawString(findings, _from_top(HEADER_TOP_MM + (i + 1.2) * LINE_MM),
                          _fit(line, FONT, 8, right - findings))


def _from_top(mm: float) -> float:
    return (PAGE_MM[1] - mm) * PT_PER_MM


def _fit(line: str, font: str, size: float, width_pt: float) -> str:
    """The line, cut with an ellipsis where it would run past ``width_pt``."""
    if stringWidth(line, font, size) <= width_pt:
        return line
    while line and stringWidth(line + "\u2026", font, size) > width_pt:
        line = line[:-1]
    return line + "\u2026"
