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
    measured = np.isfinite(signal).any(axis=1)  # an all-NaN lead has no median to take
    centre = np.zeros((len(signal), 1), dtype=signal.dtype)
    centre[measured] = np.nanmedian(signal[measured], axis=1, keepdims=True)
    return dict(zip(ecg.leads, signal - centre, strict=True))


def _display_rate(ecg: Ecg) -> Ecg:
    """At most DISPLAY_FS: of every k samples the one farthest from their mean (a QRS peak or
    a pacemaker spike survives; 0.05 mm steps are below what a trace can show)."""
    k = int(ecg.fs // DISPLAY_FS)
    if k < 2:
        return ecg
    n = ecg.n_samples // k * k
    blocks = ecg.signal[:, :n].reshape(len(ecg.leads), n // k, k)
    with np.errstate(all="ignore"):
        far = np.nan_to_num(np.abs(blocks - np.nanmean(blocks, axis=2, keepdims=True)), nan=-1.0)
    picked = np.take_along_axis(blocks, far.argmax(axis=2)[..., None], axis=2)[..., 0]
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
    masks = _keep_by_length([mv for _, _, mv in pieces])
    ops = ["q", _to_grid(QUANTUM_MM), f"0 0 0 RG {TRACE_WIDTH_MM / QUANTUM_MM:g} w 1 J 1 j"]
    for (x_mm, base_mm, mv), keep in zip(pieces, masks, strict=True):
        if len(mv):
            ops += ["q", f"1 0 0 1 {x_mm / QUANTUM_MM:g} {base_mm / QUANTUM_MM:g} cm",
                    _polyline(mv, np.flatnonzero(keep), ecg.fs), "S Q"]
    ops.append("Q")
    return "\n".join(ops), strip


def _keep_by_length(leads: list[np.ndarray]) -> list[np.ndarray]:
    """:func:`keep_mask` of each lead in mm, leads of one length in one call."""
    masks: list[np.ndarray] = [np.ones(0, dtype=bool)] * len(leads)
    for length in {len(mv) for mv in leads if len(mv)}:
        which = [i for i, mv in enumerate(leads) if len(mv) == length]
        stacked = np.stack([leads[i] for i in which]).astype(np.float64) * MM_PER_MV
        for i, mask in zip(which, keep_mask(stacked, TOLERANCE_MM), strict=True):
            masks[i] = mask
    return masks


def _polyline(mv: np.ndarray, keep: np.ndarray, fs: float) -> str:
    """The kept samples as ``x y m x y l ...`` in QUANTUM_MM units from the lead's origin;
    a NaN gap starts a new subpath."""
    x = np.rint(keep * (MM_PER_S / fs / QUANTUM_MM)).astype(np.int64)
    y_mm = mv[keep].astype(np.float64) * MM_PER_MV
    finite = np.isfinite(y_mm)
    y = np.rint(np.clip(np.where(finite, y_mm, 0.0), -200.0, 200.0) / QUANTUM_MM).astype(np.int64)
    if finite.all():
        return _format(x, y)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], finite.view(np.int8), [0]))))
    return "\n".join(_format(x[a:b], y[a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True))


def _format(x: np.ndarray, y: np.ndarray) -> str:
    text = ("%d %d l\n" * len(x)) % tuple(np.column_stack((x, y)).ravel().tolist())
    return text.replace(" l\n", " m\n", 1)


def keep_mask(y: np.ndarray, tol: float) -> np.ndarray:
    """Which samples of each row of ``y`` [rows, n] (evenly spaced) to draw.

    Bottom-up over dyadic blocks (2, 4, 8 ... samples): a block's inner samples are dropped
    when the chord between its end samples passes within ``tol`` of every sample in it and
    both its halves qualified too. So every dropped sample is within ``tol`` (vertically) of
    the drawn line; NaNs never qualify. Vectorised: one pass per level, none per sample.
    """
    rows, n = y.shape
    drop = np.zeros((rows, n), dtype=bool)
    fits: np.ndarray | None = None
    step = 2
    while step < n:
        blocks = (n - 1) // step
        span = y[:, : blocks * step].reshape(rows, blocks, step)
        first, last = span[:, :, 0], y[:, step: blocks * step + 1: step]
        chord = first[..., None] + (last - first)[..., None] * (np.arange(step) / step)
        with np.errstate(invalid="ignore"):
            ok = np.abs(span - chord).max(axis=2) <= tol
        if fits is not None:
            ok &= fits[:, 0: 2 * blocks: 2] & fits[:, 1: 2 * blocks: 2]
        if not ok.any():
            break
        inner = np.zeros((rows, blocks, step), dtype=bool)
        inner[:, :, 1:] = ok[..., None]
        drop[:, : blocks * step] |= inner.reshape(rows, blocks * step)
        fits, step = ok, step * 2
    return ~drop


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
