"""12-lead renderer: a real vector PDF, looked at as pixels (poppler's pdftoppm).

The paper scale (25 mm/s, 10 mm/mV) is checked at chosen pixels; the whole page against a
committed reference image within a tolerance. To accept a deliberate change of the page:
``ECG_UPDATE_RENDER_REFERENCE=1 pytest tests/integration/test_render.py`` and look at the new PNG.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from ecg_gateway.ecg import STANDARD_LEADS, Ecg
from ecg_gateway.outbound import render
from ecg_gateway.outbound.page import PageText
from ecg_gateway.outbound.render import keep_mask, render_pdf

DPI = 200
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "render_reference.png"
REFERENCE_DPI = 60
TEXT = PageText(
    "AI ECG triage: ACUTE - preliminary automated result, a physician must confirm",
    ("p(normal) = 0.01   p(abnormal, not acute) = 0.02   p(subacute) = 0.04   p(acute) = 0.93",
     "Decision: ACUTE: p(acute) 0.31 \u2265 0.12, the threshold that flags 10 % of ECGs",
     "Patient: MÜLLER, JÜRGEN   ID 42   born 19600101   M",
     "Acquired 2025-01-01 11:58:00   ECG UID 1.2.840.10008.1", "Model ecg-resnet@1.2 (sha256 abababababab)"),
    ("HR 72 /min   PR 160 ms   QRS 92 ms   QT 380 ms",
     "QTc 410 ms (Bazett)   402 ms (Fridericia)   Axes P 60°  QRS -30°  T \u2013",
     "Statements (model, probability):", "AFIB  atrial fibrillation  0.87", "STE  ST elevation  0.41"))

needs_poppler = pytest.mark.skipif(shutil.which("pdftoppm") is None,
                                   reason="pdftoppm (poppler-utils) is not installed: "
                                          "apt-get install poppler-utils")


def real_ecg(fs: float = 1000.0) -> Ecg:
    """The Mortara ELI 250 recording shipped with pydicom (12 x 10 s at 1000 Hz), or every
    second sample of it."""
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    signal = ds.waveform_array(0).T / 1000.0  # uV -> mV
    step = round(1000.0 / fs)
    return Ecg(signal=signal[:, ::step], fs=fs, leads=STANDARD_LEADS, source="dicom")


def pulses_ecg(fs: float = 500.0) -> Ecg:
    """Flat leads with 1 mV x 400 ms pulses: II at 4.0 s (rhythm strip), V4 at 8.0 s."""
    signal = np.zeros((12, int(10 * fs)), dtype=np.float32)
    for lead, start in (("II", 4.0), ("V4", 8.0)):
        signal[STANDARD_LEADS.index(lead), int(start * fs):int((start + 0.4) * fs)] = 1.0
    return Ecg(signal=signal, fs=fs, leads=STANDARD_LEADS, source="synthetic")


def rasterize(pdf: bytes, dpi: int, gray: bool = False) -> np.ndarray:
    """The page as pixels in [0, 1], [rows, cols, 3] (or [rows, cols] with ``gray``)."""
    png = subprocess.run(["pdftoppm", "-r", str(dpi), "-png", "-singlefile", *(["-gray"] if gray else [])],
                         input=pdf, capture_output=True, check=True, timeout=60).stdout
    return np.asarray(Image.open(io.BytesIO(png)).convert("L" if gray else "RGB"), dtype=np.float64) / 255


def pixel(image: np.ndarray, x_mm: float, y_mm: float) -> np.ndarray:
    """The pixels around grid coordinates (mm right of t=0, mm above the grid bottom)."""
    col = round((render.GRID_LEFT_MM - render.GRID_X_MM[0] + x_mm) / 25.4 * DPI)
    row = round((render.PAGE_MM[1] - render.GRID_BOTTOM_MM - y_mm) / 25.4 * DPI)
    return image[row - 2:row + 3, col - 2:col + 3, :3]  # +-0.25 mm: lines are antialiased


def is_ink(patch: np.ndarray) -> bool:
    """A black trace pixel nearby; the grid is pink (red channel stays high)."""
    return bool(patch.max(axis=-1).min() < 0.5)


def streams(pdf: bytes) -> list[bytes]:
    """Every stream, inflated (zlib stops at the end of its own data)."""
    return [zlib.decompressobj().decompress(m[1]) for m in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S)]


def test_pdf_is_one_a4_landscape_vector_page() -> None:
    pdf = render_pdf(real_ecg(500.0), TEXT)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    box = re.search(rb"/MediaBox \[ *0 0 ([\d.]+) ([\d.]+) *\]", pdf)
    assert box is not None  # points: 297 x 210 mm
    assert float(box[1]) == pytest.approx(297 / 25.4 * 72) and float(box[2]) == pytest.approx(210 / 25.4 * 72)
    assert re.findall(rb"/Count \d+", pdf) == [b"/Count 1"]
    assert b"/Subtype /Image" not in pdf and b"/FontFile" not in pdf  # vector paths, core fonts
    assert pdf.count(b"/Subtype /Form") == 1  # the grid is one form XObject
    content = b"".join(streams(pdf))
    assert len(re.findall(rb"/\S+ Do", content)) == 1
    assert content.count(b" m\n") == 13  # one polyline per lead: 12 + the rhythm strip


@needs_poppler
def test_paper_scale_is_25_mm_per_s_and_10_mm_per_mv() -> None:
    image = rasterize(render_pdf(pulses_ecg(), TEXT), DPI)
    strip = render.STRIP_BASE_MM
    assert is_ink(pixel(image, 90.0, strip))  # baseline before the pulse
    assert is_ink(pixel(image, 105.0, strip + 10.0))  # 4.2 s -> 105 mm; 1 mV -> 10 mm up
    assert not is_ink(pixel(image, 105.0, strip))  # the trace left the baseline there
    assert not is_ink(pixel(image, 115.0, strip + 10.0))  # pulse over after 400 ms = 10 mm
    top_row = render.GRID_Y_MM[1] - render.ROW_MM * 0.5  # I / aVR / V1 / V4 row
    assert is_ink(pixel(image, 205.0, top_row + 10.0))  # V4 pulse at 8.2 s in column 4
    assert not is_ink(pixel(image, 205.0, top_row))
    assert is_ink(pixel(image, -5.0, top_row + 10.0))  # calibration pulse: 1 mV high


@needs_poppler
def test_grid_is_drawn_in_pink() -> None:
    image = rasterize(render_pdf(pulses_ecg(), TEXT), DPI)
    patch = pixel(image, 50.0, 82.5)  # holds a 5 mm line, away from every trace
    reddest = patch.reshape(-1, 3)[np.argmax(patch[..., 0] - patch[..., 1])]
    assert reddest[0] > 0.7 and reddest[1] < reddest[0] - 0.2 and not is_ink(patch)


@needs_poppler
def test_eight_lead_ecg_gets_derived_limb_leads() -> None:
    full = pulses_ecg()
    keep = [STANDARD_LEADS.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    eight = Ecg(signal=full.signal[keep], fs=full.fs, leads=tuple(full.leads[i] for i in keep),
                source="synthetic")
    image = rasterize(render_pdf(eight, TEXT), DPI)
    # aVF = II - I/2 is derived; it shows 2.5-5 s in row 3, so II's pulse appears there
    third_row = render.GRID_Y_MM[1] - 2.5 * render.ROW_MM
    assert is_ink(pixel(image, 105.0, third_row + 10.0))


@needs_poppler
def test_page_looks_like_the_reference() -> None:
    """The whole page (header, grid, 13 traces, labels) within a small pixel tolerance."""
    page = rasterize(render_pdf(real_ecg(500.0), TEXT), REFERENCE_DPI, gray=True)
    if os.environ.get("ECG_UPDATE_RENDER_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        Image.fromarray(np.rint(page * 255).astype(np.uint8)).save(REFERENCE, optimize=True)
    reference = np.asarray(Image.open(REFERENCE).convert("L"), dtype=np.float64) / 255
    assert page.shape == reference.shape
    diff = np.abs(page - reference)
    assert diff.mean() < 0.01, f"mean difference {diff.mean():.4f}"
    assert (diff > 0.25).mean() < 0.005, f"{(diff > 0.25).mean():.2%} of the pixels differ"


@needs_poppler
def test_text_is_text() -> None:
    pdf = render_pdf(real_ecg(500.0), TEXT)
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    words = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True,
                           timeout=60).stdout.decode()
    for expected in ("ACUTE", "MÜLLER", "p(acute) = 0.93", "\u2265 0.12", "AFIB", "402 ms (Fridericia)",
                     "aVR", "V6", "25 mm/s"):
        assert expected in words, expected


@pytest.mark.parametrize("ecg", [
    Ecg(signal=np.full((2, 1500), 0.3, dtype=np.float32), fs=250.0, leads=("X", "Y"), source="t"),
    Ecg(signal=np.where(np.arange(5000) % 700 < 30, np.nan, 0.5).astype(np.float32)[None, :]
        .repeat(12, 0), fs=500.0, leads=STANDARD_LEADS, source="t"),
    Ecg(signal=np.full((12, 5000), np.nan, dtype=np.float32), fs=500.0, leads=STANDARD_LEADS, source="t"),
    real_ecg(1000.0),
], ids=["odd-leads-short", "nan-gaps", "all-nan", "1000-hz"])
def test_unusual_ecgs_still_render(ecg: Ecg) -> None:
    assert render_pdf(ecg, PageText("header")).startswith(b"%PDF-")


def test_thinning_keeps_every_sample_within_tolerance() -> None:
    rng = np.random.default_rng(7)
    y = np.cumsum(rng.normal(0, 0.05, (6, 1777)), axis=1)  # a noisy random walk, mm
    y[2, 100:400] = 0.0  # a flat stretch: thinned to its ends
    y[3, 50] = np.nan
    keep = keep_mask(y, 0.09)
    for row, mask in zip(y, keep, strict=True):
        assert mask[0] and mask[-1]
        idx = np.flatnonzero(mask)
        finite = np.isfinite(row)
        drawn = np.interp(np.arange(len(row)), idx[np.isfinite(row[idx])], row[idx][np.isfinite(row[idx])])
        assert np.all(np.abs(row - drawn)[finite] <= 0.09 + 1e-9)
    assert keep[2, 100:400].sum() <= 10  # a flat stretch keeps a few points
    assert keep[3, 49] and keep[3, 50] and keep[3, 51]  # NaN and its neighbours stay


def test_renders_concurrently_in_threads() -> None:
    ecg, out = real_ecg(500.0), {}

    def work(i: int) -> None:
        out[i] = render_pdf(ecg, PageText(f"thread {i}"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and all(pdf.startswith(b"%PDF-") for pdf in out.values())
