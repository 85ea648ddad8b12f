"""The triage network: 37 layers, parameter count, shapes, batch independence."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ecg_gateway.triage.network import DilatedConv1d, ResidualBlock, TriageNet, default_dilation
from ecg_gateway.triage.optimize import (
    AffineReLU,
    ClampRange,
    PackedConv,
    PointwiseConv,
    onednn_usable,
    optimize_for_cpu,
)

WIDTHS = (64, 128, 256, 512)


def _block_params(c_in: int, c_out: int, kernel: int, stride: int) -> int:
    """Two branches (BN(c_in), conv1x1 c_in→c_in/2, BN(c_in/2), conv k c_in/2→c_out/2) + shortcut."""
    mid, half = c_in // 2, c_out // 2
    branch = 2 * c_in + c_in * mid + 2 * mid + mid * half * kernel
    shortcut = c_in * c_out if (stride != 1 or c_in != c_out) else 0
    return 2 * branch + shortcut


def _expected_body_params(in_leads: int = 8) -> int:
    stem = in_leads * 32 * 7 + 2 * 32 + 32 * 64 + 2 * 64 + 64 * 64 * 5
    blocks, c_in = 0, 64
    for width in WIDTHS:
        for b in range(4):
            blocks += _block_params(c_in, width, 5, 2 if b % 2 == 0 else 1)
            c_in = width
    return stem + blocks + 2 * 512  # + final BN


def _head_params(features: int, hidden: int = 256, classes: int = 4) -> int:
    return features * hidden + hidden + hidden * classes + classes


@pytest.fixture(scope="module")
def paper_net() -> TriageNet:
    torch.manual_seed(0)
    return TriageNet(in_leads=8, fs=500, length=5000).eval()


def test_paper_net_has_37_layers(paper_net: TriageNet) -> None:
    stem_convs = [m for m in paper_net.stem if isinstance(m, nn.Conv1d)]
    blocks = [m for m in paper_net.modules() if isinstance(m, ResidualBlock)]
    # depth through a block: its branches are parallel, each two convs deep
    branch_depths = {sum(isinstance(m, nn.Conv1d) for m in br) for b in blocks for br in (b.plain, b.dilated)}
    fcs = [m for m in paper_net.head if isinstance(m, nn.Linear)]
    assert (len(stem_convs), len(blocks), branch_depths, len(fcs)) == (3, 16, {2}, 2)
    assert len(stem_convs) + 2 * len(blocks) + len(fcs) == 37 == paper_net.conv_depth
    dilations = {b.dilated[-1].dilation[0] for b in blocks}
    assert dilations == {100} and {b.plain[-1].dilation[0] for b in blocks} == {1}


def test_paper_net_parameter_count(paper_net: TriageNet) -> None:
    def count(prefixes: tuple[str, ...], keep: bool) -> int:
        return sum(p.numel() for k, p in paper_net.named_parameters() if k.startswith(prefixes) == keep)

    body = count(("head", "aux"), keep=False)
    assert body == _expected_body_params() == 4_756_288  # triage.md §1.3: ≈4.76 M
    assert count(("head",), keep=True) == _head_params(512 * 10)  # ≈1.31 M
    assert count(("aux",), keep=True) == _head_params(128 * 157)  # ≈5.1 M, training only


def test_paper_net_shapes_and_flops(paper_net: TriageNet) -> None:
    assert paper_net.feature_lengths == (625, 157, 40, 10)
    x = torch.randn(2, 8, 5000)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        logits = paper_net(x)
    assert logits.shape == (2, 4)
    gmac_per_ecg = counter.get_total_flops() / 2 / 2 / 1e9
    # triage.md §1.3 counts ≈0.30 GMAC including dilated taps that only read zero padding;
    # DilatedConv1d skips those in groups 3-4, leaving ≈0.27 GMAC actually executed
    assert 0.25 < gmac_per_ecg < 0.28


def test_ptbxl_variant_is_the_same_class() -> None:
    net = TriageNet()  # defaults: 8 leads, 100 Hz, 1000 samples
    assert net.feature_lengths == (125, 32, 8, 2)
    assert net.arch_kwargs()["dilation"] == default_dilation(100) == 20
    assert default_dilation(500) == 100
    head = sum(p.numel() for p in net.head.parameters())
    assert head == _head_params(512 * 2)
    net.train()
    main, aux, statements = net.forward_train(torch.randn(3, 8, 1000))
    assert main.shape == aux.shape == (3, 4) and statements is None
    assert net(torch.randn(3, 8, 1000)).shape == (3, 4)  # forward: main logits in train mode too


def test_arch_kwargs_rebuild_and_no_aux() -> None:
    net = TriageNet(in_leads=12, fs=250, length=2500, widths=(32, 64), blocks_per_group=2,
                    fc_hidden=32, aux_head=False)
    kwargs = net.arch_kwargs()
    assert all(isinstance(v, (int, float, bool, list)) for v in kwargs.values())
    twin = TriageNet(**kwargs)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert net.conv_depth == 3 + 2 * 4 + 2
    main, aux, _ = net.forward_train(torch.randn(1, 12, 2500))
    assert main.shape == (1, 4) and aux is None


def test_statement_head_reads_the_hidden_layer_and_ships_only_when_asked() -> None:
    """The multi-label statement head reads the main head's hidden layer; ``forward`` returns
    the triage logits, then the statement logits; without it the inference net is v1's."""
    torch.manual_seed(0)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16, n_statements=71).eval()
    x = torch.randn(2, 8, 1000)
    main, _, statements = net.forward_train(x)
    assert statements is not None and statements.shape == (2, 71)
    torch.testing.assert_close(torch.cat((main, statements), dim=1), net(x))
    kept = net.inference_state_dict()
    assert not any(k.startswith(("aux.", "statements.")) for k in kept)
    plain = TriageNet(**{**net.arch_kwargs(), "aux_head": False, "n_statements": 0})
    plain.load_state_dict(kept)  # strict: the inference net needs nothing else
    torch.testing.assert_close(plain.eval()(x), main)
    with_head = net.inference_state_dict(statements=True)
    assert any(k.startswith("statements.") for k in with_head) and not any(k.startswith("aux.") for k in with_head)


