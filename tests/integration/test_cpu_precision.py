"""The optional bfloat16 CPU path (``model.cpu_precision: bfloat16``, decisions.md 27).

Real model, real PTB-XL records: bf16 may only be offered if it keeps the category of
>= 99.5 % of a reference set and every probability within 0.01 of float32 (issue #4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecg_gateway.config import Config, ModelConfig
from ecg_gateway.ecg import Ecg
from ecg_gateway.triage import model as model_module
from ecg_gateway.triage.decide import decide
from ecg_gateway.triage.model import load_model
from ecg_gateway.triage.optimize import bf16_supported
from ecg_gateway.triage.preprocess import preprocess
from ecg_gateway.worker import Worker
from tests.support import synthetic
from tests.support.paths import shared_data
from tests.support.synthetic import decode_npz, write_tiny_checkpoint

needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16 in oneDNN")


def ptbxl_reference(contract, n: int = 512) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The bench's reference set: every 42nd of the sorted 100 Hz records, preprocessed."""
    wfdb = pytest.importorskip("wfdb")
    heads = sorted(shared_data("ptbxl", "records100").glob("*/*.hea"))[:: 21837 // n][:n]
    xs = []
    for hea in heads:
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        xs.append(preprocess(Ecg(rec.p_signal.T, float(rec.fs), tuple(rec.sig_name), "wfdb"), contract))
    return np.stack(xs)


@needs_bf16
def test_bf16_keeps_the_shipped_models_categories_on_ptbxl() -> None:
    fp32, bf16 = load_model(device="cpu"), load_model(device="cpu", cpu_precision="bfloat16")
    assert (fp32.precision, bf16.precision) == ("float32", "bfloat16")
    x = ptbxl_reference(fp32.contract)
    p32, p16 = fp32.predict(x), bf16.predict(x)
    c32 = [decide(p, fp32.thresholds) for p in p32]
    c16 = [decide(p, bf16.thresholds) for p in p16]
    assert np.abs(p32 - p16).max() <= 0.01
    assert np.mean([a == b for a, b in zip(c32, c16, strict=True)]) >= 0.995
    assert [a == "acute" for a in c32] == [b == "acute" for b in c16]
    assert not np.array_equal(p32, p16)  # it really ran in bf16


def test_bf16_request_falls_back_to_float32_without_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "bf16_supported", lambda: False)
    fallback = load_model(device="cpu", cpu_precision="bfloat16")
    assert fallback.precision == "float32"
    x = np.stack([preprocess(synthetic.synthetic_ecg(i), fallback.contract) for i in range(3)])
    np.testing.assert_array_equal(fallback.predict(x), load_model(device="cpu").predict(x))


@needs_bf16
def test_worker_loads_the_configured_precision_and_reports_it(sessions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.pt"
    write_tiny_checkpoint(path)
    config = Config(model=ModelConfig(path=str(path), device="cpu", cpu_precision="bfloat16"))
    worker = Worker(sessions, config, decode_npz)
    assert worker.ensure_model()
    assert worker.health_detail["precision"] == "bfloat16"


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_precision"):
        ModelConfig(cpu_precision="float16")  # type: ignore[arg-type]
