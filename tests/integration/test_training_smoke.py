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
from model_training.labels import MAPPING_VERSION, MAPPINGS
from model_training.policy import budget_threshold
from model_training.train import TrainConfig, model_inputs, train
from tests.support.paths import REPO, shared_data


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


def test_pack_and_evaluate_cli_write_an_ensemble_card_and_ship(tmp_path: Path,
                                                               tiny_arrays: cache.PtbxlArrays) -> None:
    """Two members -> pack (choices on fold 9) -> evaluate (fold 10 under both mappings, flag
    budgets, statements, CinC) -> the shipped checkpoint carries the card's thresholds."""
    for seed in (1, 2):
        train(_cfg(tmp_path / f"m{seed}", max_steps=1, seed=seed), tiny_arrays, progress=False)
    cache_file = tmp_path / "tiny.npz"
    cache.save(tiny_arrays, cache_file)
    packed = tmp_path / "ensemble.pt"
    proc = subprocess.run([sys.executable, "-m", "model_training", "pack", str(tmp_path / "m1"),
                           str(tmp_path / "m2"), "--out", str(packed), "--cache", str(cache_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    choices = json.loads(packed.with_suffix(".json").read_text())
    assert choices["layout"] in ("w125", "w250", "w500", "whole") and 1 <= len(choices["members"]) <= 2
    assert set(choices["flag_budgets"]) == {"0.05", "0.1", "0.15", "0.2"}
    # the operating point is the one serving computes from the written (float16) checkpoint
    fold9 = tiny_arrays.with_mapping("2.0").subset(tiny_arrays.fold == 9)
    fold9 = fold9.subset(fold9.label >= 0)
    served = load_model(packed, device="cpu").predict(model_inputs(fold9))
    assert choices["flag_budgets"]["0.1"] == budget_threshold(served, 0.10)
    cinc = shared_data("cinc2021-samples")
    shipped, report = tmp_path / "shipped.pt", tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "model_training", "evaluate", "--checkpoint", str(packed),
         "--cache", str(cache_file), "--cinc", str(cinc), "--report-dir", str(report),
         "--card", str(tmp_path / "CARD"), "--bootstrap", "50", "--ship", str(shipped)],
        cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((tmp_path / "CARD.json").read_text())
    assert set(card["evaluation"]) == {"ptbxl_fold9", "ptbxl_fold10", "ptbxl_fold10_mapping_1_0",
                                       "cinc_external", "flag_budgets", "acute_operating_points",
                                       "statements_fold10"}
    assert card["evaluation"]["cinc_external"]["info"]["n_records"] == 100  # 127 minus 27 HR*
    assert card["evaluation"]["ptbxl_fold10"]["n_bootstrap"] == 50
    assert card["class_counts_per_fold"]["all"]["total"] == 16
    assert card["class_counts_per_fold_mapping_1_0"]["all"]["total"] == 16
    budgets = card["evaluation"]["flag_budgets"]
    assert [r["budget"] for r in budgets] == [0.05, 0.1, 0.15, 0.2] and [r["shipped"] for r in budgets] == [
        False, True, False, False]
    assert budgets[1]["threshold"] == card["thresholds"]["acute"] and card["threshold_rule"] == "budget"
    assert set(budgets[1]["ptbxl_fold10"]) == {"sensitivity", "ppv", "flagged", "n_acute"}
    statements = card["evaluation"]["statements_fold10"]
    assert statements["n_records"] == 4 and statements["n_statements"] == 0  # 4 x NORM+SR: nothing varies
    md = (tmp_path / "CARD.md").read_text()
    assert "overall c" in md and "| INJAS | subacute |" in md and "unweighted mean" in md
    assert "Acute flag budgets" in md and "(shipped)" in md and "Macro-AUC" in md
    assert {p.name for p in report.glob("*.png")} == {
        "roc_ptbxl_fold10.png", "calibration_ptbxl_fold10.png",
        "roc_cinc_external.png", "calibration_cinc_external.png"}
    model = load_model(shipped, device="cpu")
    assert model.sha256 == card["sha256"] and len(model.members) == len(choices["members"])
    assert model.metadata["metrics"]["ptbxl_fold10"]["n"] == card["evaluation"]["ptbxl_fold10"]["n"]
    assert "flags 10% of fold-9 ECGs" in model.metadata["acute_threshold_source"]
    assert model.thresholds["acute"] == card["thresholds"]["acute"] and model.n_statements == 71
    assert {round(b, 2) for b in model.flag_budgets} == {0.05, 0.1, 0.15, 0.2}
    # 16 real PTB-XL records: every labelled record has at least one statement of its category
    counts_all = card["class_counts_per_fold"]["all"]
    assert all(sum(codes.values()) >= counts_all[name] for name, codes in card["label_sources"].items())
    assert sum(counts_all[name] for name in card["label_sources"]) > 0 and "| statement (records) |" in md


def test_threshold_rules_choose_on_fold_9() -> None:
    from model_training.evaluate import Predictions
    from model_training.export import choose_thresholds

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=400)
    labels = rng.integers(0, 4, 400)
    val = Predictions("v", labels, probs, [str(i) for i in range(400)])

    class Model:
        thresholds = {"acute": 0.5}

    thresholds, budgets, words = choose_thresholds(Model(), val, "budget", 0.1, 0.95)
    assert thresholds["acute"] == budgets[0.1] and words == "flags 10% of fold-9 ECGs"
    assert abs((probs[:, 3] >= budgets[0.1]).mean() - 0.1) < 0.01
    thresholds, _, words = choose_thresholds(Model(), val, "point", 0.1, 0.9)
    assert words == "sensitivity >= 0.9" and (probs[labels == 3, 3] >= thresholds["acute"]).mean() >= 0.9


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
    known = {m.version for m in MAPPINGS.values()}
    assert meta["mapping_version"] in known and len(meta["data_manifest_hash"]) == 64
    assert meta["git_revision"] and 0.0 < model.thresholds["acute"] < 1.0
    from ecg_gateway.triage.model import set_operating_point

    # the default budget (10 %) is in the checkpoint, so serve flags by it, not by an old threshold
    assert set_operating_point(model, 0.10, None).acute_budget == 0.10
    # regression floor: the shipped v2 measured overall c 0.893 (0.883-0.903), PDI 0.769 (0.743-0.795)
    # and acute sensitivity 0.864 at the 10 % budget (mapping 2.0); v1 had 0.886, 0.743 and 0.831
    fold10 = meta["metrics"]["ptbxl_fold10"]
    assert fold10["overall_c"]["value"][0] >= 0.88 and fold10["pdi"]["value"][0] >= 0.75
    assert fold10["sensitivity"]["value"][3] >= 0.83
    assert model.n_statements == 71  # the statements behind each category (issue #26)
    recorded = np.load(REPO / "model_training" / "report" / "predictions_ptbxl_fold10.npz")
    subset = cache.build(shared_data("ptbxl"), None, folds=[10], per_fold=64, progress=False)
    subset = subset.with_mapping(meta["mapping_version"])  # the labels it was exported under
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
        window_spec,
    )

    summary = train(_cfg(tmp_path, epochs=2, ema=0.5), tiny_arrays, progress=False)
    assert len(summary["history"]) == 2
    assert all(h["weights"] in ("raw", "ema") for h in summary["history"])
    va = _split(tiny_arrays, [9])
    x_va = torch.from_numpy(model_inputs(va))
    model = load_model(tmp_path / "model.pt", device="cpu", optimize=False)
    best = max(summary["history"], key=lambda h: h["score"])
    kept = val_score(va.label.astype(np.int64), predict_probs(model.net, x_va, window_spec(_cfg(tmp_path))))
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


