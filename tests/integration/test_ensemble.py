"""Format-2 checkpoints: sliding windows, ensemble members, the statement head, flag budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_gateway.ecg import INDEPENDENT_LEADS
from ecg_gateway.errors import CheckpointError
from ecg_gateway.triage.ensemble import WindowedEnsemble, WindowSpec
from ecg_gateway.triage.model import (
    StatementVocabulary,
    load_model,
    save_checkpoint,
    set_operating_point,
)
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.preprocess import InputContract
from ecg_gateway.triage.service import MAX_STATEMENTS, Triager, select_statements
from tests.support import real_ecgs

CONTRACT = InputContract(fs=100.0, length=1000, leads=INDEPENDENT_LEADS)
WINDOWS = WindowSpec(length=250, stride=125)
CODES = ("NORM", "SR", "AFIB", "STACH", "IMI", "LVH")
VOCABULARY = StatementVocabulary(
    CODES, ("normal ECG", "sinus rhythm", "atrial fibrillation", "sinus tachycardia",
            "inferior myocardial infarction", "left ventricular hypertrophy"),
    ("normal", "normal", "subacute", "abnormal_not_acute", "subacute", "abnormal_not_acute"),
    (0.5, 0.5, 0.3, 0.4, 0.2, 0.6))


def member(seed: int) -> TriageNet:
    torch.manual_seed(seed)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16, head="pool", length=250,
                    n_statements=len(CODES))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is tested
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def save(path: Path, members: list[TriageNet], **kw) -> str:  # type: ignore[no-untyped-def]
    kw.setdefault("statements", VOCABULARY)
    kw.setdefault("windows", WINDOWS)
    kw.setdefault("flag_budgets", {0.05: 0.4, 0.1: 0.3, 0.15: 0.2, 0.2: 0.1})
    return save_checkpoint(path, members, CONTRACT, thresholds={"acute": 0.3},
                           metadata={"model_id": "tiny-v2"}, **kw)


def by_hand(members: list[TriageNet], x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Window by window, member by member: mean triage softmax, max statement sigmoid."""
    triage, statements = [], []
    with torch.no_grad():
        for start in range(0, 1000 - 250 + 1, 125):
            outs = [m(x[:, :, start:start + 250]) for m in members]
            triage.append(torch.stack([torch.softmax(o[:, :4], 1) for o in outs]).mean(0))
            statements.append(torch.stack([torch.sigmoid(o[:, 4:]) for o in outs]).mean(0))
    return torch.stack(triage, 1).mean(1).numpy(), torch.stack(statements, 1).amax(1).numpy()


def test_window_spec_counts_and_refuses_nonsense() -> None:
    assert WINDOWS.count(1000) == 7 and WindowSpec(250, 250).count(1000) == 4 and WINDOWS.count(200) == 1
    assert WindowSpec.from_dict(WINDOWS.to_dict()) == WINDOWS
    with pytest.raises(ValueError, match="aggregations"):
        WindowSpec(250, 125, triage="median")


def test_ensemble_checkpoint_round_trips_through_every_runner(tmp_path: Path) -> None:
    """Eager, CPU rewrite and TorchScript lanes all give the by-hand windows x members result."""
    members = [member(1), member(2)]
    save(tmp_path / "m.pt", members)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 8, 1000)).astype(np.float32))
    want_triage, want_statements = by_hand(members, x)
    for kwargs in ({"optimize": False}, {}, {"cpu_cores": 2}):
        model = load_model(tmp_path / "m.pt", "cpu", **kwargs)
        triage, statements = model.predict_full(x.numpy())
        np.testing.assert_allclose(triage, want_triage, atol=2e-5)
        np.testing.assert_allclose(statements, want_statements, atol=2e-5)
    assert model.lanes == 2 and len(model.members) == 2 and model.n_statements == len(CODES)
    for n in (1, 3, 17):  # the traced lanes generalise over batch sizes
        np.testing.assert_allclose(model.predict(x[:n].numpy() if n <= 5 else np.tile(x.numpy(), (4, 1, 1))[:n]),
                                   by_hand(members, x[:n] if n <= 5 else torch.tile(x, (4, 1, 1))[:n])[0],
                                   atol=2e-5)


