"""Build synthetic 12-lead ECG waveform datasets for tests (no PHI: obviously fake values)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
MDC_SUFFIX = {"I": 1, "II": 2, "III": 61, "aVR": 62, "aVL": 63, "aVF": 64,
              "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8}
LEADS = tuple(MDC_SUFFIX)


def synthetic_signal_mv(fs: float = 500.0, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """A plausible 12-lead-shaped signal in mV: QRS-like spikes at 72 bpm plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    beat = np.exp(-(((t % (60 / 72)) - 0.3) ** 2) / (2 * 0.012**2))
    waves = np.stack([(0.5 + 0.1 * i) * beat + 0.1 * np.sin(2 * np.pi * 0.3 * t + i) for i in range(12)])
    return (waves + rng.normal(0, 0.01, waves.shape)).astype(np.float32)


def ecg_dataset(signal_mv: np.ndarray | None = None, fs: float = 500.0, *, leads: tuple[str, ...] = LEADS,
                sensitivity_uv: float = 2.5, sop_class: str = TWELVE_LEAD, uid: str | None = None,
                scheme: str = "MDC") -> Dataset:
    """A 12-lead ECG Waveform Storage dataset with one RHYTHM group, 16-bit SS."""
    if signal_mv is None:
        signal_mv = synthetic_signal_mv(fs)[[LEADS.index(lead) for lead in leads]]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "ECG"
    ds.PatientName = "TEST^SYNTHETIC"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.AccessionNumber = "ACC0001"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101115800"
    raw = np.round(signal_mv * 1000.0 / sensitivity_uv).astype("<i2")
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = raw.shape[0]
    group.NumberOfWaveformSamples = raw.shape[1]
    group.SamplingFrequency = fs
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    channels = []
    for i, lead in enumerate(leads):
        ch = Dataset()
        ch.WaveformChannelNumber = i + 1
        source = Dataset()
        if scheme == "MDC":
            source.CodeValue, source.CodingSchemeDesignator = f"2:{MDC_SUFFIX[lead]}", "MDC"
        else:
            source.CodeValue, source.CodingSchemeDesignator = f"5.6.3-9-{MDC_SUFFIX[lead]}", "SCPECG"
        source.CodeMeaning = f"Lead {lead}"
        ch.ChannelSourceSequence = Sequence([source])
        ch.ChannelSensitivity = sensitivity_uv
        units = Dataset()
        units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "uV", "UCUM", "microvolt"
        ch.ChannelSensitivityUnitsSequence = Sequence([units])
        ch.ChannelSensitivityCorrectionFactor = 1
        ch.ChannelBaseline = 0
        ch.WaveformBitsStored = 16
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformData = raw.T.tobytes()  # channel-interleaved: C1S1, C2S1, ...
    ds.WaveformSequence = Sequence([group])
    return ds
