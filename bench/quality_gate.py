"""How often the signal-quality gate refuses real ECGs, and why.

Runs ``assess`` over PTB-XL (100 Hz), the CinC 2021 samples (500 Hz) and the DICOM
examples in ``../shared/data`` and prints the pass rate and reason counts per set. Used
to set the limits in ``ecg_gateway/triage/quality.py``: a gate that refuses clean
recordings would send readable ECGs to "uninterpretable".

Usage: python bench/quality_gate.py [--ptbxl N] [--smoke]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecg_gateway.ecg import Ecg
from ecg_gateway.triage.quality import assess

DATA = Path(os.environ.get("ECG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LEAD_NAMES = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}


def ptbxl(n: int) -> list[tuple[str, Ecg]]:
    import pandas as pd
    import wfdb

    db = pd.read_csv(DATA / "ptbxl" / "ptbxl_database.csv")
    rows = db.sample(n=min(n, len(db)), random_state=0)
    out = []
    for row in rows.itertuples():
        rec = wfdb.rdrecord(str(DATA / "ptbxl" / row.filename_lr))
        out.append((f"ptbxl:{row.ecg_id}", Ecg(rec.p_signal.T, rec.fs, tuple(rec.sig_name), "wfdb")))
    return out


def cinc(limit: int | None) -> list[tuple[str, Ecg]]:
    """The Challenge's MATLAB v4 files; headers parsed by hand (wfdb rejects some)."""
    from scipy.io import loadmat

    out = []
    for hea in sorted((DATA / "cinc2021-samples").glob("*/*.hea"))[:limit]:
        lines = hea.read_text().splitlines()
        fs = float(lines[0].split()[2])
        n_leads = int(lines[0].split()[1])
        specs = [line.split() for line in lines[1:1 + n_leads]]
        gains = np.array([float(s[2].split("/")[0]) for s in specs])
        leads = tuple(LEAD_NAMES.get(s[-1].upper(), s[-1]) for s in specs)
        val = loadmat(str(hea.with_suffix(".mat")))["val"].astype(np.float64)
        out.append((f"cinc:{hea.stem}", Ecg(val / gains[:, None], fs, leads, "mat")))
    return out


def dicom() -> list[tuple[str, Ecg]]:
    """pydicom's waveform_array, converted to mV from the channel sensitivity units."""
    import pydicom

    scale = {"uV": 1e-3, "mV": 1.0}
    out = []
    for path in sorted((DATA / "dicom-ecg").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        group = ds.WaveformSequence[0]
        chans = group.ChannelDefinitionSequence
        units = chans[0].ChannelSensitivityUnitsSequence[0].CodeValue
        names = [c.ChannelSourceSequence[0].CodeMeaning.split("(")[0].split()[-1] for c in chans]
        leads = tuple(LEAD_NAMES.get(name.upper(), name) for name in names)
        sig = ds.waveform_array(0).T * scale.get(units, 1e-3)
        out.append((f"dicom:{path.name}", Ecg(sig, float(group.SamplingFrequency), leads, "dicom")))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ptbxl", type=int, default=3000, help="PTB-XL records to sample")
    parser.add_argument("--smoke", action="store_true", help="a few records per set, seconds")
    args = parser.parse_args()
    n = 20 if args.smoke else args.ptbxl
    sets = {"ptbxl": lambda: ptbxl(n), "cinc2021": lambda: cinc(10 if args.smoke else None), "dicom": dicom}
    print(f"{'set':10} {'records':>8} {'pass':>7} {'ms/ECG':>7}  reasons (count)")
    for name, load in sets.items():
        try:
            records = load()
        except (FileNotFoundError, ImportError) as exc:
            print(f"{name:10} skipped: {exc}")
            continue
        t0 = time.perf_counter()
        reports = [(rid, assess(ecg)) for rid, ecg in records]
        ms = 1000 * (time.perf_counter() - t0) / max(1, len(records))
        counts = collections.Counter(r.split(":")[0] for _, rep in reports for r in rep.reasons)
        passed = sum(rep.ok for _, rep in reports)
        print(f"{name:10} {len(records):8d} {passed / max(1, len(records)):7.2%} {ms:7.1f}  {dict(counts)}")
        for rid, rep in reports:
            if not rep.ok:
                print(f"    {rid}: {', '.join(rep.reasons)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
