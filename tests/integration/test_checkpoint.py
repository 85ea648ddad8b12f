"""Checkpoint format: save/load round trip, refusal of bad files, the bundled default model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_gateway.ecg import INDEPENDENT_LEADS
from ecg_gateway.errors import CheckpointError
from ecg_gateway.triage.model import (
    CATEGORY_NAMES,
    default_checkpoint_path,
    load_model,
    save_checkpoint,
)
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.preprocess import InputContract

CONTRACT = InputContract(fs=100, length=1000, leads=INDEPENDENT_LEADS)


def tiny_net(seed: int = 0) -> TriageNet:
    torch.manual_seed(seed)
    return TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16).eval()


def _save(path: Path, net: TriageNet | None = None, **kw) -> str:  # type: ignore[no-untyped-def]
    kw.setdefault("metadata", {"model_id": "tiny-1", "metrics": {"auc": [0.9, 0.8]}, "git": None})
    kw.setdefault("thresholds", {"acute": 0.2})
    return save_checkpoint(path, net or tiny_net(), CONTRACT, **kw)


def test_round_trip_gives_the_same_probabilities(tmp_path: Path) -> None:
    net = tiny_net()
    path = tmp_path / "m.pt"
    sha = _save(path, net)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    model = load_model(path, device="cpu")
    assert (model.model_id, model.sha256, model.placeholder) == ("tiny-1", sha, False)
    assert model.contract == CONTRACT and model.thresholds == {"acute": 0.2}
    assert model.metadata["metrics"] == {"auc": [0.9, 0.8]} and model.device.type == "cpu"
    x = np.random.default_rng(0).normal(size=(3, 8, 1000)).astype(np.float32)
    with torch.inference_mode():
        want = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    probs = model.predict(x)
    assert probs.shape == (3, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "ecg-gateway.triage/2" and len(payload["members"]) == 1
    assert not any(k.startswith("aux.") for k in payload["members"][0])
    assert payload["arch_kwargs"]["aux_head"] is False
    assert model.n_statements == 0 and model.predict_full(x)[1].shape == (3, 0)


def test_class_order_is_mapped_to_category_order(tmp_path: Path) -> None:
    net = tiny_net()
    _save(tmp_path / "a.pt", net)
    _save(tmp_path / "b.pt", net, class_order=list(reversed(CATEGORY_NAMES)))
    x = np.random.default_rng(1).normal(size=(2, 8, 1000)).astype(np.float32)
    straight = load_model(tmp_path / "a.pt", "cpu").predict(x)
    reversed_ = load_model(tmp_path / "b.pt", "cpu").predict(x)
    np.testing.assert_allclose(reversed_, straight[:, ::-1], atol=1e-7)


def _one_line(exc: pytest.ExceptionInfo[CheckpointError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_t8_missing_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "absent.pt")
    assert "not found" in _one_line(exc)
    good = tmp_path / "good.pt"
    _save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 100)
    for path in (truncated, junk):
        with pytest.raises(CheckpointError) as exc:
            load_model(path)
        assert "unreadable" in _one_line(exc)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("code ran",))


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "x", "obj": _Evil()}, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert "unreadable" in _one_line(exc)


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p.update(format="other/9"), "not an ecg-gateway"),
    (lambda p: p.update(arch="ResNet"), "unsupported architecture"),
    (lambda p: p["contract"].update(fs=-1.0), "bad input contract"),
    (lambda p: p["contract"].update(length=500), "does not match the input contract"),
    (lambda p: p.update(class_order=["normal", "acute"]), "class_order"),
    (lambda p: p.update(thresholds={"acute": 1.5}), "thresholds"),
    (lambda p: p.update(members=[]), "no weights"),
    (lambda p: p.update(acute_flag_budgets={"1.5": 0.1}), "flag budgets"),
    (lambda p: p.update(windows={"length": 250, "stride": 125}), "does not match the input contract"),
    (lambda p: p.update(statements={"codes": ["NORM"], "descriptions": ["normal ECG"],
                                    "categories": ["normal"], "thresholds": [0.5]}), "statement head"),
    (lambda p: p.update(statements={"codes": ["NORM"]}), "bad windows, statements"),
    (lambda p: p["members"][0].pop("head.4.bias"), "weights do not fit"),
    (lambda p: p["members"][0].update({"head.4.bias": torch.zeros(7)}), "weights do not fit"),
    (lambda p: p["members"][0].update({"head.4.bias": torch.full((4,), float("nan"))}), "non-finite"),
])
def test_inconsistent_checkpoints_are_refused(tmp_path: Path, mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.pt"
    _save(path)
    payload = torch.load(path, weights_only=True)
    mutate(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    assert reason in _one_line(exc)


def test_save_refuses_non_plain_metadata(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="metadata.when"):
        _save(tmp_path / "m.pt", metadata={"when": object()})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_t8_cuda_without_gpu_is_refused(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="cuda"):
        load_model(tmp_path / "m.pt", device="cuda")
    assert load_model(tmp_path / "m.pt", device="auto").device.type == "cpu"


def test_paper_sized_network_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TriageNet(in_leads=8, fs=500, length=5000).eval()
    contract = InputContract(fs=500, length=5000, leads=INDEPENDENT_LEADS)
    save_checkpoint(tmp_path / "paper.pt", net, contract, metadata={"model_id": "paper"})
    model = load_model(tmp_path / "paper.pt", "cpu")
    assert model.net.conv_depth == 37 and model.net.arch_kwargs()["dilation"] == 100
    x = np.random.default_rng(2).normal(size=(1, 8, 5000)).astype(np.float32)
    with torch.inference_mode():
        want = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(model.predict(x), want, atol=1e-6)


def test_no_path_loads_the_checkpoint_shipped_in_the_wheel_with_its_100hz_contract() -> None:
    path = default_checkpoint_path()
    assert path.is_file() and path.stat().st_size <= 25 * 1024 * 1024
    assert path.parent.name == "triage" and path.parent.parent.name == "ecg_gateway"  # shipped in the wheel
    model = load_model(None, "cpu")
    assert model.path == path
    if model.placeholder:  # until training ships the trained model
        assert model.model_id == "triage-placeholder-0"
    assert model.contract.fs == 100 and model.contract.length == 1000
    assert model.contract.leads == INDEPENDENT_LEADS and model.net.conv_depth == 37
