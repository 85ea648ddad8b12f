"""Inference speed of the triage network, against the machine's own matmul peak.

Prints parameters, FLOPs per ECG (torch.utils.flop_counter, the ops actually executed),
ECG/s at several batch sizes, and the achieved FLOP/s as a fraction of a float32 (CPU) or
autocast-dtype (CUDA) matmul measured in the same run. Anchor: a comparable 1-D ResNet
reached ~100% of ~170 GFLOP/s at batch 32 on this 2-core CPU; target >= 75%.

On CPU the model runs as the worker runs it: ``--cores N`` (default: all cores, as a
dedicated ``serve --role worker``) single-threaded lanes of one compiled graph
(triage/lanes.py); ``--threads T`` runs one lane on T intra-op threads instead, and
``--eager`` also times the eager rewrite on the same cores' threads (the path before lanes).

Optionally (--bf16) measures the bf16 CPU path (config ``model.cpu_precision: bfloat16``)
against float32 on 512 PTB-XL records (categories must agree on >= 99.5% and probabilities
within 0.01 before it may be used).

Usage:
  python bench/inference.py [--checkpoint PATH | --variant paper|ptbxl] [--device cpu|cuda]
                            [--cores N | --threads T] [--eager] [--batches 1,8,32,128] [--bf16]
                            [--procs N] [--smoke] [--json OUT]
ECG/s is the median (min-max) of --repeats runs of --seconds each; the matmul ceiling is the
best of its runs (the CPU is shared: the best run is the one least disturbed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import figure, machine_facts, md_table, write_report

from ecg_gateway.ecg import INDEPENDENT_LEADS
from ecg_gateway.triage.decide import decide
from ecg_gateway.triage.ensemble import WindowedEnsemble
from ecg_gateway.triage.model import TriageModel, load_model
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.optimize import PackedConv, PointwiseConv, optimize_for_cpu
from ecg_gateway.triage.preprocess import InputContract

VARIANTS = {"paper": dict(fs=500.0, length=5000), "ptbxl": dict(fs=100.0, length=1000)}
ANCHOR = "anchor: comparable 1-D ResNet ~100% of ~170 GFLOP/s (fp32 matmul) at batch 32 on this CPU"


def best_rate(fn: Callable[[], object], seconds: float, repeats: int, sync: Callable[[], None]) -> float:
    """Calls per second, best of ``repeats`` runs of about ``seconds`` each."""
    return max(rates(fn, seconds, repeats, sync))


def rates(fn: Callable[[], object], seconds: float, repeats: int, sync: Callable[[], None]) -> list[float]:
    """Calls per second in each of ``repeats`` runs of about ``seconds``."""
    fn()
    sync()
    out = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        out.append(calls / elapsed)
    return out


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float, repeats: int,
                sync: Callable[[], None]) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 * best_rate(lambda: torch.mm(a, b), seconds, repeats, sync)


def flops_per_ecg(net: torch.nn.Module, leads: int, length: int, device: torch.device) -> int:
    x = torch.zeros(1, leads, length, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops()


def build(args: argparse.Namespace, cpu_cores: int | None = None) -> TriageModel:
    """The model as the worker loads it; ``cpu_cores`` lanes of one thread (None: one lane on
    torch's current threads)."""
    if args.variant is None:
        return load_model(args.checkpoint, args.device, optimize=not args.plain, cpu_cores=cpu_cores)
    torch.manual_seed(0)
    kw = VARIANTS[args.variant]
    contract = InputContract(fs=kw["fs"], length=kw["length"], leads=INDEPENDENT_LEADS)
    net = TriageNet(in_leads=8, aux_head=False, **kw)
    return TriageModel(net, contract, list(c for c in ("normal", "abnormal_not_acute", "subacute", "acute")),
                       {}, {"model_id": f"random-{args.variant}"}, "-" * 64, torch.device(args.device),
                       optimize=not args.plain, cpu_cores=cpu_cores)


@contextmanager
def with_threads(n: int) -> Iterator[None]:
    """Run a block on ``n`` torch intra-op threads, then restore the count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def passes_per_ecg(model: TriageModel) -> int:
    """Forward passes of one member over one window (or the whole record) that an ECG costs."""
    windows = model.windows.count(model.contract.length) if model.windows is not None else 1
    return windows * len(model.members)


def member_input(model: TriageModel) -> tuple[int, int]:
    """(leads, samples) one member reads per pass: a window, or the whole record."""
    windows = model.windows
    length = windows.length if windows is not None and windows.length < model.contract.length else model.contract.length
    return len(model.contract.leads), length


def op_profile(model: TriageModel, threads: int, batch: int = 32, passes: int = 5) -> dict[str, Any]:
    """Where a CPU forward pass of ``batch`` inputs of one member (windows for a windowed
    model) spends its time: self time per operator, and per convolution shape its achieved
    GFLOP/s (the evidence for the efficiency figure). Measured on the eager rewrite (hooks
    cannot see inside the compiled graph), on ``threads`` intra-op threads so the shares
    compare with the whole machine's ceiling."""
    leads, length = member_input(model)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, leads, length)).astype(np.float32))
    eager = optimize_for_cpu(model.net)
    with torch.inference_mode(), with_threads(threads):
        eager(x)
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(passes):
                eager(x)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        ops = sorted(((e.key, e.self_cpu_time_total) for e in events), key=lambda kv: -kv[1])[:6]
        convs = conv_timings(eager, x, passes)
        convs.sort(key=lambda c: -c["ms"])
        stages = stage_timings(model, eager, batch, max(passes, 10))
    return {"batch": batch, "threads": threads, "ms_per_batch": total / passes / 1e3,
            "ops": [{"op": k, "ms": v / passes / 1e3, "share": v / total} for k, v in ops], "convs": convs,
            "stages": stages}