def test_half_precision_weights_halve_the_file_and_keep_the_outputs(tmp_path: Path) -> None:
    members = [member(1), member(2)]
    save(tmp_path / "full.pt", members)
    save(tmp_path / "half.pt", members, half=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.75 * (tmp_path / "full.pt").stat().st_size
    payload = torch.load(tmp_path / "half.pt", weights_only=True)
    dtypes = {v.dtype for v in payload["members"][0].values()}
    assert torch.float16 in dtypes and torch.float32 in dtypes  # BatchNorm and biases stay float32
    x = np.random.default_rng(1).normal(size=(4, 8, 1000)).astype(np.float32)
    full, half = load_model(tmp_path / "full.pt", "cpu"), load_model(tmp_path / "half.pt", "cpu")
    np.testing.assert_allclose(half.predict(x), full.predict(x), atol=5e-3)


def test_flag_budget_picks_the_threshold_and_an_explicit_threshold_wins(tmp_path: Path) -> None:
    save(tmp_path / "m.pt", [member(1)])
    model = set_operating_point(load_model(tmp_path / "m.pt", "cpu"), 0.15, None)
    assert model.thresholds["acute"] == 0.2 and model.acute_budget == 0.15
    model = set_operating_point(model, 0.1, 0.07)
    assert model.thresholds["acute"] == 0.07 and model.acute_budget is None
    with pytest.raises(CheckpointError, match=r"0\.12 is not in the checkpoint \(it has 0\.05, 0\.1, 0\.15, 0\.2\)"):
        set_operating_point(model, 0.12, None)
    save(tmp_path / "old.pt", [member(1)], flag_budgets=None)  # a checkpoint from before budgets
    old = set_operating_point(load_model(tmp_path / "old.pt", "cpu"), 0.1, None)
    assert old.acute_budget is None and old.thresholds == {"acute": 0.3}  # its own threshold


def test_statements_behind_the_category_come_first_at_most_five() -> None:
    probs = np.array([0.9, 0.95, 0.31, 0.8, 0.25, 0.59])  # LVH below its 0.6 threshold
    chosen = select_statements(probs, VOCABULARY, "subacute")
    assert [s.code for s in chosen] == ["AFIB", "IMI", "STACH", "SR", "NORM"]
    assert chosen[0].description == "atrial fibrillation" and chosen[0].probability == pytest.approx(0.31)
    assert [s.code for s in select_statements(probs, VOCABULARY, "normal")][:2] == ["SR", "NORM"]
    assert len(select_statements(np.ones(6), VOCABULARY, "normal")) == MAX_STATEMENTS
    assert select_statements(probs, None, "normal") == ()


def test_triage_reports_statements_and_the_rule(tmp_path: Path) -> None:
    save(tmp_path / "m.pt", [member(1), member(2)])
    model = set_operating_point(load_model(tmp_path / "m.pt", "cpu"), 0.1, None)
    outcome = Triager(model).triage([real_ecgs.ptbxl(1)])[0].to_json()
    _, statements = model.predict_full(np.stack([
        __import__("ecg_gateway.triage.preprocess", fromlist=["preprocess"]).preprocess(real_ecgs.ptbxl(1), CONTRACT)]))
    expected = [c for c, p, t in zip(CODES, statements[0], VOCABULARY.thresholds, strict=True) if p >= t]
    assert sorted(s["code"] for s in outcome["statements"]) == sorted(expected)[:MAX_STATEMENTS]
    assert outcome["decision"]["flag_budget"] == 0.1 and outcome["decision"]["threshold"] == 0.3
    assert "the threshold that flags 10 % of ECGs" in outcome["decision"]["text"]


def test_windowed_ensemble_refuses_no_members() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        WindowedEnsemble([], 4, 1000, WINDOWS)
