"""CPU lanes (triage/lanes.py): the compiled graph computes what the eager rewrite does, at
every batch size and split, and the model spends its cores as lanes of one thread each."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs
from torch import nn

from ecg_gateway.triage.lanes import compile_lanes
from ecg_gateway.triage.model import load_model
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.optimize import bf16_supported, onednn_usable, optimize_for_cpu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """``cpu_cores`` sets torch's process-wide threads; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _small_net() -> TriageNet:
    torch.manual_seed(7)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16, aux_head=False).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_compute_the_eager_rewrite_at_every_batch_size(lanes: int) -> None:
    net = _small_net()
    eager = optimize_for_cpu(net)
    compiled = compile_lanes(optimize_for_cpu(net), lanes, leads=8)
    assert compiled is not None, "TorchScript could not take the CPU rewrite"
    for batch in (1, 2, 3, 8, 17, 33):  # fewer rows than lanes, uneven splits, both PackedConv paths
        x = torch.randn(batch, 8, 1000)
        with torch.inference_mode():
            got = compiled(x)
            assert got.shape == (batch, 4)
            torch.testing.assert_close(got, eager(x), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got, net(x), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16 in oneDNN")
def test_bf16_lanes_compute_the_bf16_rewrite() -> None:
    net = _small_net()
    eager = optimize_for_cpu(net, dtype=torch.bfloat16)
    compiled = compile_lanes(optimize_for_cpu(net, dtype=torch.bfloat16), 2, leads=8)
    assert compiled is not None
    x = torch.randn(33, 8, 1000)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), eager(x), atol=1e-2, rtol=1e-2)


class _Untraceable(nn.Module):
    """Returns a dict: torch.jit.trace refuses such an output in strict mode."""

    length = 16

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x.sum(dim=(1, 2))}


def test_a_graph_torchscript_cannot_take_falls_back_with_a_warning() -> None:
    with capture_logs() as logs:
        assert compile_lanes(_Untraceable(), 2, leads=1) is None  # type: ignore[arg-type]
    assert [e["event"] for e in logs] == ["cpu_lanes_unavailable"]
    assert logs[0]["reason"]


@pytest.mark.skipif(not onednn_usable(), reason="this torch build lacks the oneDNN conv ops")
def test_the_shipped_model_runs_its_cores_as_single_threaded_lanes() -> None:
    torch.set_num_threads(2)
    one_lane = load_model(device="cpu")  # library default: torch's threads, one lane
    assert (one_lane.lanes, torch.get_num_threads()) == (1, 2)
    lanes = load_model(device="cpu", cpu_cores=2)
    assert (lanes.lanes, torch.get_num_threads()) == (2, 1)
    x = np.random.default_rng(0).normal(size=(19, 8, 1000)).astype(np.float32)
    eager = load_model(device="cpu", optimize=False)
    np.testing.assert_allclose(lanes.predict(x), one_lane.predict(x), atol=1e-6)
    np.testing.assert_allclose(lanes.predict(x), eager.predict(x), atol=1e-5)


_GROWTH_PROBE = """
import ctypes, gc, json
import numpy as np
from ecg_gateway.triage.model import load_model

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
rng = np.random.default_rng(0)
batches = [rng.normal(size=(n, 8, 1000)).astype(np.float32) for n in (5, 2, 8, 3, 7, 1, 6, 4)]

def growth_mb(model):
    gc.collect()
    before = mallinfo2().uordblks
    for batch in batches:
        model.predict(batch)
    gc.collect()
    return (mallinfo2().uordblks - before) / 2**20

cold = load_model(device="cpu", cpu_cores=2)
cold_mb = growth_mb(cold)
warmed = load_model(device="cpu", cpu_cores=2)
warm_up_s = warmed.warm_up(8)
print(json.dumps({"cold_mb": cold_mb, "warmed_mb": growth_mb(warmed), "warm_up_s": warm_up_s}))
"""


def _has_mallinfo2() -> bool:
    name, version = platform.libc_ver()
    return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 33)


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 for mallinfo2")
def test_warm_up_builds_the_per_batch_size_state_a_serving_process_would_grow_by() -> None:
    """The memory half of decisions.md 37, measured in a fresh process (glibc's malloc in-use
    bytes, all arenas): a cold model allocates for every new batch size (in `serve` that
    stretched over hours of traffic); after `warm_up` it allocates nothing more."""
    out = subprocess.run([sys.executable, "-c", _GROWTH_PROBE], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["cold_mb"] > 2.0, probe  # what warm_up exists for (9-17 MB measured on the bundled model)
    assert probe["warmed_mb"] < 0.5 and probe["warm_up_s"] > 0, probe
