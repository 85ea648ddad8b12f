"""The CPU rewrite as one TorchScript graph, run in parallel single-threaded lanes.

On a CPU, ~200 small operators per forward each pay an OpenMP fork/join when torch splits
them over several intra-op threads, and the late layers (lengths 2–16) cannot repay it:
on the 2-core box one process with 2 threads reached 56–70 % of the float32 matmul
ceiling at batch 32, while two single-threaded processes reached 77–81 % (decisions.md
28). Python threads cannot do the same in one process: the GIL serialises eager dispatch.
A traced graph runs in TorchScript's interpreter without the GIL, so ``torch.jit.fork``
runs its lanes truly in parallel: the batch is split into ``lanes`` chunks, each run
single-threaded on its own core (decisions.md 32). Tracing also drops the per-module Python
overhead, which pays even with one lane.

TorchScript is deprecated in favour of ``torch.compile``/``torch.export`` but present in
the pinned torch; where it fails, :func:`compile_lanes` returns ``None`` and the caller runs
the eager rewrite instead.
"""

from __future__ import annotations

import warnings

import structlog
import torch
from torch import Tensor, nn

from ecg_gateway.triage.optimize import ChannelsLastTriageNet, PackedConv

log = structlog.get_logger(__name__)


class Lanes(nn.Module):
    """``forward(x [N, leads, length]) -> logits [N, classes]`` of ``graph``, the batch split
    into at most ``lanes`` chunks run side by side (one on the calling thread, the others on
    torch's inter-op pool). Same outputs as ``graph`` on the whole batch: rows are independent
    in eval mode."""

    def __init__(self, graph: nn.Module, lanes: int) -> None:
        super().__init__()
        self.graph = graph
        self.lanes = lanes

    def forward(self, x: Tensor) -> Tensor:
        n = min(self.lanes, x.shape[0])
        if n <= 1:
            return self.graph(x)
        chunks = torch.tensor_split(x, n)
        futures = [torch.jit.fork(self.graph, chunks[i]) for i in range(n - 1)]
        last = self.graph(chunks[n - 1])
        outs = [torch.jit.wait(future) for future in futures]
        outs.append(last)
        return torch.cat(outs, 0)


def _script_packed_convs(module: nn.Module) -> None:
    """In place: each ``PackedConv`` becomes its scripted twin, so the trace keeps its
    small-batch branch and passes the opaque oneDNN weight as an attribute, not a constant."""
    for name, child in module.named_children():
        if isinstance(child, PackedConv):
            setattr(module, name, torch.jit.script(child))
        else:
            _script_packed_convs(child)


def compile_lanes(rewrite: ChannelsLastTriageNet, lanes: int, leads: int, example_batch: int = 16) -> nn.Module | None:
    """A scripted :class:`Lanes` over a trace of ``rewrite`` (modified in place: its packed
    convs become scripted), or ``None`` where TorchScript cannot take it (logged)."""
    example = torch.zeros(example_batch, leads, rewrite.length)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
            _script_packed_convs(rewrite)
            with torch.inference_mode():
                graph = torch.jit.trace(rewrite, example, check_trace=False)
                compiled = torch.jit.script(Lanes(graph, lanes))
                expected = rewrite(example)
                got = compiled(example)
    except Exception as exc:  # noqa: BLE001 - any TorchScript failure means "run eager"
        log.warning("cpu_lanes_unavailable", reason=f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        return None
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        log.warning("cpu_lanes_unavailable", reason="traced graph disagrees with the eager rewrite")
        return None
    return compiled
