"""Training and evaluation end to end on a handful of real records (CPU, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_gateway.triage.model import default_checkpoint_path, load_model
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.optimize import bf16_supported
from model_training import cache
from model_training.labels import MAPPING_VERSION
from model_training.train import TrainConfig, train
from tests.conftest import REPO, shared_data


@pytest.fixture(scope="module")
def tiny_arrays() -> cache.PtbxlArrays:
    """4 real records from each of folds 1, 2, 9 and 10."""
    return cache.build(shared_data("ptbxl"), None, folds=[1, 2, 9, 10], per_fold=4, progress=False)


def _cfg(out: Path, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = dict(out=str(out), epochs=1, batch_size=4, widths=[16, 32], blocks_per_group=2,
                device="cpu", train_folds=[1, 2], val_folds=[9], num_threads=1, model_id="smoke-1")
    base.update(kw)
    return TrainConfig(**base)


def test_smoke_training_writes_a_loadable_checkpoint_and_resumes(tmp_path: Path,
                                                                 tiny_arrays: cache.PtbxlArrays) -> None:
    summary = train(_cfg(tmp_path, max_steps=2), tiny_arrays, progress=False)
    assert summary["steps"] == 2 and summary["epochs_run"] == 1
    model = load_model(tmp_path / "model.pt", device="cpu")
    meta = model.metadata
    assert meta["model_id"] == "smoke-1" and meta["placeholder"] is False
    assert meta["mapping_version"] == MAPPING_VERSION
    assert meta["data_manifest_hash"] == tiny_arrays.manifest_hash and len(meta["data_manifest_hash"]) == 64
    assert 0.0 <= model.thresholds["acute"] <= 1.0
    probs = model.predict(np.zeros((2, 8, 1000), np.float32))
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    resumed = train(_cfg(tmp_path, epochs=2), tiny_arrays, resume=True, progress=False)
    assert resumed["epochs_run"] == 2 and resumed["steps"] == 2 + 2  # 8 train records / batch 4
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_training_is_deterministic_for_a_seed(tmp_path: Path, tiny_arrays: cache.PtbxlArrays) -> None:
    for run in ("a", "b"):
        train(_cfg(tmp_path / run, max_steps=2, seed=3), tiny_arrays, progress=False)
    sa = torch.load(tmp_path / "a" / "best_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "best_state.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_evaluate_cli_writes_card_plots_and_ships(tmp_path: Path, tiny_arrays: cache.PtbxlArrays) -> None:
    train(_cfg(tmp_path / "run", max_steps=1), tiny_arrays, progress=False)
    cache_file = tmp_path / "tiny.npz"
    cache.save(tiny_arrays, cache_file)
    cinc = shared_data("cinc2021-samples")
    shipped, report = tmp_path / "shipped.pt", tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "model_training", "evaluate", "--checkpoint", str(tmp_path / "run" / "model.pt"),
         "--cache", str(cache_file), "--cinc", str(cinc), "--report-dir", str(report),
         "--card", str(tmp_path / "CARD"), "--bootstrap", "50", "--target-sensitivity", "0.9",
         "--ship", str(shipped)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((tmp_path / "CARD.json").read_text())
    assert set(card["evaluation"]) == {"ptbxl_fold10", "cinc_external", "acute_operating_points"}
    assert card["evaluation"]["cinc_external"]["info"]["n_records"] == 100  # 127 minus 27 HR*
    assert card["evaluation"]["ptbxl_fold10"]["n_bootstrap"] == 50
    assert card["class_counts_per_fold"]["all"]["total"] == 16
    md = (tmp_path / "CARD.md").read_text()
    assert "overall c" in md and "| INJAS | acute |" in md and "unweighted mean" in md
    assert {p.name for p in report.glob("*.png")} == {
        "roc_ptbxl_fold10.png", "calibration_ptbxl_fold10.png",
        "roc_cinc_external.png", "calibration_cinc_external.png"}
    model = load_model(shipped, device="cpu")
    assert model.sha256 == card["sha256"]
    assert model.metadata["metrics"]["ptbxl_fold10"]["n"] == card["evaluation"]["ptbxl_fold10"]["n"]
    assert card["target_sensitivity"] == 0.9 and card["threshold_rule"] == "point"
    assert "fold 9, sensitivity >= 0.9," in model.metadata["acute_threshold_source"]
    points = card["evaluation"]["acute_operating_points"]
    assert [(r["rule"], r["target_sensitivity"], r["shipped"]) for r in points] == [
        ("point", 0.8, False), ("point", 0.85, False), ("point", 0.9, True), ("point", 0.95, False),
        ("lower-bound", 0.9, False)]
    assert points[2]["threshold"] == card["thresholds"]["acute"]
    assert "| 0.90 (lower bound) |" in md and "(shipped) |" in md
    # 16 real PTB-XL records: every labelled record has at least one statement of its category
    counts_all = card["class_counts_per_fold"]["all"]
    assert all(sum(codes.values()) >= counts_all[name] for name, codes in card["label_sources"].items())
    assert sum(counts_all[name] for name in card["label_sources"]) > 0 and "| statement (records) |" in md
    assert model.thresholds["acute"] == card["thresholds"]["acute"]


def test_evaluate_refuses_a_target_sensitivity_outside_0_1() -> None:
    proc = subprocess.run([sys.executable, "-m", "model_training", "evaluate", "--checkpoint", "x.pt",
                           "--target-sensitivity", "1.5"], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "must be in (0, 1], got 1.5" in proc.stderr


def test_shipped_default_model_regression() -> None:
    """The bundled model on a fixed subset (first 64 labelled fold-10 records) reproduces the
    probabilities recorded at export (report/predictions_ptbxl_fold10.npz) within 1e-3."""
    model = load_model(default_checkpoint_path(), device="cpu")
    meta = model.metadata
    assert meta["placeholder"] is False and meta["model_id"].startswith("ecg-triage-ptbxl100")
    assert meta["mapping_version"] == MAPPING_VERSION and len(meta["data_manifest_hash"]) == 64
    assert meta["git_revision"] and 0.0 < model.thresholds["acute"] < 1.0
    # regression floor: the shipped model measured overall c 0.877 (0.863-0.889), PDI 0.729
    assert meta["metrics"]["ptbxl_fold10"]["overall_c"]["value"][0] >= 0.86
    assert meta["metrics"]["ptbxl_fold10"]["pdi"]["value"][0] >= 0.70
    recorded = np.load(REPO / "model_training" / "report" / "predictions_ptbxl_fold10.npz")
    subset = cache.build(shared_data("ptbxl"), None, folds=[10], per_fold=64, progress=False)
    subset = subset.subset(subset.label >= 0)
    from model_training.evaluate import predict_ecgs

    probs = predict_ecgs(model, [subset.ecg(i) for i in range(len(subset.ecg_id))])
    where = {key: i for i, key in enumerate(recorded["keys"].tolist())}
    rows = [where[str(int(e))] for e in subset.ecg_id]
    assert np.array_equal(recorded["labels"][rows], subset.label)
    assert np.abs(probs - recorded["probs"][rows]).max() < 1e-3


def test_ema_run_keeps_the_better_of_raw_and_ema_weights(tmp_path: Path,
                                                          tiny_arrays: cache.PtbxlArrays) -> None:
    """With --ema each epoch scores both weight sets on validation and keeps the better one."""
    from model_training.train import (
        _better_on_validation,
        _split,
        model_inputs,
        predict_probs,
        val_score,
    )

    summary = train(_cfg(tmp_path, epochs=2, ema=0.5), tiny_arrays, progress=False)
    assert len(summary["history"]) == 2
    assert all(h["weights"] in ("raw", "ema") for h in summary["history"])
    va = _split(tiny_arrays, [9])
    x_va = torch.from_numpy(model_inputs(va))
    model = load_model(tmp_path / "model.pt", device="cpu", optimize=False)
    best = max(summary["history"], key=lambda h: h["score"])
    kept = val_score(va.label.astype(np.int64), predict_probs(model.net, x_va))
    assert kept["score"] == pytest.approx(best["score"], abs=1e-6)  # model.pt holds the chosen weights

    torch.manual_seed(0)
    nets = [TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16) for _ in range(2)]
    scores = [val_score(va.label.astype(np.int64), predict_probs(n, x_va))["score"] for n in nets]
    chosen, chosen_scores = _better_on_validation(nets[0], nets[1], x_va, va)
    assert chosen is nets[int(np.argmax(scores))] and chosen_scores["score"] == max(scores)


@pytest.mark.skipif(not bf16_supported(),
                    reason="this CPU has no native oneDNN bfloat16 (AMX/AVX512-BF16): --cpu-bf16 is refused here")
def test_cpu_bf16_training_steps_run_in_bfloat16_and_save_float32(tmp_path: Path,
                                                                  tiny_arrays: cache.PtbxlArrays) -> None:
    """Same seed, same data: the bf16-autocast steps move the weights differently from float32
    ones (so autocast really ran), and the checkpoint still holds float32 weights."""
    for run, bf16 in (("fp32", False), ("bf16", True)):
        train(_cfg(tmp_path / run, max_steps=2, seed=5, cpu_bf16=bf16), tiny_arrays, progress=False)
    s32 = torch.load(tmp_path / "fp32" / "best_state.pt", weights_only=True)
    s16 = torch.load(tmp_path / "bf16" / "best_state.pt", weights_only=True)
    floats = [k for k in s16 if s16[k].is_floating_point()]
    assert all(s16[k].dtype == torch.float32 for k in floats)
    assert any(not torch.equal(s16[k], s32[k]) for k in floats)
    model = load_model(tmp_path / "bf16" / "model.pt", device="cpu")
    assert np.isfinite(model.predict(np.zeros((1, 8, 1000), np.float32))).all()


def test_cpu_bf16_is_refused_with_one_line_where_the_cpu_lacks_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The CPU capability is the only thing faked: the refusal comes before any data loads."""
    from model_training import cli
    from model_training import train as train_module

    monkeypatch.setattr(train_module, "bf16_supported", lambda: False)
    code = cli.main(["train", "--cpu-bf16", "--device", "cpu", "--cache", str(Path("/nonexistent.npz"))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--cpu-bf16 needs" in err
    with pytest.raises(ValueError, match="bfloat16 natively"):
        train(TrainConfig(out="unused", device="cpu", cpu_bf16=True), None)  # type: ignore[arg-type]
