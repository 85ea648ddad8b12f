"""12-lead renderer: a real PDF, the paper scale (25 mm/s, 10 mm/mV) checked in pixels."""

from __future__ import annotations

import io
import re
import threading

import numpy as np
import pydicom
import pytest
from matplotlib.image import imread
from pydicom.data import get_testdata_file

from ecg_gateway.ecg import STANDARD_LEADS, Ecg
from ecg_gateway.outbound import render
from ecg_gateway.outbound.render import render_pdf, render_png

DPI = 200
HEADER = "AI ECG triage: ACUTE\np(acute) = 0.93\nPatient: MÜLLER, JÜRGEN   ID 42"


def real_ecg() -> Ecg:
    """The Mortara ELI 250 recording shipped with pydicom (12 x 10,000 samples, 1000 Hz)."""
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    signal = ds.waveform_array(0).T / 1000.0  # uV -> mV
    return Ecg(signal=signal, fs=float(ds.WaveformSequence[0].SamplingFrequency),
               leads=STANDARD_LEADS, source="dicom", uid=ds.SOPInstanceUID)


def pulses_ecg(fs: float = 500.0) -> Ecg:
    """Flat leads with 1 mV x 400 ms pulses: II at 4.0 s (rhythm strip), V4 at 8.0 s."""
    signal = np.zeros((12, int(10 * fs)), dtype=np.float32)
    for lead, start in (("II", 4.0), ("V4", 8.0)):
        signal[STANDARD_LEADS.index(lead), int(start * fs):int((start + 0.4) * fs)] = 1.0
    return Ecg(signal=signal, fs=fs, leads=STANDARD_LEADS, source="synthetic")


def pixel(image: np.ndarray, x_mm: float, y_mm: float) -> np.ndarray:
    """The pixel at grid coordinates (mm right of t=0 ... , mm above the grid bottom)."""
    page_w, page_h = render.PAGE_MM
    left = (page_w - (render.GRID_X_MM[1] - render.GRID_X_MM[0])) / 2 - render.GRID_X_MM[0]
    col = round((left + x_mm) / 25.4 * DPI)
    row = round((page_h - render.GRID_BOTTOM_MM - y_mm) / 25.4 * DPI)
    return image[row - 2:row + 3, col - 2:col + 3, :3]  # +-0.25 mm: lines are antialiased


def is_ink(patch: np.ndarray) -> bool:
    """A black trace pixel nearby; the grid is pink (red channel stays high)."""
    return bool(patch.max(axis=-1).min() < 0.5)


def test_pdf_is_one_a4_landscape_page() -> None:
    pdf = render_pdf(real_ecg(), HEADER)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    box = re.search(rb"/MediaBox \[ *0 0 ([\d.]+) ([\d.]+) *\]", pdf)
    assert box is not None  # points: 297 x 210 mm
    assert float(box[1]) == pytest.approx(297 / 25.4 * 72) and float(box[2]) == pytest.approx(
        210 / 25.4 * 72)
    assert re.findall(rb"/Count \d+", pdf) == [b"/Count 1"]
    assert 20_000 < len(pdf) < 400_000  # vector tracing, compressed


def test_paper_scale_is_25_mm_per_s_and_10_mm_per_mv() -> None:
    image = imread(io.BytesIO(render_png(pulses_ecg(), HEADER, dpi=DPI)))
    strip = render.ROW_MM * 0.5  # rhythm strip baseline
    assert is_ink(pixel(image, 90.0, strip))  # baseline before the pulse
    assert is_ink(pixel(image, 105.0, strip + 10.0))  # 4.2 s -> 105 mm; 1 mV -> 10 mm up
    assert not is_ink(pixel(image, 105.0, strip))  # the trace left the baseline there
    assert not is_ink(pixel(image, 115.0, strip + 10.0))  # pulse over after 400 ms = 10 mm
    top_row = render.GRID_Y_MM[1] - render.ROW_MM * 0.5  # I / aVR / V1 / V4 row
    assert is_ink(pixel(image, 205.0, top_row + 10.0))  # V4 pulse at 8.2 s in column 4
    assert not is_ink(pixel(image, 205.0, top_row))
    assert is_ink(pixel(image, -5.0, top_row + 10.0))  # calibration pulse: 1 mV high


def test_grid_is_drawn_in_pink() -> None:
    image = imread(io.BytesIO(render_png(pulses_ecg(), HEADER, dpi=DPI)))
    patch = pixel(image, 50.0, 82.5)  # holds a 5 mm line, away from every trace
    reddest = patch.reshape(-1, 3)[np.argmax(patch[..., 0] - patch[..., 1])]
    assert reddest[0] > 0.7 and reddest[1] < reddest[0] - 0.2 and not is_ink(patch)


def test_eight_lead_ecg_gets_derived_limb_leads() -> None:
    full = pulses_ecg()
    keep = [STANDARD_LEADS.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    eight = Ecg(signal=full.signal[keep], fs=full.fs, leads=tuple(full.leads[i] for i in keep),
                source="synthetic")
    image = imread(io.BytesIO(render_png(eight, HEADER, dpi=DPI)))
    # aVF = II - I/2 is derived; it shows 2.5-5 s in row 3, so II's pulse appears there
    third_row = render.GRID_Y_MM[1] - 2.5 * render.ROW_MM
    assert is_ink(pixel(image, 105.0, third_row + 10.0))


@pytest.mark.parametrize("ecg", [
    Ecg(signal=np.full((2, 1500), 0.3, dtype=np.float32), fs=250.0, leads=("X", "Y"), source="t"),
    Ecg(signal=np.where(np.arange(5000) % 700 < 30, np.nan, 0.5).astype(np.float32)[None, :]
        .repeat(12, 0), fs=500.0, leads=STANDARD_LEADS, source="t"),
], ids=["odd-leads-short", "nan-gaps"])
def test_unusual_ecgs_still_render(ecg: Ecg) -> None:
    assert render_pdf(ecg, "header").startswith(b"%PDF-")


def test_renders_concurrently_in_threads() -> None:
    ecg, out = real_ecg(), {}

    def work(i: int) -> None:
        out[i] = render_pdf(ecg, f"thread {i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and all(pdf.startswith(b"%PDF-") for pdf in out.values())