def test_own_statement_head_trains_and_validates(tmp_path: Path, tiny_arrays: cache.PtbxlArrays) -> None:
    """The alternative recipe's switches run end to end (a statement head of its own, no gain jitter)."""
    summary = train(_cfg(tmp_path, max_steps=1, statement_head="own", gain_jitter=0.0), tiny_arrays,
                    progress=False)
    assert summary["config"]["statement_head"] == "own" and "statement_auc" in summary["val"]
    model = load_model(tmp_path / "model.pt", device="cpu")
    assert model.net.arch_kwargs()["statement_head"] == "own" and model.n_statements == 71


def test_oversampled_statements_are_drawn_that_many_times_per_epoch(tmp_path: Path,
                                                                     tiny_arrays: cache.PtbxlArrays) -> None:
    """Records listing an oversampled statement come back COPIES times in an epoch's pool, the
    rest once; the epoch's step count follows the pool, and the factor is in the metadata."""
    from model_training.labels import statement_codes
    from model_training.train import epoch_pool

    train_part = tiny_arrays.subset(np.isin(tiny_arrays.fold, [1, 2]))
    listed = ~np.isnan(train_part.likelihoods)
    column = int(np.argmax((listed.sum(axis=0) > 0) & (listed.sum(axis=0) < len(listed))))
    code, has = statement_codes()[column], listed[:, column]
    pool = epoch_pool(train_part, {code: 3})
    counts = np.bincount(pool, minlength=len(has))
    assert counts[has].tolist() == [3] * int(has.sum()) and counts[~has].tolist() == [1] * int((~has).sum())
    with pytest.raises(ValueError, match="unknown SCP statement"):
        epoch_pool(train_part, {"NOPE": 2})

    summary = train(_cfg(tmp_path, oversample={code: 3}), tiny_arrays, progress=False)
    assert summary["steps"] == len(pool) // 4
    assert load_model(tmp_path / "model.pt", device="cpu").metadata["training"]["oversample"] == {code: 3}


@pytest.mark.parametrize("arg, message", [("NOPE=3", "unknown SCP statement(s) NOPE"),
                                          ("2AVB", "wants CODE=COPIES"), ("2AVB=0", "wants CODE=COPIES")])
def test_a_bad_oversample_is_refused_with_one_line(arg: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any data loads (the cache path does not exist), exit 2."""
    from model_training import cli

    try:
        code = cli.main(["train", "--oversample", arg, "--cache", "/nonexistent.npz"])
    except SystemExit as exc:  # argparse's usage error
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().splitlines()[-1].count(message) == 1
