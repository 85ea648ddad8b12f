"""Signal-quality gate on real recordings and on real recordings with injected faults."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ecg_gateway.ecg import INDEPENDENT_LEADS, Ecg
from ecg_gateway.triage.quality import QualityReport, assess
from tests.support import real_ecgs


def _with_lead(ecg: Ecg, lead: str, values: np.ndarray) -> Ecg:
    signal = ecg.signal.copy()
    signal[ecg.leads.index(lead)] = values
    return replace(ecg, signal=signal)


def _codes(report: QualityReport) -> dict[str, str]:
    return dict(r.split(":", 1) if ":" in r else (r, "") for r in report.reasons)


@pytest.fixture(scope="module")
def clean() -> Ecg:
    return real_ecgs.ptbxl(1)


@pytest.mark.parametrize("load", [
    lambda: real_ecgs.ptbxl(1), lambda: real_ecgs.ptbxl(2), lambda: real_ecgs.ptbxl(5),
    lambda: real_ecgs.cinc("HR03961"), lambda: real_ecgs.cinc("E07500"), lambda: real_ecgs.cinc("A0689"),
    lambda: real_ecgs.dicom("pydicom_waveform_ecg.dcm"), lambda: real_ecgs.dicom("ecgtoolkit_Example.dcm"),
    lambda: real_ecgs.dicom("dcm-waveform_test_ecg.dcm"),
], ids=["ptbxl1", "ptbxl2", "ptbxl5", "cinc-HR03961", "cinc-E07500", "cinc-A0689",
        "dicom-eli250-1000Hz", "dicom-toolkit-500Hz", "dicom-ge-240Hz"])
def test_real_recordings_pass(load) -> None:  # type: ignore[no-untyped-def]
    report = assess(load())
    assert report.ok and report.reasons == (), report.reasons
    assert report.metrics["max_noise_mv"] < 0.15 and report.metrics["flat_leads"] == 0


def test_real_electrode_failure_is_caught() -> None:
    # PTB-XL 12722: V4 goes dead half-way, V5 and V6 are flat for the whole record
    report = assess(real_ecgs.ptbxl(12722))
    assert not report.ok
    assert _codes(report) == {"flat_lead": "V5,V6", "lead_off": "V4"}


def test_real_records_with_zeroed_leads_are_caught() -> None:
    report = assess(real_ecgs.cinc("JS11438"))  # Chapman-Shaoxing record, chest leads all zero
    assert _codes(report) == {"flat_lead": "V1,V2,V3,V4,V5,V6"}


def test_flat_line(clean: Ecg) -> None:
    report = assess(replace(clean, signal=np.zeros_like(clean.signal)))
    assert report.reasons == ("flat_line",) and not report.ok


def test_lead_off_part_way(clean: Ecg) -> None:
    v2 = clean.lead("V2").copy()
    v2[300:650] = v2[300]  # electrode off for 3.5 s: the lead holds its last value
    report = assess(_with_lead(clean, "V2", v2))
    assert _codes(report) == {"lead_off": "V2"}
    assert report.metrics["max_lead_off_s"] >= 3.0


def test_pause_in_every_lead_is_not_lead_off(clean: Ecg) -> None:
    signal = clean.signal.copy()
    signal[:, 400:560] = 0.0  # 1.6 s of silence in all leads: a sinus pause, not an electrode
    assert assess(replace(clean, signal=signal)).ok


def test_clipping(clean: Ecg) -> None:
    lead_ii = clean.lead("II")
    rail = 0.6 * float(lead_ii.max())
    report = assess(_with_lead(clean, "II", np.minimum(lead_ii, rail)))
    assert _codes(report) == {"clipping": "II"}


def test_extreme_noise(clean: Ecg) -> None:
    rng = np.random.default_rng(0)
    noisy = clean.lead("V5") + rng.normal(scale=0.5, size=clean.n_samples)
    report = assess(_with_lead(clean, "V5", noisy))
    assert _codes(report) == {"noise": "V5"}
    mild = clean.lead("V5") + rng.normal(scale=0.05, size=clean.n_samples)
    assert assess(_with_lead(clean, "V5", mild)).ok  # ordinary noise still reads


def test_saturated_baseline(clean: Ecg) -> None:
    report = assess(_with_lead(clean, "V1", clean.lead("V1") + 40.0))
    assert _codes(report) == {"out_of_range": "V1"}


def test_too_short_and_missing(clean: Ecg) -> None:
    short = replace(clean, signal=clean.signal[:, :500])
    assert _codes(assess(short)) == {"too_short": ""}
    keep = [i for i, lead in enumerate(clean.leads) if lead != "V3"]
    no_v3 = Ecg(clean.signal[keep], clean.fs, tuple(clean.leads[i] for i in keep), "test")
    assert _codes(assess(no_v3)) == {"missing_lead": "V3"}
    gap = clean.lead("V4").copy()
    gap[100:110] = np.nan
    assert _codes(assess(_with_lead(clean, "V4", gap))) == {"missing_samples": "V4"}


def test_derived_leads_and_json(clean: Ecg) -> None:
    report = assess(clean, leads=("III", "aVF", *INDEPENDENT_LEADS))
    assert report.ok
    doc = report.to_json()
    assert doc["ok"] is True and doc["reasons"] == []
    assert all(isinstance(v, float) for v in doc["metrics"].values())  # type: ignore[union-attr]


def test_impossible_sampling_rate(clean: Ecg) -> None:
    report = assess(replace(clean, fs=0.0))
    assert not report.ok and report.reasons == ("bad_sampling_rate",)
