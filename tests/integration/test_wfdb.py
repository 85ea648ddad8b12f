"""WFDB reader: PTB-XL FLAC 8-lead, PTB-XL original 12-lead, CinC .mat headers, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecg_gateway.errors import UndecodableError
from ecg_gateway.inbound.wfdb import header_comments, read_wfdb
from tests.support.paths import shared_data


def test_ptbxl_flac_record_matches_wfdb_physical_signal() -> None:
    wfdb = pytest.importorskip("wfdb")
    path = shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix("")
    ecg = read_wfdb(path)
    assert (ecg.fs, ecg.n_samples, ecg.uid) == (100.0, 1000, "00001_lr")
    assert ecg.leads == ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    ref = wfdb.rdrecord(str(path)).p_signal.T
    assert np.abs(ecg.signal - ref).max() < 1e-6
    assert ecg.signal[0, 0] == pytest.approx(-0.119)  # header initial value -119 uV
    assert ecg.with_standard_leads().signal.shape == (12, 1000)


def test_ptbxl_twelve_lead_record_keeps_its_limb_leads() -> None:
    ecg = read_wfdb(shared_data("ptbxl", "records100", "02000", "02166_lr.hea"))
    assert ecg.leads[:6] == ("I", "II", "III", "aVR", "aVL", "aVF")  # 'AVR' normalised
    assert len(ecg.leads) == 12


def test_cinc_georgia_header_naming_the_mat_file() -> None:
    hea = shared_data("cinc2021-samples", "training_sample", "E00271.hea")
    assert hea.read_text().startswith("E00271.mat ")  # the quirk wfdb.rdheader rejects
    ecg = read_wfdb(hea)
    assert (ecg.fs, ecg.signal.shape, ecg.uid) == (500.0, (12, 5000), "E00271")
    assert ecg.lead("II")[0] == pytest.approx(-0.073)  # initial value -73 at 1000/mV
    assert ecg.demographics.sex == "F"
    assert header_comments(hea)["Dx"] == "59118001"


def test_missing_and_garbled_headers_are_undecodable(tmp_path: Path) -> None:
    with pytest.raises(UndecodableError, match="cannot read WFDB header"):
        read_wfdb(tmp_path / "nothing")
    (tmp_path / "bad.hea").write_text("bad x y\n")
    with pytest.raises(UndecodableError, match="bad record line"):
        read_wfdb(tmp_path / "bad")
    (tmp_path / "short.hea").write_text("short 2 500 5000\nshort.mat 16 1000/mV 16 0 0 0 0 I\n")
    with pytest.raises(UndecodableError, match="declares 2 signals"):
        read_wfdb(tmp_path / "short.hea")
    (tmp_path / "nomat.hea").write_text("nomat 1 500 10\nnomat.mat 16 1000/mV 16 0 0 0 0 I\n")
    with pytest.raises(UndecodableError, match="cannot read nomat.mat"):
        read_wfdb(tmp_path / "nomat.hea")
