"""Pure decoder checks for inputs a network peer cannot even send."""

from __future__ import annotations

import pytest

from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.dicom import decode_dataset, decode_dicom_bytes, validate_uid
from tests.support.dicom_builders import ecg_dataset


@pytest.mark.parametrize("uid", ["1." + "2" * 70, "1.2\x003", "../x", "", "1.2.abc"])
def test_t15_bad_uids_are_rejected(uid: str) -> None:
    with pytest.raises(InvalidEcgError):
        validate_uid(uid, "SOPInstanceUID")


def test_real_cart_uid_with_empty_component_is_accepted() -> None:
    assert validate_uid("1.2.826.0.1.34471.2.44.6.20021122091000..1", "X").endswith("..1")


def test_t10_garbage_bytes_are_undecodable() -> None:
    with pytest.raises(UndecodableError):
        decode_dicom_bytes(b"\x00" * 10)


def test_median_only_group_order_still_picks_rhythm() -> None:
    ds = ecg_dataset()
    median = ds.WaveformSequence[0].copy()
    median.MultiplexGroupLabel = "MEDIAN BEAT"
    ds.WaveformSequence.insert(0, median)
    ecg = decode_dataset(ds)
    assert ecg.n_samples == 5000
