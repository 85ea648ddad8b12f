"""``python -m model_training {labels,cache,train,evaluate}``.

Paths default to the repository layout (``../shared/data`` beside the checkout, ``runs/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_CACHE = REPO / "runs" / "cache" / "ptbxl100.npz"


def _folds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _load_or_build(args: argparse.Namespace):
    from model_training import cache

    paths = [Path(p) for p in args.cache]
    if all(p.is_file() for p in paths):
        return cache.load(paths)
    if len(paths) != 1:
        raise SystemExit(f"cache chunks missing: {[str(p) for p in paths if not p.is_file()]}")
    print(f"building {paths[0]} from {args.ptbxl} (one-off, a few minutes)", file=sys.stderr)
    return cache.build(Path(args.ptbxl), paths[0])


def cmd_labels(args: argparse.Namespace) -> int:
    from model_training.card import counts_markdown
    from model_training.export import class_counts_per_fold
    arrays = _load_or_build(args).with_mapping(args.mapping)
    counts = class_counts_per_fold(arrays)
    print(f"mapping {arrays.mapping_version}\n{counts_markdown(counts)}")
    report: dict = {"counts": counts}
    if args.sources:
        from model_training.datasets import load_ptbxl_table
        from model_training.export import label_sources

        report["sources"] = label_sources(load_ptbxl_table(Path(args.ptbxl)), arrays)
        for name, sources in report["sources"].items():
            print(f"{name}: " + ", ".join(f"{code} {n}" for code, n in sources.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from model_training import cache

    arrays = _load_or_build(args)
    if args.split_dir:
        import numpy as np

        sub = arrays.subset(np.isin(arrays.fold, _folds(args.split_folds)))
        for path in cache.split(sub, Path(args.split_dir), args.chunks):
            print(f"{path} {path.stat().st_size / 1e6:.1f} MB")
    print(f"{len(arrays.ecg_id)} records; manifest {arrays.manifest_hash}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from model_training import cache
    from model_training.train import TrainConfig, cpu_bf16_refusal, train

    refusal = cpu_bf16_refusal(args.cpu_bf16, args.device) or _unknown_statements(dict(args.oversample))
    if refusal:  # before the cache loads: a one-line answer, exit 2
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if args.per_fold:  # smoke runs: a handful of records read straight from WFDB
        arrays = cache.build(Path(args.ptbxl), None, per_fold=args.per_fold, progress=False)
    else:
        arrays = _load_or_build(args)
    cfg = TrainConfig(out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      gamma=args.gamma, class_weights=args.class_weights, patience=args.patience,
                      seed=args.seed, device=args.device, augment=not args.no_augment,
                      max_steps=args.max_steps, train_folds=_folds(args.train_folds),
                      val_folds=_folds(args.val_folds), widths=[int(w) for w in args.widths.split(",")],
                      blocks_per_group=args.blocks_per_group, model_id=args.model_id,
                      num_threads=args.threads, time_limit_min=args.time_limit_min,
                      schedule=args.schedule, ema=args.ema, weight_decay=args.weight_decay,
                      statement_weight=args.statement_weight, cpu_bf16=args.cpu_bf16,
                      mapping=args.mapping, head=args.head, crop=args.crop, optimizer=args.optimizer,
                      statement_targets=args.statement_targets, statement_head=args.statement_head,
                      gain_jitter=args.gain_jitter, dropout=args.dropout,
                      oversample=dict(args.oversample))
    summary = train(cfg, arrays, resume=args.resume, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("best_epoch", "epochs_run", "thresholds", "val")}))
    return 0


def _unknown_statements(oversample: dict[str, int]) -> str | None:
    from model_training.labels import statement_codes

    unknown = sorted(set(oversample) - set(statement_codes()))
    return f"--oversample: unknown SCP statement(s) {', '.join(unknown)}" if unknown else None


def _oversample_item(item: str) -> tuple[str, int]:
    """``"2AVB=20"`` -> ``("2AVB", 20)`` (argparse turns the error into a usage line, exit 2)."""
    code, sep, copies = item.partition("=")
    if not sep or not code or not copies.isdigit() or int(copies) < 1:
        raise argparse.ArgumentTypeError(f"wants CODE=COPIES with COPIES >= 1, got {item!r}")
    return code, int(copies)


def cmd_pack(args: argparse.Namespace) -> int:
    from model_training.pack import pack

    summary = pack([Path(r) for r in args.runs], _load_or_build(args), Path(args.out), mapping=args.mapping,
                   max_cost=args.max_cost, half=not args.full, model_id=args.model_id)
    print(json.dumps({k: summary[k] for k in ("members", "layout", "triage_aggregation",
                                              "statement_aggregation", "fold9", "bytes")}, default=float))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model_training.export import run

    card = run(Path(args.checkpoint), [Path(p) for p in args.cache] if len(args.cache) > 1
               else Path(args.cache[0]), Path(args.cinc), Path(args.report_dir), Path(args.card),
               n_boot=args.bootstrap, seed=args.seed, target_sensitivity=args.target_sensitivity,
               threshold_rule=args.threshold_rule, budget=args.budget, ship_to=Path(args.ship) if args.ship else None,
               commands=args.command_log or [], extra=json.loads(args.extra) if args.extra else {},
               ptbxl_root=Path(args.ptbxl))
    print(f"ptbxl_fold9: {json.dumps(card['evaluation']['ptbxl_fold9'], default=float)}")
    for name in ("ptbxl_fold10", "ptbxl_fold10_mapping_1_0", "cinc_external"):
        res = card["evaluation"][name]
        m = res["metrics"]
        print(f"{name}: n={res['n']} overall_c={m['overall_c']['value'][0]} "
              f"({m['overall_c']['ci_low'][0]}-{m['overall_c']['ci_high'][0]}) pdi={m['pdi']['value'][0]} "
              f"({m['pdi']['ci_low'][0]}-{m['pdi']['ci_high'][0]}) acute_sens={m['sensitivity']['value'][3]}")
    for row in card["evaluation"]["flag_budgets"]:
        cells = "; ".join(f"{k}: sens {v['sensitivity']['value']} ppv {v['ppv']['value']} flagged "
                          f"{v['flagged']['value']}" for k, v in row.items() if isinstance(v, dict))
        print(f"budget {row['budget']:g} (t={row['threshold']:.4g}): {cells}")
    if "statements_fold10" in card["evaluation"]:
        print(f"statements_fold10: {card['evaluation']['statements_fold10']['macro_auc']}")
    print(f"threshold {card['thresholds']}; sha256 {card['sha256']}")
    return 0


def _share(text: str) -> float:
    """argparse type: a share in (0, 1)."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _sensitivity(text: str) -> float:
    """argparse type: a sensitivity in (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from model_training.policy import THRESHOLD_RULES

    parser = argparse.ArgumentParser(prog="python -m model_training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ptbxl", default=str(DATA / "ptbxl"), help="PTB-XL folder")
        p.add_argument("--cache", nargs="+", default=[str(DEFAULT_CACHE)],
                       help="array cache (.npz) or its chunks; built from --ptbxl if missing")

    p = sub.add_parser("labels", help="class counts per fold under the triage mapping")
    data_args(p)
    p.add_argument("--json", help="also write the counts (and sources) here")
    p.add_argument("--mapping", choices=["1.0", "2.0"], default="2.0", help="label mapping version")
    p.add_argument("--sources", action="store_true",
                   help="also count, per category, the statements that set each record's label")
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("cache", help="decode PTB-XL once into an array cache (and chunks)")
    data_args(p)
    p.add_argument("--split-dir", help="also write packed chunks here (for small transfer links)")
    p.add_argument("--split-folds", default="1-9")
    p.add_argument("--chunks", type=int, default=3)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help="train TriageNet; resumable")
    data_args(p)
    p.add_argument("--out", default=str(REPO / "runs" / "train"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3, help="peak LR of the one-cycle schedule (start LR otherwise)")
    p.add_argument("--gamma", type=float, default=1.0, help="focal loss gamma (0 = cross-entropy)")
    p.add_argument("--class-weights", choices=["none", "sqrt", "inverse"], default="sqrt")
    p.add_argument("--patience", type=int, default=100,
                   help="stop after this many epochs without a better fold-9 score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--dropout", type=float, default=0.3, help="dropout in every block and head (the paper's 0.3)")
    p.add_argument("--gain-jitter", type=float, default=0.2,
                   help="amplitude augmentation (+-share); 0 keeps the voltages that voltage criteria read")
    p.add_argument("--schedule", choices=["onecycle", "plateau", "cosine"], default="onecycle")
    p.add_argument("--optimizer", choices=["adamw", "adam"], default="adamw")
    p.add_argument("--mapping", choices=["1.0", "2.0"], default="2.0", help="triage label mapping")
    p.add_argument("--head", choices=["pool", "flatten"], default="pool",
                   help="pool: any input length (crops, windows); flatten: v1's fixed-length head")
    p.add_argument("--crop", type=int, default=250,
                   help="random crop length in samples for training, windows of it at validation (0 = whole record)")
    p.add_argument("--statement-head", choices=["shared", "own"], default="shared",
                   help="shared: on the triage head's hidden layer; own: a hidden layer of its own")
    p.add_argument("--statement-targets", choices=["likelihood", "counted"], default="likelihood",
                   help="likelihood: all 71 statements, likelihood-aware; counted: v1's multi-hot")
    p.add_argument("--ema", type=float, help="keep an EMA of the weights with this decay (e.g. 0.998)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast for CPU training steps (AMX/AVX512-BF16 CPUs only; validation stays float32)")
    p.add_argument("--statement-weight", type=float, default=5.0,
                   help="weight of the multi-label SCP-statement loss (0 = off)")
    p.add_argument("--oversample", nargs="+", default=[], metavar="CODE=COPIES", type=_oversample_item,
                   help="draw the records listing an SCP statement this many times per epoch (e.g. 2AVB=20)")
    p.add_argument("--time-limit-min", type=float, help="finish cleanly before this many minutes")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--train-folds", default="1-8")
    p.add_argument("--val-folds", default="9")
    p.add_argument("--per-fold", type=int, help="smoke: first N records per fold, read from --ptbxl")
    p.add_argument("--widths", default="64,128,256,512")
    p.add_argument("--blocks-per-group", type=int, default=4)
    p.add_argument("--model-id", default="ecg-triage-ptbxl100-v2-member")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pack", help="the shipped model from trained members, every choice made on fold 9")
    data_args(p)
    p.add_argument("runs", nargs="+", help="training output folders (each with model.pt)")
    p.add_argument("--out", required=True, help="the checkpoint to write (and OUT.json with the choices)")
    p.add_argument("--mapping", choices=["1.0", "2.0"], default="2.0")
    p.add_argument("--max-cost", type=int, default=16,
                   help="most members x windows per ECG (the inference budget; the whole record counts 4)")
    p.add_argument("--full", action="store_true", help="float32 weights (default: float16)")
    p.add_argument("--model-id", default="ecg-triage-ptbxl100-v2")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("evaluate", help="fold 10 + CinC metrics, plots, model card; --ship")
    data_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--cinc", default=str(DATA / "cinc2021-samples"))
    p.add_argument("--report-dir", default=str(REPO / "model_training" / "report"))
    p.add_argument("--card", default=str(REPO / "model_training" / "MODEL_CARD"),
                   help="writes CARD.md and CARD.json")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-sensitivity", type=_sensitivity, default=0.95,
                   help="acute sensitivity the fold-9 threshold must reach (a ward's operating point)")
    p.add_argument("--threshold-rule", choices=("budget", *THRESHOLD_RULES), default="budget",
                   help="budget: the threshold flags --budget of fold-9 ECGs (decision 38); point: the "
                        "fold-9 sensitivity reaches --target-sensitivity; lower-bound: its 2.5th bootstrap "
                        "percentile does (decision 33)")
    p.add_argument("--budget", type=_share, default=0.10, help="share of ECGs the acute flag may take")
    p.add_argument("--ship", help="write the evaluated checkpoint here (e.g. the package default)")
    p.add_argument("--command-log", nargs="*", help="commands to list in the card")
    p.add_argument("--extra", help="JSON with training_note / reproducibility text for the card")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
