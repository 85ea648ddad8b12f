"""Train the shared TriageNet on PTB-XL (folds 1-8), selected on fold 9.

As in the group's code: focal loss (gamma 1) with per-class weights and an auxiliary head
(loss = L_main + 0.3 L_aux); beside it a multi-label head on all 71 SCP statements with
likelihood-aware targets (likelihood / 100, 1 for a statement given without one), which
teaches the shared features each finding behind a category and names them at inference.

The v2 recipe (the defaults; triage.md §6, after the PTB-XL benchmark): labels under mapping
2.0, random 2.5 s crops in training, sliding windows (stride half a window) for validation,
a concat-pool head, AdamW with a one-cycle schedule. ``--head flatten --crop 0 --schedule
plateau --optimizer adam --mapping 1.0`` is the v1 recipe. Augmentation on the device:
amplitude scaling, Gaussian noise, baseline wander (and a time shift without crops). Every
epoch ends with a resumable state (``last.pt``: weights, optimiser, schedule and random
states); the best epoch by the validation score (mean of overall c and PDI) is kept as
``best_state.pt``. At the end ``model.pt`` is written in the gateway's checkpoint format (a
one-member model; ``python -m model_training pack`` builds the shipped ensemble).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import Tensor

from ecg_gateway.ecg import CATEGORY_ORDER, INDEPENDENT_LEADS
from ecg_gateway.triage.ensemble import WindowedEnsemble, WindowSpec
from ecg_gateway.triage.model import StatementVocabulary, save_checkpoint
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.optimize import bf16_supported
from ecg_gateway.triage.preprocess import InputContract, preprocess
from model_training.cache import PtbxlArrays
from model_training.labels import statement_codes, statement_vocabulary
from model_training.metrics import macro_auc, overall_c, pdi
from model_training.policy import ACUTE, FLAG_BUDGETS, budget_threshold, statement_thresholds

log = structlog.get_logger(__name__)
K = len(CATEGORY_ORDER)


@dataclass
class TrainConfig:
    out: str
    epochs: int = 30
    batch_size: int = 128
    lr: float = 5e-3  # the peak of the one-cycle schedule; the start for plateau/cosine
    weight_decay: float = 1e-2
    gamma: float = 1.0  # focal loss; 0 = weighted cross-entropy
    class_weights: str = "sqrt"  # none | sqrt | inverse (of the training class frequency)
    aux_weight: float = 0.3
    statement_weight: float = 5.0  # multi-label SCP-statement head (mean BCE); 0 = off
    statement_targets: str = "likelihood"  # likelihood (all 71, likelihood-aware) | counted (v1: multi-hot)
    mapping: str = "2.0"  # triage label mapping (model_training/labels.py)
    head: str = "pool"  # pool (any length: crops and windows) | flatten (v1: fixed length)
    statement_head: str = "shared"  # shared (on the triage head's hidden layer) | own (its own hidden layer)
    crop: int = 250  # random crop length in samples (2.5 s at 100 Hz); 0 = the whole record
    optimizer: str = "adamw"  # adamw | adam
    patience: int = 100  # epochs without a better fold-9 score before stopping (one-cycle runs its course)
    seed: int = 0
    device: str = "auto"
    augment: bool = True
    gain_jitter: float = 0.2  # amplitude augmentation +-; 0 keeps voltages (voltage criteria, low voltage)
    dropout: float = 0.3  # in every block and head (the paper's 0.3)
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)
    train_folds: list[int] = field(default_factory=lambda: list(range(1, 9)))
    val_folds: list[int] = field(default_factory=lambda: [9])
    target_sensitivity: float = 0.95
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    blocks_per_group: int = 4
    model_id: str = "ecg-triage-ptbxl100-v2"
    num_threads: int | None = None
    time_limit_min: float | None = None  # stop (and finish cleanly) before this wall-clock budget
    schedule: str = "onecycle"  # onecycle (per step) | plateau (x0.5 after 3 flat epochs) | cosine
    ema: float | None = None  # decay of an EMA of the weights; each epoch keeps raw or EMA, the better
    cpu_bf16: bool = False  # bf16 autocast on CPU too (only where oneDNN runs bf16 natively: AMX/AVX512-BF16)
    oversample: dict[str, int] = field(default_factory=dict)  # SCP code -> copies per epoch of its records


CONTRACT = InputContract(fs=100.0, length=1000, leads=INDEPENDENT_LEADS, units="mV", scale=1.0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def model_inputs(arrays: PtbxlArrays, contract: InputContract = CONTRACT) -> np.ndarray:
    """Every record through the daemon's own preprocess(): training sees what serving sees."""
    return np.stack([preprocess(arrays.ecg(i), contract) for i in range(len(arrays.ecg_id))])


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    counts = np.bincount(labels, minlength=K).astype(float)
    freq = np.maximum(counts, 1) / counts.sum()
    power = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}[mode]
    weights = freq ** -power
    return weights / (weights * freq).sum()  # average weight over the data = 1


