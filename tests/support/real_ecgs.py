"""Load real recordings from ../shared/data as Ecg (test helper; skips when data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_gateway.ecg import Ecg
from tests.support.paths import shared_data

_DICOM_UNITS_TO_MV = {"uV": 1e-3, "mV": 1.0}


def ptbxl(ecg_id: int) -> Ecg:
    wfdb = pytest.importorskip("wfdb")
    name = f"{ecg_id:05d}_lr"
    folder = f"{ecg_id // 1000 * 1000:05d}"
    hea = shared_data("ptbxl", "records100", folder, f"{name}.hea")
    rec = wfdb.rdrecord(str(hea.with_suffix("")))
    return Ecg(rec.p_signal.T, float(rec.fs), tuple(rec.sig_name), "wfdb", uid=f"ptbxl-{ecg_id}")


def cinc(record: str) -> Ecg:
    """A CinC 2021 MATLAB v4 record; the header is parsed by hand (wfdb rejects some)."""
    from scipy.io import loadmat

    found = sorted(shared_data("cinc2021-samples").glob(f"*/{record}.hea"))
    if not found:
        pytest.skip(f"CinC record {record} not present")
    hea = found[0]
    lines = hea.read_text().splitlines()
    n_leads, fs = int(lines[0].split()[1]), float(lines[0].split()[2])
    specs = [line.split() for line in lines[1:1 + n_leads]]
    gains = np.array([float(s[2].split("/")[0]) for s in specs])
    leads = tuple({"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(s[-1].upper(), s[-1]) for s in specs)
    val = loadmat(str(hea.with_suffix(".mat")))["val"].astype(np.float64)
    return Ecg(val / gains[:, None], fs, leads, "mat", uid=record)


def dicom(filename: str) -> Ecg:
    """First multiplex group via pydicom's waveform_array, converted to mV."""
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(shared_data("dicom-ecg", filename))
    group = ds.WaveformSequence[0]
    chans = group.ChannelDefinitionSequence
    names = [c.ChannelSourceSequence[0].CodeMeaning.split("(")[0].split()[-1] for c in chans]
    leads = tuple({"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(n.upper(), n) for n in names)
    unit = chans[0].ChannelSensitivityUnitsSequence[0].CodeValue
    signal = ds.waveform_array(0).T * _DICOM_UNITS_TO_MV[unit]
    return Ecg(signal, float(group.SamplingFrequency), leads, "dicom", uid=str(ds.SOPInstanceUID))
