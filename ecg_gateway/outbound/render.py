"""The 12-lead ECG as a one-page PDF (or PNG): 3x4 leads plus a lead II rhythm strip.

Standard paper layout on A4 landscape: 25 mm/s, 10 mm/mV, 1 mm / 5 mm grid, a 1 mV
calibration pulse at the start of each row; each of the four columns shows 2.5 s of its
three leads (simultaneous), the strip below shows 10 s of lead II. Data coordinates are
millimetres of paper, so the scale is exact when printed at 100 %.

matplotlib is imported lazily (it costs ~0.8 s) and only through the object API (no
pyplot global state), so renders may run in worker threads. :func:`warm_up` pays the
import and font loading before the first acute message needs a PDF.
"""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING

import numpy as np

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import InvalidEcgError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PAGE_MM = (297.0, 210.0)
MM_PER_S = 25.0
MM_PER_MV = 10.0
COLUMN_S = 2.5
STRIP_S = 10.0
ROW_MM = 40.0
GRID_X_MM = (-10.0, MM_PER_S * STRIP_S)  # 10 mm left of t=0 for the calibration pulse
GRID_Y_MM = (0.0, 4 * ROW_MM)
GRID_BOTTOM_MM = 10.0
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
MINOR_COLOUR, MAJOR_COLOUR = "#f5c6c6", "#e08a8a"
#: zlib level of the PDF streams: level 1 renders ~10 ms faster than 6 for ~15 % more bytes.
PDF_COMPRESSION = 1
HEADER_LINES = 5
STRIP_BASE_MM = ROW_MM * 0.5


def render_pdf(ecg: Ecg, header: str) -> bytes:
    """One A4 landscape page; ``header`` lines are printed above the grid (first in bold)."""
    return _page().render(ecg, header, "pdf", dpi=72)


def render_png(ecg: Ecg, header: str, dpi: int = 100) -> bytes:
    return _page().render(ecg, header, "png", dpi=dpi)


def warm_up() -> None:
    """Import matplotlib and load its fonts once (the first render costs ~3x a warm one)."""
    signal = np.zeros((1, 500), dtype=np.float32)
    render_pdf(Ecg(signal=signal, fs=500.0, leads=("II",), source="warm-up"), "warm-up")


_local = threading.local()


def _page() -> _Page:
    """This thread's page (matplotlib artists are not thread-safe; one page per thread)."""
    page = getattr(_local, "page", None)
    if page is None:
        page = _local.page = _Page()
    return page


class _Page:
    """The page built once: grid, axes, label and text artists. A render only swaps the trace
    data and the texts, then saves: building the axes, grid and labels anew cost about half of
    every render (bench/oru.py), and the sender renders on the acute ORU's critical path."""

    def __init__(self) -> None:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

        width, height = PAGE_MM
        self.fig = fig = Figure(figsize=(width / 25.4, height / 25.4))
        (x0, x1), (y0, y1) = GRID_X_MM, GRID_Y_MM
        ax = fig.add_axes(((width - (x1 - x0)) / 2 / width, GRID_BOTTOM_MM / height,
                           (x1 - x0) / width, (y1 - y0) / height))
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_axis_off()
        _draw_grid(ax)
        (self.trace,) = ax.plot([], [], color="black", linewidth=0.5, zorder=2)
        for row, names in enumerate(LAYOUT):
            base = _row_base(row)
            for col, name in enumerate(names):
                ax.text(col * COLUMN_S * MM_PER_S + 1.0, base + 8.0, name, fontsize=7, zorder=3)
        self.strip_label = ax.text(1.0, STRIP_BASE_MM + 8.0, "", fontsize=7, zorder=3)
        left = (width - (x1 - x0)) / 2 / width
        top = 1.0 - 7.0 / height
        self.header = [fig.text(left, top - i * 5.0 / height, "", fontsize=10 if i == 0 else 8,
                                weight="bold" if i == 0 else "normal", va="top")
                       for i in range(HEADER_LINES)]
        self.footer = fig.text(left, 4.0 / height, "", fontsize=7, va="bottom")

    def render(self, ecg: Ecg, header: str, fmt: str, dpi: int) -> bytes:
        import matplotlib

        xs, ys, strip = _traces(ecg)
        self.trace.set_data(xs, ys)
        self.strip_label.set_text(strip or "")
        lines = header.splitlines()[:HEADER_LINES]
        for i, artist in enumerate(self.header):
            artist.set_text(lines[i] if i < len(lines) else "")
        self.footer.set_text(f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV   {ecg.fs:g} Hz   "
                             f"{ecg.duration_s:.1f} s   source {ecg.source}")
        buf = io.BytesIO()
        with matplotlib.rc_context({"pdf.compression": PDF_COMPRESSION, "path.simplify": True}):
            self.fig.savefig(buf, format=fmt, dpi=dpi)
        return buf.getvalue()


