"""Our global ECG measurements against the cart's own, and what they cost.

For every real file in ``../shared/data`` that states the cart's measurements (GE MUSE XML
``RestingECGMeasurements``, aECG ``MDC_ECG_*`` annotations, DICOM Waveform Annotation
Sequence, Philips ``globalmeasurements``), the cart's values are read from the file here
(XML/DICOM fields) and ours are computed by ``ecg_gateway.measure`` from the waveform as the
gateway decodes it. Files whose waveform the gateway cannot decode yet are listed as pending.
Prints the per-recording table, the mean difference per measurement against the IEC
60601-2-25 limits (PR and QRS within +-10 ms, QT within +-25 ms) and the cost per ECG on
one core against its anchor (20 ms, issue #27). ``--markdown`` prints the table for
docs/measurements.md.

Usage: python bench/measurements.py [--repeats N] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as ET

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecg_gateway.ecg import Ecg
from ecg_gateway.inbound.decode import decode_file
from ecg_gateway.measure import measure

DATA = Path(os.environ.get("ECG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
COST_ANCHOR_MS = 20.0
KEYS = ("heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "p_axis_deg", "qrs_axis_deg", "t_axis_deg")
SHORT = {"heart_rate_bpm": "rate", "pr_ms": "PR", "qrs_ms": "QRS", "qt_ms": "QT",
         "p_axis_deg": "P axis", "qrs_axis_deg": "QRS axis", "t_axis_deg": "T axis"}
#: IEC 60601-2-25 (201.12.4.102.3.1): mean difference limits for global intervals, ms
IEC_LIMITS = {"pr_ms": 10.0, "qrs_ms": 10.0, "qt_ms": 25.0}
Cart = dict[str, float]


@dataclass
class Row:
    file: str
    recording: str  # files of the same recording share it; means count each recording once
    cart: Cart
    ours: dict[str, float] = field(default_factory=dict)
    status: str = "measured"
    cost_ms: float = float("nan")


# --- the cart's measurements, read from each file ------------------------------------------

def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def muse_cart(path: Path) -> Cart:
    """GE MUSE: ``RestingECGMeasurements`` (ms, bpm, degrees)."""
    root = ET.parse(path).getroot()
    node = root.find("RestingECGMeasurements")
    names = {"VentricularRate": "heart_rate_bpm", "PRInterval": "pr_ms", "QRSDuration": "qrs_ms",
             "QTInterval": "qt_ms", "PAxis": "p_axis_deg", "RAxis": "qrs_axis_deg",
             "TAxis": "t_axis_deg"}
    return _pick(node, names)


def _pick(node: Element | None, names: dict[str, str]) -> Cart:
    out: Cart = {}
    for child in node if node is not None else []:
        key = names.get(_local(child.tag))
        value = _number(child.text)
        if key and value is not None and key not in out:
            out[key] = value
    return out


def philips_cart(path: Path) -> Cart:
    """Philips SierraECG/PhilipsECG: ``globalmeasurements`` (ms, bpm, degrees)."""
    root = ET.parse(path).getroot()
    node = next((e for e in root.iter() if _local(e.tag) == "globalmeasurements"), None)
    names = {"heartrate": "heart_rate_bpm", "pr": "pr_ms", "qrsdur": "qrs_ms", "qtint": "qt_ms",
             "pfrontaxis": "p_axis_deg", "qrsfrontaxis": "qrs_axis_deg", "tfrontaxis": "t_axis_deg"}
    return _pick(node, names)


AECG_CODES = {"MDC_ECG_HEART_RATE": "heart_rate_bpm", "MDC_ECG_TIME_PD_PR": "pr_ms",
              "MDC_ECG_TIME_PD_QRS": "qrs_ms", "MDC_ECG_TIME_PD_QT": "qt_ms",
              "MDC_ECG_ANGLE_P_FRONT": "p_axis_deg", "MDC_ECG_ANGLE_QRS_FRONT": "qrs_axis_deg",
              "MDC_ECG_ANGLE_T_FRONT": "t_axis_deg"}


def aecg_cart(path: Path) -> Cart:
    """aECG: the first ``annotation`` per MDC code whose own ``value`` is a PQ (global
    measurements come before the per-lead ones)."""
    out: Cart = {}
    for ann in ET.parse(path).getroot().iter():
        if _local(ann.tag) != "annotation":
            continue
        code = next((c.get("code") for c in ann if _local(c.tag) == "code"), None)
        value = next((v for v in ann if _local(v.tag) == "value"), None)
        key = AECG_CODES.get(code or "")
        if key and value is not None and key not in out and _number(value.get("value")) is not None:
            out[key] = float(value.get("value") or "nan")
    return out


DICOM_CODES = {"8867-4": "heart_rate_bpm", "5.13.5-7": "pr_ms", "5.13.5-9": "qrs_ms",
               "5.13.5-11": "qt_ms", "5.10.3-11": "p_axis_deg", "5.10.3-13": "qrs_axis_deg",
               "5.10.3-15": "t_axis_deg", "5.10.2.1-3": "rr_ms"}


def dicom_cart(path: Path) -> Cart:
    """DICOM: numeric Waveform Annotation items (SCPECG or LOINC concept codes)."""
    import pydicom

    ds = pydicom.dcmread(path)
    out: Cart = {}
    items = list(ds.get("WaveformAnnotationSequence", []))
    for item in items:
        concept = item.get("ConceptNameCodeSequence")
        value = item.get("NumericValue")
        if not concept or value is None:
            continue
        key = DICOM_CODES.get(str(concept[0].CodeValue))
        if key == "qrs_axis_deg" and "qrs_axis_deg" in out:
            key = "t_axis_deg"  # one writer labels the T axis (5.10.3-15) "QRS Axis" twice
        if key and key not in out:
            out[key] = float(value)
    rr = out.pop("rr_ms", None)
    if rr and "heart_rate_bpm" not in out:
        out["heart_rate_bpm"] = 60000.0 / rr
    return out


READERS: dict[str, tuple[str, Callable[[Path], Cart]]] = {
    "vendor-xml/ge-muse": ("*.xml", muse_cart),
    "vendor-xml/philips-sierra": ("*", philips_cart),
    "aecg": ("*.xml", aecg_cart),
    "dicom-ecg": ("*.dcm", dicom_cart),
}
#: files that hold the same recording (SOURCE.md of each folder): counted once in the means
SAME = {"hl7_2003-12_Example_aECG.xml": "aECG example (Mortara ELI 250)",
        "ecgtoolkit_Example.dcm": "aECG example (Mortara ELI 250)",
        "cabolabs_Example.dcm": "aECG example (Mortara ELI 250)",
        "musePHI_muse_ecg1.xml": "easyRecg_muse_ecg1.xml",
        "philips_ad4d3d80-d165_1-04_converted.xml": "ad4d3d80-d165_1-04_orig.xml"}


def collect() -> list[tuple[Path, Cart]]:
    out = []
    for folder, (pattern, reader) in READERS.items():
        for path in sorted((DATA / folder).glob(pattern)):
            if path.name in ("SOURCE.md", "SHA256SUMS"):
                continue
            cart = reader(path)
            if cart:
                out.append((path, cart))
    return out


def run(repeats: int) -> list[Row]:
    rows = []
    for path, cart in collect():
        row = Row(path.name, SAME.get(path.name, path.name), cart)
        try:
            ecg: Ecg = decode_file(path)
        except Exception as exc:  # noqa: BLE001 - a format this branch cannot decode yet
            row.status = f"pending: {type(exc).__name__}"
            rows.append(row)
            continue
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = measure(ecg)
            times.append(time.perf_counter() - started)
        row.ours = result.to_json()
        row.cost_ms = statistics.median(times) * 1000
        rows.append(row)
    return rows


def differences(rows: list[Row]) -> dict[str, list[float]]:
    """ours - cart per measurement, one value per recording (the first file of each)."""
    seen: set[str] = set()
    diffs: dict[str, list[float]] = {k: [] for k in KEYS}
    for row in rows:
        if row.status != "measured" or row.recording in seen:
            continue
        seen.add(row.recording)
        for key in KEYS:
            if key in row.cart and key in row.ours:
                d = row.ours[key] - row.cart[key]
                if key.endswith("_deg"):
                    d = (d + 180.0) % 360.0 - 180.0
                diffs[key].append(d)
    return diffs


def _cell(row: Row, key: str) -> str:
    cart, ours = row.cart.get(key), row.ours.get(key)
    if cart is None and ours is None:
        return ""
    return f"{'-' if cart is None else f'{cart:.0f}'} / {'-' if ours is None else f'{ours:.0f}'}"


def table(rows: list[Row]) -> str:
    header = "| File | " + " | ".join(f"{SHORT[k]} cart / ours" for k in KEYS) + " | Status |"
    lines = [header, "|" + " --- |" * (len(KEYS) + 2)]
    for row in rows:
        lines.append(f"| {row.file} | " + " | ".join(_cell(row, k) for k in KEYS)
                     + f" | {row.status} |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    lines = ["| Measurement | Recordings | Mean difference (ours - cart) | Mean absolute | "
             "IEC 60601-2-25 limit | Within |", "| --- | --- | --- | --- | --- | --- |"]
    for key, diffs in differences(rows).items():
        if not diffs:
            continue
        mean = statistics.mean(diffs)
        limit = IEC_LIMITS.get(key)
        unit = "deg" if key.endswith("_deg") else ("bpm" if key == "heart_rate_bpm" else "ms")
        within = ("yes" if abs(mean) <= limit else "NO") if limit else ""
        lines.append(f"| {SHORT[key]} | {len(diffs)} | {mean:+.1f} {unit} | "
                     f"{statistics.mean(abs(d) for d in diffs):.1f} {unit} | "
                     f"{f'+-{limit:.0f} ms' if limit else ''} | {within} |")
    return "\n".join(lines)


def cost(rows: list[Row]) -> str:
    costs = [r.cost_ms for r in rows if r.status == "measured"]
    worst = max(costs) if costs else float("nan")
    return (f"cost per ECG (one core, median of repeats): median {statistics.median(costs):.1f} ms, "
            f"worst file {worst:.1f} ms; anchor {COST_ANCHOR_MS:.0f} ms -> "
            f"{worst / COST_ANCHOR_MS:.2f} x the anchor ({'within' if worst <= COST_ANCHOR_MS else 'OVER'}); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--markdown", action="store_true", help="only the two Markdown tables")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = run(args.repeats)
    print(table(rows))
    print()
    print(summary(rows))
    if not args.markdown:
        print()
        print(cost(rows))
        pending = [r.file for r in rows if r.status != "measured"]
        if pending:
            print(f"pending (waveform not decodable on this branch): {', '.join(pending)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