def conv_timings(runner: torch.nn.Module, x: torch.Tensor, passes: int) -> list[dict[str, Any]]:
    """Wall time and achieved GFLOP/s of every convolution, grouped by shape (forward hooks)."""
    started: dict[torch.nn.Module, float] = {}
    spent: dict[str, list[float]] = {}
    flops: dict[str, float] = {}

    def before(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        started[mod] = time.perf_counter()

    def after(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        took = time.perf_counter() - started.pop(mod)
        k = mod.kernel_size[-1]  # type: ignore[index]
        key = f"{mod.in_channels}->{mod.out_channels}, k{k}, length {args[0].shape[-1]}->{out.shape[-1]}"
        spent.setdefault(key, []).append(took)
        flops[key] = 2.0 * out.numel() * mod.in_channels * k / mod.groups  # type: ignore[operator]

    convs = [m for m in runner.modules()
             if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, PackedConv, PointwiseConv))]
    hooks = [h for m in convs for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.inference_mode():
            for _ in range(passes):
                runner(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [{"shape": key, "calls": len(times) // passes, "ms": sum(times) / passes * 1e3,
             "gflop_per_s": flops[key] * len(times) / sum(times) / 1e9} for key, times in spent.items()]


class _FinalAndHeads(torch.nn.Module):
    """The net's last stage: the final BN-ReLU, the triage head and, if it has one, the
    statement head (as ``TriageNet.forward`` runs them)."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body

    def parts(self) -> list[torch.nn.Module]:
        heads = [self.body.final, self.body.head]
        return heads if self.body.statements is None else [*heads, self.body.statements]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body.final(x)
        if self.body.statements is None:
            return self.body.head(features)
        return torch.cat(self.body._heads(features), dim=1)


def _stages(net: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The top-level stages of a TriageNet or of its CPU rewrite (same names in both)."""
    body = getattr(net, "body", net)
    groups = [(f"group {i + 1}", g) for i, g in enumerate(body.groups)]  # type: ignore[arg-type]
    return [("stem", body.stem), *groups, ("final BN-ReLU + heads", _FinalAndHeads(body))]


def stage_flops(net: TriageNet, leads: int, length: int) -> list[float]:
    """FLOPs per ECG of each stage of the training graph (the count the ratio uses)."""
    x, out = torch.zeros(1, leads, length), []
    with torch.inference_mode():
        for _, stage in _stages(net):
            with FlopCounterMode(display=False) as counter:
                x = stage(x)
            out.append(float(counter.get_total_flops()))
    return out


def stage_timings(model: TriageModel, eager: torch.nn.Module, batch: int, passes: int) -> list[dict[str, Any]]:
    """Wall time of each stage inside the real forward (hooks), and the share of the
    float32 matmul ceiling it reaches: where the gap to the ceiling comes from."""
    leads, length = member_input(model)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, leads, length)).astype(np.float32))
    stages = _stages(eager)
    last = stages[-1][1].parts()  # type: ignore[operator]
    timed = [m for _, m in stages[:-1]] + last
    started: dict[torch.nn.Module, float] = {}
    spent: dict[torch.nn.Module, float] = {m: 0.0 for m in timed}

    def before(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        started[mod] = time.perf_counter()

    def after(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        spent[mod] += time.perf_counter() - started.pop(mod)

    hooks = [h for m in timed for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.inference_mode():
            eager(x)
            spent = {m: 0.0 for m in timed}
            for _ in range(passes):
                eager(x)
    finally:
        for hook in hooks:
            hook.remove()
    seconds = [spent[m] / passes for m in timed[:-len(last)]] + [sum(spent[m] for m in last) / passes]
    flops = stage_flops(model.net, leads, length)
    return [{"stage": name, "ms": sec * 1e3, "gflop": f * batch / 1e9, "gflop_per_s": f * batch / sec / 1e9}
            for (name, _), sec, f in zip(stages, seconds, flops, strict=False)]


def profile_tables(profile: dict[str, Any], peak: float) -> dict[str, str]:
    ops = md_table(["operator", "ms per batch", "share"],
                   [[o["op"], f"{o['ms']:.2f}", f"{o['share']:.0%}"] for o in profile["ops"]])
    convs = md_table(["convolution (channels, kernel, length in->out)", "calls", "ms per batch", "GFLOP/s",
                      "of matmul peak"],
                     [[c["shape"], c["calls"], f"{c['ms']:.2f}", f"{c['gflop_per_s']:.0f}",
                       f"{c['gflop_per_s'] * 1e9 / peak:.0%}"] for c in profile["convs"][:10]])
    stages = md_table(["stage", "ms per batch", "GFLOP per batch", "GFLOP/s", "of matmul peak"],
                      [[st["stage"], f"{st['ms']:.2f}", f"{st['gflop']:.3f}", f"{st['gflop_per_s']:.0f}",
                        f"{st['gflop_per_s'] * 1e9 / peak:.0%}"] for st in profile["stages"]])
    title = (f"eager rewrite, batch {profile['batch']}, {profile['threads']} thread(s), "
             f"{profile['ms_per_batch']:.1f} ms of operator time per batch")
    return {f"profile: operators ({title})": ops, "profile: the 10 costliest convolution shapes": convs,
            f"profile: stages (eager rewrite, batch {profile['batch']}, wall time inside the forward)": stages}


def reference_set(model: TriageModel, n: int) -> tuple[np.ndarray, str]:
    """Real PTB-XL records through the model's contract when present, else synthetic ECGs."""
    try:
        import wfdb

        from ecg_gateway.ecg import Ecg
        from ecg_gateway.triage.preprocess import preprocess

        root = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl" / "records100"
        heads = sorted(root.glob("*/*.hea"))[:: max(1, 21837 // n)][:n]
        if len(heads) < n:
            raise FileNotFoundError(root)
        xs = []
        for hea in heads:
            rec = wfdb.rdrecord(str(hea.with_suffix("")))
            xs.append(preprocess(Ecg(rec.p_signal.T, rec.fs, tuple(rec.sig_name), "wfdb"), model.contract))
        return np.stack(xs), f"{n} PTB-XL records"
    except (ImportError, FileNotFoundError):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from ecg_gateway.triage.preprocess import preprocess
        from tests.support.synthetic import synthetic_ecg

        return np.stack([preprocess(synthetic_ecg(i), model.contract) for i in range(n)]), f"{n} synthetic ECGs"


def bf16_check(model: TriageModel, n: int, seconds: float, repeats: int, cores: int | None) -> dict[str, object]:
    """The product's bf16 CPU path (``model.cpu_precision: bfloat16``) against float32 on a
    reference set: the issue's bar is categories agreeing on >= 99.5 % and |dp| <= 0.01."""
    x, what = reference_set(model, n)
    bf16_model = TriageModel(model.members, model.contract, model.class_order, model.thresholds, model.metadata,
                             model.sha256, model.device, model.path, cpu_precision="bfloat16",
                             cpu_cores=cores, windows=model.windows, statements=model.statements,
                             flag_budgets=model.flag_budgets)
    if bf16_model.precision != "bfloat16":
        return {"reference": what, "skipped": "this CPU has no native bfloat16 (oneDNN)", "qualifies": False}
    fp32, bf16 = model.predict(x), bf16_model.predict(x)
    fp32_cat = [decide(p, model.thresholds) for p in fp32]
    bf16_cat = [decide(p, model.thresholds) for p in bf16]
    agree = float(np.mean([a == b for a, b in zip(fp32_cat, bf16_cat, strict=True)]))
    acute_flips = sum((a == "acute") != (b == "acute") for a, b in zip(fp32_cat, bf16_cat, strict=True))
    max_diff = float(np.abs(fp32 - bf16).max())
    batch = x[:32]
    rate_bf16 = len(batch) * best_rate(lambda: bf16_model.predict(batch), seconds, repeats, lambda: None)
    rate_fp32 = len(batch) * best_rate(lambda: model.predict(batch), seconds, repeats, lambda: None)
    ok = agree >= 0.995 and max_diff <= 0.01
    return {"reference": what, "category_agreement": agree, "acute_flips": int(acute_flips),
            "max_prob_diff": max_diff, "ecg_per_s_bf16_b32": rate_bf16, "ecg_per_s_fp32_b32": rate_fp32,
            "qualifies": ok}


def _proc_rates(args: argparse.Namespace, batch: int, start: Any, out: Any) -> None:
    """One single-threaded worker process of --procs: ECG/s in each of the timed windows."""
    torch.set_num_threads(1)
    model = build(args)  # one lane on one thread
    x = np.random.default_rng(0).normal(size=(batch, len(model.contract.leads), model.contract.length))
    x = x.astype(np.float32)
    model.predict(x)
    start.wait()
    out.put([batch * r for r in rates(lambda: model.predict(x), args.seconds, args.repeats, lambda: None)])


def multi_process_rate(args: argparse.Namespace, procs: int, batch: int = 32) -> list[float]:
    """Aggregate ECG/s of ``procs`` single-threaded processes running side by side (what
    ``serve --role worker`` processes with ``model.cpu_threads: 1`` do), per timed window."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_proc_rates, args=(args, batch, start, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    per_proc = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return [sum(window) for window in zip(*per_proc, strict=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default: bundled model)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="random weights of this size instead")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (CUDA runs under autocast)")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--cores", type=int, default=None,
                        help="CPU: run this many single-threaded lanes (default: all cores, as serve --role worker)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU: one lane on this many torch intra-op threads instead of --cores")
    parser.add_argument("--eager", action="store_true",
                        help="CPU: also time batch 32 on the eager rewrite with the same cores as threads")
    parser.add_argument("--plain", action="store_true", help="run the training graph as is (no CPU rewrite)")
    parser.add_argument("--bf16", action="store_true", help="also measure the bf16 CPU path")
    parser.add_argument("--reference", type=int, default=512, help="reference ECGs for --bf16")
    parser.add_argument("--procs", type=int, default=0,
                        help="also run batch 32 in this many single-threaded processes side by side")
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes: tiny timings")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.seconds, args.repeats, args.reference = "1,8", 0.1, 1, 16
    if args.threads and args.cores:
        parser.error("--cores and --threads exclude each other")
    cores = None
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.device == "cpu":
        cores = args.cores or os.cpu_count() or 1
    machine_threads = args.threads or cores or torch.get_num_threads()

    model = build(args, cores)
    device = model.device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    leads, length = len(model.contract.leads), model.contract.length
    params = sum(p.numel() for m in model.members for p in m.parameters())
    flops = flops_per_ecg(model.ensemble, leads, length, device)  # the training graph's count, every window and member
    with with_threads(machine_threads):  # the ceiling of the cores the model may use
        peak_before = matmul_peak(device, amp, args.seconds, args.repeats, sync)

    print(f"machine: {machine_facts()}, torch {torch.__version__}")
    print(f"model {model.model_id} ({'PLACEHOLDER' if model.placeholder else 'weights as given'}), "
          f"{leads} leads x {length} samples @ {model.contract.fs:g} Hz, device {device}"
          f"{' autocast ' + str(amp).split('.')[-1] if cuda else ''}, {_how(model)}")
    print(f"parameters {params:,}   FLOPs/ECG {flops / 1e9:.3f} GFLOP ({flops / 2e9:.3f} GMAC)")
    rows = []
    for bs in [int(b) for b in args.batches.split(",")]:
        x = np.random.default_rng(0).normal(size=(bs, leads, length)).astype(np.float32)
        runs = [bs * r for r in rates(lambda x=x: model.predict(x), args.seconds, args.repeats, sync)]
        rate = statistics.median(runs)
        rows.append({"batch": bs, "ecg_per_s": rate, "runs": runs, "ms_per_batch": 1000 * bs / rate,
                     "gflop_per_s": rate * flops / 1e9})
    with with_threads(machine_threads):
        peak = max(peak_before, matmul_peak(device, amp, args.seconds, args.repeats, sync))
    print(f"matmul peak ({str(amp).split('.')[-1]}) {peak / 1e9:.1f} GFLOP/s   {ANCHOR}")
    print(f"{'batch':>6} {'ECG/s':>10} {'min-max':>15} {'ms/batch':>10} {'GFLOP/s':>9} {'of peak':>8}")
    for row in rows:
        row["ratio"] = row["gflop_per_s"] * 1e9 / peak
        spread = f"{min(row['runs']):.0f}-{max(row['runs']):.0f}"
        print(f"{row['batch']:6d} {row['ecg_per_s']:10.1f} {spread:>15} {row['ms_per_batch']:10.2f} "
              f"{row['gflop_per_s']:9.1f} {row['ratio']:8.1%}")
    print(f"(ECG/s: median (min-max) of {args.repeats} runs of {args.seconds:g} s; peak: best matmul run)")
    report: dict[str, object] = {"model_id": model.model_id, "device": str(device), "params": params,
                                 "flops_per_ecg": flops, "matmul_peak_flops": peak, "rows": rows,
                                 "passes_per_ecg": passes_per_ecg(model)}
    if args.eager and not cuda:
        runs = eager_rate(model, machine_threads, args.seconds, args.repeats)
        rate = statistics.median(runs)
        report["eager"] = {"threads": machine_threads, "batch": 32, "runs": runs, "ecg_per_s": rate,
                           "ratio": rate * flops / peak}
        print(f"eager rewrite, one lane on {machine_threads} intra-op threads, batch 32: {rate:.1f} ECG/s "
              f"({min(runs):.0f}-{max(runs):.0f}) = {rate * flops / peak:.1%} of the same matmul peak")
    if args.procs and not cuda:
        runs = multi_process_rate(args, args.procs)
        rate = statistics.median(runs)
        report["procs"] = {"procs": args.procs, "batch": 32, "runs": runs, "ecg_per_s": rate,
                           "ratio": rate * flops / peak}
        print(f"{args.procs} single-threaded processes side by side, batch 32: {rate:.1f} ECG/s "
              f"({min(runs):.0f}-{max(runs):.0f}) = {rate * flops / peak:.1%} of the same matmul peak")
    if args.bf16 and not cuda:
        check = bf16_check(model, args.reference, args.seconds, args.repeats, cores)
        report["bf16"] = check
        if "skipped" in check:
            print(f"bf16 CPU path: skipped, {check['skipped']}")
        else:
            print(f"bf16 CPU path (model.cpu_precision: bfloat16) on {check['reference']}: categories agree "
                  f"{check['category_agreement']:.2%} ({check['acute_flips']} acute flips), max |dp| "
                  f"{check['max_prob_diff']:.4f}, batch 32 {check['ecg_per_s_bf16_b32']:.0f} ECG/s vs fp32 "
                  f"{check['ecg_per_s_fp32_b32']:.0f} (best of {args.repeats}) -> "
                  f"{'qualifies' if check['qualifies'] else 'does NOT qualify: keep float32'}")
    tables: dict[str, str] = {}
    if not cuda:
        profile = op_profile(model, machine_threads, passes=1 if args.smoke else 5)
        report["profile"] = profile
        tables = profile_tables(profile, peak)
        for title, text in tables.items():
            print(f"\n{title}\n{text}")
    if args.json:
        write_report(args.json, "inference", _figures(report, args, model, machine_threads), smoke=args.smoke,
                     tables=tables,
                     notes=[f"{model.model_id}: {flops / 1e9:.3f} GFLOP per ECG, {_how(model)}, "
                            f"matmul ceiling {peak / 1e9:.1f} GFLOP/s on {machine_threads} thread(s) (best of "
                            f"{2 * args.repeats} runs of a {2048 if device.type == 'cpu' else 8192}^2 "
                            f"{str(amp).split('.')[-1]} matmul)"], raw=report)
    return 0


def _how(model: TriageModel) -> str:
    """How the model runs: compiled lanes, eager rewrite, or the plain graph, and on what."""
    shape = (f"{len(model.members)} member(s) x {model.windows.count(model.contract.length)} window(s), "
             if model.windows is not None else f"{len(model.members)} member(s), whole record, ")
    if model.runner is model.ensemble:
        return shape + f"plain graph, {torch.get_num_threads()} thread(s)"
    if model.lanes:
        return shape + f"compiled graph in {model.lanes} lane(s) (lanes.py), {torch.get_num_threads()} thread(s) each"
    return shape + f"eager CPU rewrite (optimize.py), {torch.get_num_threads()} thread(s)"


def eager_rate(model: TriageModel, threads: int, seconds: float, repeats: int, batch: int = 32) -> list[float]:
    """ECG/s of the eager CPU rewrite on ``threads`` intra-op threads (the path before lanes)."""
    dtype = torch.bfloat16 if model.precision == "bfloat16" else torch.float32
    eager = WindowedEnsemble([optimize_for_cpu(m, dtype=dtype) for m in model.members], len(model.class_order),
                             model.contract.length, model.windows).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, len(model.contract.leads),
                                                                model.contract.length)).astype(np.float32))

    def forward() -> None:
        with torch.inference_mode():
            eager(x)

    with with_threads(threads):
        return [batch * r for r in rates(forward, seconds, repeats, lambda: None)]


def _figures(report: dict[str, Any], args: argparse.Namespace, model: TriageModel,
             threads: int) -> list[dict[str, Any]]:
    """ECG/s per batch against the matmul ceiling expressed in ECG/s: the ratio is the share
    of the ceiling the network reaches (issue #4's goal: >= 75 % at batch 32 on CPU)."""
    flops, peak = report["flops_per_ecg"], report["matmul_peak_flops"]
    cmd = f"python bench/inference.py --device {args.device}"
    cmd += f" --threads {args.threads}" if args.threads else ""
    cmd += f" --cores {args.cores}" if args.cores else ""
    lanes = model.lanes if report["device"] == "cpu" and not args.threads else 0
    tag = f"l{lanes}" if lanes else f"t{threads}"
    where = (f"{report['device']}, {lanes} single-threaded lane(s)" if lanes
             else f"{report['device']}, {threads} thread(s)")
    figures = []
    for row in report["rows"]:
        goal = met = value = None
        if row["batch"] == 32 and str(report["device"]) == "cpu":
            goal, met, value = ">= 75% of the matmul ceiling", row["ratio"] >= 0.75, 0.75
        figures.append(figure(f"inference.{report['device']}.{tag}.b{row['batch']}",
                              f"triage inference, batch {row['batch']} ({where})", "ECG/s", row["runs"],
                              anchor=[peak / flops] * len(row["runs"]),
                              anchor_name="fp32 matmul ceiling / FLOPs per ECG", goal=goal, goal_met=met,
                              goal_value=value, goal_measured=row["ratio"] if goal else None, command=cmd))
    eager = report.get("eager")
    if eager:
        figures.append(figure(f"inference.cpu.eager_t{eager['threads']}.b32",
                              f"triage inference, batch 32, eager rewrite on {eager['threads']} intra-op threads",
                              "ECG/s", eager["runs"], anchor=[peak / flops] * len(eager["runs"]),
                              anchor_name="fp32 matmul ceiling / FLOPs per ECG", command=cmd + " --eager"))
    procs = report.get("procs")
    if procs:
        figures.append(figure(f"inference.cpu.p{procs['procs']}.b32",
                              f"triage inference, batch 32, {procs['procs']} single-threaded processes side by side",
                              "ECG/s", procs["runs"], anchor=[peak / flops] * len(procs["runs"]),
                              anchor_name="fp32 matmul ceiling / FLOPs per ECG",
                              command=cmd + f" --procs {procs['procs']}"))
    check = report.get("bf16")
    if check and "skipped" not in check:
        label = f"bf16 inference (model.cpu_precision: bfloat16), batch 32 ({where})"
        figures.append(figure(f"inference.cpu.{tag}.bf16_b32", label,
                              "ECG/s", [check["ecg_per_s_bf16_b32"]], anchor=[check["ecg_per_s_fp32_b32"]],
                              anchor_name="fp32, same model and batch",
                              goal="categories agree >= 99.5%, |dp| <= 0.01", goal_met=bool(check["qualifies"]),
                              command=cmd + " --bf16",
                              note=f"agreement {check['category_agreement']:.2%} on {check['reference']}, "
                                   f"max |dp| {check['max_prob_diff']:.4f}"))
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
