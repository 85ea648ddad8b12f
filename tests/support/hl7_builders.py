"""Build inbound HL7 v2 test messages from real recordings (reusable by other tests).

``waveform_oru`` writes a native-waveform ORU^R01 (Chapter 7 CD + NA/MA OBX) from integer
samples; ``ed_oru`` wraps any bytes (DICOM, aECG, MUSE, PDF) in a Base64 ED OBX;
``ptbxl_record`` reads a PTB-XL record with wfdb. All messages use ``\\r`` segment ends.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

DEFAULT_PATIENT = {
    "patient_id": "PAT-0001", "family": "DOE", "given": "JANE", "birth": "19600101", "sex": "F",
    "location": "CARDIO^101^1^HOSP", "placer": "PLC-77", "filler": "FIL-88",
}


def escape(text: str) -> str:
    """HL7 escaping for the default delimiters (escape char first)."""
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def msh(control_id: str, *, message_type: str = "ORU^R01^ORU_R01", version: str = "2.5.1",
        processing_id: str = "P", charset: str = "", accept_ack: str = "", app_ack: str = "",
        sending_app: str = "CART", sending_facility: str = "WARD1",
        timestamp: str = "20250101120000") -> str:
    fields = ["MSH", "^~\\&", sending_app, sending_facility, "ECGGW", "HOSP", timestamp, "",
              message_type, control_id, processing_id, version, "", "", accept_ack, app_ack, "",
              charset]
    return "|".join(fields).rstrip("|")


def patient_segments(patient: dict[str, str] | None = None) -> list[str]:
    p = {**DEFAULT_PATIENT, **(patient or {})}
    name = escape(p["family"]) + "^" + escape(p["given"])
    return [
        f"PID|1||{escape(p['patient_id'])}^^^HOSP^MR||{name}||{p['birth']}|{p['sex']}",
        f"PV1|1|O|{p['location']}",
        f"ORC|RE|{p['placer']}|{p['filler']}||CM",
        f"OBR|1|{p['placer']}|{p['filler']}|11524-6^EKG study^LN|||20250101115800",
    ]


def _cd(number: int, lead: str, fs: float, sensitivity: float, unit: str, baseline: float) -> str:
    return f"{number}&{lead}^^{sensitivity:g}&{unit}&&UCUM^1&{baseline:g}&0^{fs:g}"


def waveform_segments(samples: np.ndarray, leads: list[str] | tuple[str, ...], fs: float, *,
                      layout: str = "MA", sensitivity: float = 1.0, unit: str = "uV",
                      baseline: float = 0.0, start: str = "20250101115800",
                      chunk: int | None = None) -> list[str]:
    """OBX segments for ``samples`` ([leads, n] integers). layout: MA, NA or NA-groups.

    MA: one group, one CD OBX per lead, then MA OBX (``chunk`` samples each; all if None).
    NA: one group, one CD OBX per lead, then one NA OBX per lead in the same order.
    NA-groups: a TIM/CD/NA triple per lead, OBX-4 = lead number.
    """
    ints = np.asarray(samples)
    segs: list[str] = []

    def obx(value_type: str, ident: str, sub_id: int, value: str) -> None:
        segs.append(f"OBX|{len(segs) + 1}|{value_type}|{ident}|{sub_id}|{value}")

    if layout == "NA-groups":
        for i, lead in enumerate(leads, start=1):
            obx("TS", "TIME^TIM", i, start)
            obx("CD", f"{lead}^CHN", i, _cd(i, lead, fs, sensitivity, unit, baseline))
            obx("NA", f"{lead}^WAV", i, "^".join(map(str, ints[i - 1].tolist())))
        return segs
    obx("TS", "TIME^TIM", 1, start)
    for i, lead in enumerate(leads, start=1):
        obx("CD", f"{lead}^CHN", 1, _cd(i, lead, fs, sensitivity, unit, baseline))
    if layout == "NA":
        for i, lead in enumerate(leads):
            obx("NA", f"{lead}^WAV", 1, "^".join(map(str, ints[i].tolist())))
        return segs
    if layout != "MA":
        raise ValueError(layout)
    n = ints.shape[1]
    step = chunk or n
    for begin in range(0, n, step):
        block = ints[:, begin:begin + step].T.tolist()
        obx("MA", "ECG^WAV", 1, "~".join("^".join(map(str, row)) for row in block))
    return segs


def waveform_oru(samples: np.ndarray, leads: list[str] | tuple[str, ...], fs: float, *,
                 control_id: str = "CTRL-1", patient: dict[str, str] | None = None,
                 layout: str = "MA", **kwargs: object) -> bytes:
    msh_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in (
        "message_type", "version", "processing_id", "charset", "accept_ack", "app_ack",
        "sending_app", "sending_facility")}
    segs = [msh(control_id, **msh_kw), *patient_segments(patient),  # type: ignore[arg-type]
            *waveform_segments(samples, leads, fs, layout=layout, **kwargs)]  # type: ignore[arg-type]
    return ("\r".join(segs) + "\r").encode("ascii")


def ed_oru(payload: bytes, *, subtype: str = "DICOM", data_type: str = "application",
           control_id: str = "CTRL-ED-1", patient: dict[str, str] | None = None,
           extra_obx: list[str] | None = None, **msh_kw: str) -> bytes:
    """An ORU^R01 whose OBX-5 is ED: ``ECG^<type>^<subtype>^Base64^<data>``."""
    data = base64.b64encode(payload).decode("ascii")
    segs = [msh(control_id, **msh_kw), *patient_segments(patient), *(extra_obx or []),
            f"OBX|{len(extra_obx or []) + 1}|ED|11524-6^EKG study^LN|1|"
            f"ECG^{data_type}^{subtype}^Base64^{data}||||||F"]
    return ("\r".join(segs) + "\r").encode("ascii")


def ptbxl_record(path: Path) -> tuple[np.ndarray, tuple[str, ...], float]:
    """(integer samples [leads, n], lead names, fs) of a PTB-XL WFDB record (gain 1000/mV)."""
    import wfdb

    record = wfdb.rdrecord(str(path), physical=False)
    assert all(g == 1000.0 for g in record.adc_gain) and not any(record.baseline)
    return record.d_signal.T.astype(np.int64), tuple(record.sig_name), float(record.fs)


def cinc_record(path: Path) -> tuple[np.ndarray, tuple[str, ...], float]:
    """(integer samples, lead names, fs) of a CinC 2021 record (header + MATLAB v4 .mat)."""
    from scipy.io import loadmat

    header = path.with_suffix(".hea").read_text().splitlines()
    fs = float(header[0].split()[2])
    leads = tuple(line.split()[-1] for line in header[1:13])
    gains = {line.split()[2].split("/")[0] for line in header[1:13]}
    assert gains == {"1000"}, gains
    return loadmat(str(path.with_suffix(".mat")))["val"].astype(np.int64), leads, fs


def small_oru(control_id: str, patient: dict[str, str] | None = None) -> bytes:
    """A 250 Hz 8-lead synthetic ECG as an ORU^R01 with waveform OBX (about 60 KB)."""
    from tests.support.dicom_builders import synthetic_signal_mv

    samples = np.round(synthetic_signal_mv(fs=250.0)[[0, 1, 6, 7, 8, 9, 10, 11]] * 1000).astype(int)
    return waveform_oru(samples, ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"], 250.0, control_id=control_id,
                        patient=patient)