def focal_loss(logits: Tensor, target: Tensor, weight: Tensor, gamma: float) -> Tensor:
    """Class-weighted focal loss (Lin et al. 2017); gamma = 0 is weighted cross-entropy."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp * weight[target]
    return loss.sum() / weight[target].sum()


def epoch_pool(arrays: PtbxlArrays, oversample: dict[str, int]) -> np.ndarray:
    """Record indices one epoch draws from: each record once, a record listing an oversampled
    statement (at any likelihood) as many times as its largest factor. Rare rhythms such as
    AV blocks (a dozen training records each) are otherwise too few for the network to learn."""
    copies = np.ones(len(arrays.ecg_id), dtype=np.int64)
    if oversample:
        if arrays.likelihoods is None:
            raise ValueError("oversampling reads statements: rebuild the cache (python -m model_training cache)")
        column = {code: j for j, code in enumerate(statement_codes())}
        unknown = sorted(set(oversample) - set(column))
        if unknown:
            raise ValueError(f"unknown SCP statement(s) to oversample: {', '.join(unknown)}")
        for code, factor in oversample.items():
            listed = ~np.isnan(arrays.likelihoods[:, column[code]])
            copies[listed] = np.maximum(copies[listed], int(factor))
    return np.repeat(np.arange(len(copies)), copies)


def random_crops(x: Tensor, length: int, gen: torch.Generator) -> Tensor:
    """One random ``length``-sample crop per record of ``x [N, leads, full]`` (all leads alike)."""
    n, leads, full = x.shape
    if length <= 0 or length >= full:
        return x
    start = torch.randint(0, full - length + 1, (n,), generator=gen, device=x.device)
    idx = (start[:, None] + torch.arange(length, device=x.device)[None, :])[:, None, :]
    return torch.gather(x, 2, idx.expand(n, leads, length))


def window_spec(cfg: TrainConfig) -> WindowSpec | None:
    """The validation windows of a crop-trained net: crop-long, every half crop (the
    benchmark's 2.5 s windows at a 1.25 s stride); None for a whole-record net."""
    if cfg.crop <= 0 or cfg.crop >= CONTRACT.length:
        return None
    return WindowSpec(length=cfg.crop, stride=max(1, cfg.crop // 2))


def augment(x: Tensor, gen: torch.Generator, fs: float = CONTRACT.fs, shift: bool = True,
            gain: float = 0.2) -> Tensor:
    """Plausible recording variation: gain +-``gain`` (20 %), noise <= 0.03 mV, wander <= 0.15 mV,
    shift <= 0.5 s (no shift for crops: the crop already moves the record)."""
    n, leads, length = x.shape
    dev = x.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, device=dev)

    x = x * (1.0 - gain + 2 * gain * rand(n, 1, 1))
    x = x + 0.03 * rand(n, 1, 1) * torch.randn(x.shape, generator=gen, device=dev)
    t = torch.arange(length, device=dev) / fs
    freq = 0.05 + 0.45 * rand(n, 1, 1)
    phase = 2 * math.pi * rand(n, leads, 1)
    x = x + 0.15 * rand(n, leads, 1) * torch.sin(2 * math.pi * freq * t + phase)
    if not shift:
        return x
    shift = (torch.randint(-int(fs // 2), int(fs // 2) + 1, (n, 1), generator=gen, device=dev))
    idx = torch.arange(length, device=dev)[None, :] - shift
    valid = ((idx >= 0) & (idx < length)).to(x.dtype)[:, None, :]
    idx = idx.clamp(0, length - 1)[:, None, :].expand(n, leads, length)
    return torch.gather(x, 2, idx) * valid


@torch.no_grad()
def predict_all(net: TriageNet, x: Tensor, windows: WindowSpec | None = None,
                batch_size: int = 256) -> np.ndarray:
    """``[N, 4 + S]`` probabilities (triage, then statements) through the serving module
    (:class:`WindowedEnsemble`, one member): validation scores what serving runs."""
    net.eval()
    model = WindowedEnsemble([net], K, x.shape[-1], windows).eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        with _autocast(xb.device):  # float32 on CPU
            out.append(model(xb).float().cpu())
    width = K + int(net.arch_kwargs()["n_statements"])
    return torch.cat(out).numpy() if out else np.zeros((0, width), dtype=np.float32)


def predict_probs(net: TriageNet, x: Tensor, windows: WindowSpec | None = None) -> np.ndarray:
    """``[N, 4]`` triage probabilities."""
    return predict_all(net, x, windows)[:, :K]


def _autocast(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on CUDA; on CPU only when asked for (``--cpu-bf16``): with AMX a training
    step ran ~1.3x faster than float32 (decisions.md 30); elsewhere emulated bf16 is slower,
    so it is refused there."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)


def val_score(labels: np.ndarray, probs: np.ndarray, truth: np.ndarray | None = None) -> dict[str, float]:
    """Mean of overall c and PDI (the selection score); with ``truth`` (binary statements) and
    statement columns in ``probs``, also the statements' macro-AUC (reported, not selected on)."""
    c, p = overall_c(labels, probs[:, :K]), pdi(labels, probs[:, :K])
    score = np.nanmean([c, p]) if not (math.isnan(c) and math.isnan(p)) else math.nan
    out = {"overall_c": c, "pdi": p, "score": float(score)}
    if truth is not None and probs.shape[1] > K:
        out["statement_auc"] = macro_auc(truth, probs[:, K:])
    return out


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_bf16_refusal(cpu_bf16: bool, device: str) -> str | None:
    """Why ``--cpu-bf16`` cannot run here, or None: emulated bf16 is slower than float32."""
    if cpu_bf16 and _resolve_device(device).type == "cpu" and not bf16_supported():
        return "--cpu-bf16 needs a CPU on which oneDNN runs bfloat16 natively (AMX or AVX512-BF16)"
    return None


def _split(arrays: PtbxlArrays, folds: list[int]) -> PtbxlArrays:
    return arrays.subset(np.isin(arrays.fold, folds) & (arrays.label >= 0))


def train(cfg: TrainConfig, arrays: PtbxlArrays, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns the summary also written to ``out/summary.json``."""
    from tqdm import tqdm

    refusal = cpu_bf16_refusal(cfg.cpu_bf16, cfg.device)
    if refusal:
        raise ValueError(refusal)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = _resolve_device(cfg.device)
    arrays = arrays.with_mapping(cfg.mapping)
    tr, va = _split(arrays, cfg.train_folds), _split(arrays, cfg.val_folds)
    windows = window_spec(cfg)
    truth_va = va.statement_truth() if va.likelihoods is not None else None
    x_tr = torch.from_numpy(model_inputs(tr)).to(device)
    y_tr = torch.from_numpy(tr.label.astype(np.int64)).to(device)
    x_va = torch.from_numpy(model_inputs(va)).to(device)
    weights_np = class_weights(tr.label.astype(np.int64), cfg.class_weights)
    weights = torch.tensor(weights_np, dtype=torch.float32, device=device)
    s_tr = _statement_targets(tr, cfg, device)
    net = TriageNet(in_leads=len(CONTRACT.leads), n_classes=K, fs=CONTRACT.fs,
                    length=windows.length if windows is not None else CONTRACT.length,
                    widths=tuple(cfg.widths), blocks_per_group=cfg.blocks_per_group, head=cfg.head,
                    statement_head=cfg.statement_head, dropout=cfg.dropout,
                    aux_head=True, n_statements=0 if s_tr is None else s_tr.shape[1]).to(device)
    optimizer = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.optimizer]
    opt = optimizer(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pool = torch.from_numpy(epoch_pool(tr, cfg.oversample)).to(device)
    n = pool.shape[0]
    n_batches = max(1, n // cfg.batch_size)
    sched = _scheduler(opt, cfg, n_batches)
    ema = (torch.optim.swa_utils.AveragedModel(
        net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if cfg.ema else None)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    state = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0,
             "history": []}
    last = out / "last.pt"
    if resume and last.is_file():
        ckpt = torch.load(last, map_location=device, weights_only=True)
        net.load_state_dict(ckpt["net"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR):  # more epochs asked: stretch the tail
            sched.total_steps = max(sched.total_steps, cfg.epochs * n_batches)
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        gen.set_state(ckpt["gen"].cpu())
        torch.set_rng_state(ckpt["torch_rng"])
        state = ckpt["state"]
        log.info("resumed", epoch=state["epoch"], step=state["step"])
    log.info("training", device=str(device), n_train=len(tr.label), n_drawn_per_epoch=n, n_val=len(va.label),
             class_counts=np.bincount(tr.label, minlength=K).tolist(), weights=weights_np.round(3).tolist())
    started, epoch_s = time.perf_counter(), 0.0
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
            break
        if cfg.time_limit_min is not None and (
                time.perf_counter() - started + 1.2 * epoch_s > 60 * cfg.time_limit_min):
            log.warning("time_limit", epoch=state["epoch"], minutes=cfg.time_limit_min)
            state["stopped_by_time_limit"] = True
            break
        net.train()
        t0 = time.perf_counter()
        perm = pool[torch.randperm(n, generator=gen, device=device)]
        total = 0.0
        bar = tqdm(range(n_batches), desc=f"epoch {state['epoch'] + 1}", disable=not progress,
                   mininterval=2, leave=False)
        for b in bar:
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = random_crops(x_tr[idx], cfg.crop, gen), y_tr[idx]
            if cfg.augment:
                xb = augment(xb, gen, shift=windows is None, gain=cfg.gain_jitter)
            with _autocast(device, cfg.cpu_bf16):
                main, aux, statements = net.forward_train(xb)
            loss = focal_loss(main, yb, weights, cfg.gamma)
            if aux is not None and cfg.aux_weight:
                loss = loss + cfg.aux_weight * focal_loss(aux, yb, weights, cfg.gamma)
            if statements is not None and s_tr is not None:
                loss = loss + cfg.statement_weight * F.binary_cross_entropy_with_logits(
                    statements.float(), s_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(net)
            if cfg.schedule in ("cosine", "onecycle"):
                sched.step()
            total += float(loss.detach())
            state["step"] += 1
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                break
        chosen, scores = _better_on_validation(net, ema.module if ema is not None else None, x_va, va,
                                               windows, truth_va)
        state["epoch"] += 1
        score = scores["score"] if not math.isnan(scores["score"]) else -total
        if cfg.schedule == "plateau":
            sched.step(score)
        entry = {"epoch": state["epoch"], "loss": total / max(1, b + 1), **scores,
                 "weights": "ema" if chosen is not net else "raw",
                 "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)}
        state["history"].append(entry)
        epoch_s = time.perf_counter() - t0
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=state["epoch"], bad_epochs=0)
            torch.save({k: v.detach().cpu() for k, v in chosen.state_dict().items()},
                       out / "best_state.pt")
        else:
            state["bad_epochs"] += 1
        log.info("epoch", **entry)
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "state": state,
                    "config": asdict(cfg)}, last)
    return finish(cfg, net, x_va, va, state, arrays)


def _better_on_validation(net: TriageNet, ema: torch.nn.Module | None, x_va: Tensor, va: PtbxlArrays,
                          windows: WindowSpec | None = None, truth: np.ndarray | None = None,
                          ) -> tuple[torch.nn.Module, dict[str, float]]:
    """The raw weights or their EMA, whichever scores higher on validation, with its scores.

    An EMA lags the raw weights early in a run (2026-12-04: fold-9 c 0.81 vs 0.87 at epoch
    12); judged alone it also starves the plateau scheduler of a plateau, so the learning
    rate never dropped. Both are validation-fold choices, like the epoch itself."""
    labels = va.label.astype(np.int64)
    candidates = [net] if ema is None else [net, ema]
    scored = [(val_score(labels, predict_all(m, x_va, windows), truth), m)  # type: ignore[arg-type]
              for m in candidates]
    best_scores, best = max(scored, key=lambda sm: -math.inf if math.isnan(sm[0]["score"]) else sm[0]["score"])
    return best, best_scores


def _statement_targets(tr: PtbxlArrays, cfg: TrainConfig, device: torch.device) -> Tensor | None:
    """SCP-statement targets of the training records (likelihood-aware, or v1's multi-hot of
    the counted statements), or None (head off)."""
    have = tr.likelihoods if cfg.statement_targets == "likelihood" else tr.statements
    if not cfg.statement_weight or have is None:
        if cfg.statement_weight:
            log.warning("no_statement_targets", hint="rebuild the cache: python -m model_training cache")
        return None
    targets = tr.statement_targets() if cfg.statement_targets == "likelihood" else have.astype(np.float32)
    return torch.from_numpy(targets).to(device)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule == "onecycle":  # fastai's fit_one_cycle, as the PTB-XL benchmark trains
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, pct_start=0.3,
                                                   total_steps=max(2, cfg.epochs * steps_per_epoch))
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3)
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    warm, total = steps_per_epoch, max(steps_per_epoch + 1, cfg.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def finish(cfg: TrainConfig, net: TriageNet, x_va: Tensor, va: PtbxlArrays, state: dict[str, Any],
           arrays: PtbxlArrays) -> dict[str, Any]:
    """Reload the best epoch, choose the operating points on validation, write model.pt."""
    out = Path(cfg.out)
    net.load_state_dict(torch.load(out / "best_state.pt", map_location=x_va.device, weights_only=True))
    windows = window_spec(cfg)
    probs_all = predict_all(net, x_va, windows)
    probs, labels = probs_all[:, :K], va.label.astype(np.int64)
    budgets = {b: budget_threshold(probs, b) for b in FLAG_BUDGETS}
    threshold = budgets[0.10]
    truth = va.statement_truth() if va.likelihoods is not None else None
    vocabulary = None
    if net.statements is not None and cfg.statement_targets == "likelihood" and truth is not None:
        vocabulary = StatementVocabulary.from_dict(
            {**statement_vocabulary(cfg.mapping), "thresholds": statement_thresholds(truth, probs_all[:, K:])})
    np.savez_compressed(out / "val_predictions.npz", probs=probs_all, labels=labels, ecg_id=va.ecg_id,
                        **({"truth": truth} if truth is not None else {}))
    summary = {"model_id": cfg.model_id, "config": asdict(cfg), "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "steps": state["step"], "history": state["history"],
               "thresholds": {ACUTE: threshold}, "acute_flag_budgets": budgets,
               "val": val_score(labels, probs_all, truth),
               "manifest_hash": arrays.manifest_hash, "mapping_version": arrays.mapping_version,
               "n_train": int(np.isin(arrays.fold, cfg.train_folds).sum()),
               "n_val": len(labels), "torch": torch.__version__, "git_revision": git_revision(),
               "stopped_by_time_limit": bool(state.get("stopped_by_time_limit", False)),
               "device": str(x_va.device)}
    save_checkpoint(out / "model.pt", net.cpu().eval(), CONTRACT, thresholds={ACUTE: threshold},
                    metadata=training_metadata(summary), windows=windows, statements=vocabulary,
                    flag_budgets=budgets)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    log.info("trained", best_epoch=state["best_epoch"], acute_threshold=threshold, **summary["val"])
    return summary


def training_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """Plain-type checkpoint metadata (evaluate adds the test metrics before shipping)."""
    val = {k: (None if isinstance(v, float) and math.isnan(v) else float(v))
           for k, v in summary["val"].items()}
    config = summary["config"]
    return {"model_id": summary["model_id"], "placeholder": False,
            "mapping_version": summary["mapping_version"], "data_manifest_hash": summary["manifest_hash"],
            "git_revision": summary["git_revision"], "best_epoch": int(summary["best_epoch"]),
            "training": {k: config[k] for k in
                         ("epochs", "batch_size", "lr", "gamma", "class_weights", "seed",
                          "aux_weight", "statement_weight", "schedule", "weight_decay", "patience",
                          "ema", "cpu_bf16", "train_folds", "val_folds", "mapping", "head", "crop",
                          "optimizer", "statement_targets", "statement_head", "gain_jitter", "dropout",
                          "oversample")
                         if k in config},
            "validation": val, "metrics": None}


def git_revision() -> str | None:
    """HEAD of the repository this code runs from, or $ECG_GIT_REVISION (copies without .git)."""
    if os.environ.get("ECG_GIT_REVISION"):
        return os.environ["ECG_GIT_REVISION"]
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None