def _row_base(row: int) -> float:
    """Baseline (mm) of a 3x4 row, counted from the top."""
    return GRID_Y_MM[1] - (row + 0.5) * ROW_MM


def _polyline(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Join [n, 2] pieces into one NaN-separated line: one PDF path instead of hundreds
    (drawing ~500 separate grid paths cost most of the render time)."""
    gap = np.full((1, 2), np.nan)
    joined = np.concatenate([part for piece in pieces for part in (piece, gap)])
    return joined[:, 0], joined[:, 1]


def _draw_grid(ax: Axes) -> None:
    (x0, x1), (y0, y1) = GRID_X_MM, GRID_Y_MM
    xs = np.arange(x0, x1 + 0.5, 1.0)
    ys = np.arange(y0, y1 + 0.5, 1.0)
    for major, colour, width in ((False, MINOR_COLOUR, 0.15), (True, MAJOR_COLOUR, 0.4)):
        keep_x = xs[(np.round(xs) % 5 == 0) == major]
        keep_y = ys[(np.round(ys) % 5 == 0) == major]
        lines = [np.array([[x, y0], [x, y1]]) for x in keep_x]
        lines += [np.array([[x0, y], [x1, y]]) for y in keep_y]
        ax.plot(*_polyline(lines), color=colour, linewidth=width, zorder=0)


def _lead_signals(ecg: Ecg) -> dict[str, np.ndarray]:
    """The 12 standard leads when derivable, else whatever leads the ECG has."""
    try:
        ecg = ecg.with_standard_leads()
    except InvalidEcgError:
        pass
    centred = ecg.signal - np.nanmedian(ecg.signal, axis=1, keepdims=True)
    return dict(zip(ecg.leads, centred, strict=True))


def _traces(ecg: Ecg) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Every trace of the page as one polyline (x, y in mm) and the rhythm strip's lead."""
    leads = _lead_signals(ecg)
    per_column = round(COLUMN_S * ecg.fs)
    traces = []
    for row, names in enumerate(LAYOUT):
        base = _row_base(row)
        traces.append(_calibration(base))
        for col, name in enumerate(names):
            start = col * per_column
            if name in leads and start < ecg.n_samples:
                traces.append(_trace(leads[name][start:start + per_column], ecg.fs, start, base))
            if col:
                x = col * COLUMN_S * MM_PER_S
                traces.append(np.array([[x, base - 3.0], [x, base + 3.0]]))
    traces.append(_calibration(STRIP_BASE_MM))
    strip = RHYTHM_LEAD if RHYTHM_LEAD in leads else next(iter(leads), None)
    if strip is not None:
        traces.append(_trace(leads[strip][: round(STRIP_S * ecg.fs)], ecg.fs, 0, STRIP_BASE_MM))
    xs, ys = _polyline(traces)
    return xs, ys, strip


def _trace(values: np.ndarray, fs: float, start: int, base: float) -> np.ndarray:
    t_mm = (np.arange(start, start + len(values)) / fs) * MM_PER_S
    return np.column_stack((t_mm, base + values.astype(np.float64) * MM_PER_MV))


def _calibration(base: float) -> np.ndarray:
    """A 1 mV x 200 ms square pulse left of t=0."""
    top = base + MM_PER_MV
    xs = (-9.0, -7.5, -7.5, -2.5, -2.5, -1.0)
    ys = (base, base, top, top, base, base)
    return np.column_stack((xs, ys))