def test_pool_head_reads_any_length() -> None:
    """Concat pooling: a crop-trained net runs on 2.5 s windows and on the whole 10 s alike."""
    torch.manual_seed(0)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16, head="pool", length=250,
                    n_statements=5).eval()
    for length in (250, 1000, 333):
        assert net(torch.randn(3, 8, length)).shape == (3, 4 + 5)
    assert net.arch_kwargs()["head"] == "pool" and "head" not in TriageNet().arch_kwargs()
    with pytest.raises(ValueError, match="head"):
        TriageNet(head="attention")


def test_eval_output_does_not_depend_on_batch() -> None:
    torch.manual_seed(1)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16).eval()
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 8, 1000)
    with torch.inference_mode():
        together = net(x)
        alone = torch.cat([net(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        TriageNet(kernel_size=4)
    with pytest.raises(ValueError):
        TriageNet(length=8)


@pytest.mark.parametrize("length, stride", [(2, 1), (8, 2), (20, 1), (21, 2), (64, 1)])
def test_dilated_conv_shortcut_is_exact(length: int, stride: int) -> None:
    torch.manual_seed(0)
    conv = DilatedConv1d(6, 4, kernel_size=5, stride=stride, dilation=20, padding=40)
    x = torch.randn(3, 6, length)
    full = torch.nn.functional.conv1d(x, conv.weight, conv.bias, stride, 40, 20)
    torch.testing.assert_close(conv(x), full, atol=1e-6, rtol=1e-5)


def test_cpu_rewrite_computes_the_same_function() -> None:
    torch.manual_seed(3)
    for kwargs in (dict(widths=(16, 32), blocks_per_group=2, fc_hidden=16), dict(fs=250, length=2500)):
        net = TriageNet(**kwargs).eval()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(-1.5, 1.5)  # negative scales: the fold is not a ReLU trick
                m.weight.data[0] = 0.0  # and a zero scale: the channel is the constant relu(shift)
                m.bias.data.uniform_(-0.5, 0.5)
        fast = optimize_for_cpu(net)
        convs = [m for m in fast.modules() if isinstance(m, (nn.Conv2d, PackedConv))]
        assert convs and not any(isinstance(m, (nn.Conv1d, nn.BatchNorm1d, nn.BatchNorm2d)) for m in fast.modules())
        blocks = len(kwargs.get("widths", WIDTHS)) * kwargs.get("blocks_per_group", 4)
        # each branch's BN-ReLU moved into its 1×1 conv, leaving a clamp; the one before the
        # head has no conv after it and stays a multiply-add + ReLU
        assert sum(isinstance(m, ClampRange) for m in fast.modules()) == 2 * blocks
        assert sum(isinstance(m, AffineReLU) for m in fast.modules()) == 1
        x = torch.randn(4, 8, net.arch_kwargs()["length"])
        with torch.inference_mode():
            torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not onednn_usable(), reason="this torch build lacks the oneDNN conv ops")
def test_prepacked_convs_compute_the_same_function_at_every_batch_size() -> None:
    torch.manual_seed(5)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16, aux_head=False).eval()
    plain, packed = optimize_for_cpu(net, pack=False), optimize_for_cpu(net)
    convs = [m for m in packed.modules() if isinstance(m, PackedConv)]
    assert convs and not any(isinstance(m, nn.Conv2d) for m in packed.modules())
    # every ReLU after a conv moved into it; only the head's ReLU (after a Linear) is left
    assert sum(isinstance(m, nn.ReLU) for m in packed.modules()) == 1
    # plain: stem conv k7 and k1, each branch's k1 conv (2 per block, 4 blocks), the head
    assert sum(isinstance(m, nn.ReLU) for m in plain.modules()) == 2 + 2 * 4 + 1
    bottlenecks = [m for m in packed.modules()
                   if isinstance(m, PointwiseConv) and m.out_channels == m.in_channels // 2]
    assert bottlenecks and all(m.relu for m in bottlenecks)
    for batch in (1, 3, 8, 33):  # below and above PackedConv.min_batch
        x = torch.randn(batch, 8, 1000)
        with torch.inference_mode():
            torch.testing.assert_close(packed(x), net(x), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(packed(x), plain(x), atol=1e-5, rtol=1e-4)


def test_own_statement_head_reads_the_pooled_features() -> None:
    """``statement_head="own"``: the statements get a hidden layer of their own, and the CPU
    rewrite keeps the output equal."""
    from ecg_gateway.triage.optimize import optimize_for_cpu

    torch.manual_seed(0)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16, head="pool", length=250,
                    n_statements=7, statement_head="own").eval()
    x = torch.randn(3, 8, 250)
    main, _, statements = net.forward_train(x)
    torch.testing.assert_close(torch.cat((main, statements), dim=1), net(x))
    torch.testing.assert_close(optimize_for_cpu(net)(x), net(x), atol=1e-5, rtol=1e-5)
    assert isinstance(net.statements, nn.Sequential) and net.arch_kwargs()["statement_head"] == "own"
    rebuilt = TriageNet(**net.arch_kwargs()).eval()
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x), net(x))
