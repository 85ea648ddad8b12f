"""An inference-only rewrite of a :class:`TriageNet` that runs ~1.5× faster on CPU.

Same function, different kernels (outputs match the original to ~1e-6):

* every Conv1d becomes a Conv2d over ``[N, C, 1, L]`` in channels-last memory: oneDNN's
  "nwc" kernels reach 1.5–3× the FLOP/s of its "ncw" ones for these shapes (small channel
  counts, 1×1 and dilated convs), measured in bench/inference.py;
* a 1×1 conv (including a dilated conv reduced to its centre tap) runs as one GEMM on the
  channels-last rows (``PointwiseConv``): ~10 % more ECG/s at batch 32 on the 2-core box;
* a BatchNorm that directly follows a conv is folded into the conv's weights; a
  pre-activation ``BN → ReLU`` before a 1×1 conv moves its affine into that conv, leaving
  one per-channel clamp (``ClampRange``, decisions.md 29); the one before the head becomes a
  per-channel multiply-add and an in-place ReLU on the channels-last rows (``AffineReLU``),
  about half the time of ``batch_norm`` + ``relu`` on these shapes;
* the remaining convs (k>1) run with their weights reordered once into oneDNN's blocked
  layout (``PackedConv``) and the ReLU that follows a conv is fused into it: ~5 % more
  ECG/s at batch 32 (decisions.md 26); skipped where the oneDNN ops are missing;
* a residual block adds its shortcut into the freshly concatenated branches in place;
* a dilated conv whose input (known statically from the contract length) is no longer
  than its dilation keeps only its centre tap (see ``network.DilatedConv1d``).

Training never sees this module; the checkpoint holds the original weights.
"""

from __future__ import annotations

import copy
from typing import Optional, TypeGuard, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ecg_gateway.triage.network import ResidualBlock, TriageNet

#: Run 1×1 convs as GEMMs (PointwiseConv); measured per machine in bench/inference.py.
POINTWISE_AS_GEMM = True


def _input_lengths(net: TriageNet, leads: int, length: int) -> dict[nn.Conv1d, int]:
    """The input length every Conv1d sees for a ``[1, leads, length]`` input."""
    seen: dict[nn.Conv1d, int] = {}

    def record(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen[mod] = int(args[0].shape[-1])  # type: ignore[index]

    hooks = [m.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, nn.Conv1d)]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, leads, length))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _int_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    """The padding in samples (the network never pads by name, "same" or "valid")."""
    if isinstance(conv.padding, str):
        raise ValueError(f"cannot rewrite a conv with padding={conv.padding!r}")
    return conv.padding


def _conv2d(conv: nn.Conv1d, in_length: int) -> nn.Conv2d:
    """Conv1d → equivalent channels-last Conv2d (centre tap only if the rest reads padding)."""
    (k,), (s,), (d,), (p,) = conv.kernel_size, conv.stride, conv.dilation, _int_padding(conv)
    weight = conv.weight.detach()
    if k > 1 and in_length <= d and p == d * (k - 1) // 2:
        weight, k, d, p = weight[:, :, k // 2:k // 2 + 1], 1, 1, 0
    out = nn.Conv2d(conv.in_channels, conv.out_channels, (1, k), stride=(1, s), padding=(0, p),
                    dilation=(1, d), groups=conv.groups, bias=conv.bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight.unsqueeze(2))
        if conv.bias is not None and out.bias is not None:
            out.bias.copy_(conv.bias.detach())
    return out.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs


class PointwiseConv(nn.Module):
    """A 1×1 conv on a channels-last ``[N, C, 1, L]`` tensor run as one GEMM (``F.linear``).

    In channels-last memory the tensor already is the ``[N·L, C]`` matrix, so the conv is a
    plain matrix product with no layout change; oneDNN's direct 1×1 kernels reach less of
    the matmul rate on these short, narrow shapes (bench/inference.py profile). ``relu``
    applies the ReLU that follows in place (a prepacked oneDNN linear with a fused ReLU was
    measured slower than this, decisions.md 26).
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.groups, self.stride = (1, 1), 1, conv.stride[1]
        self.relu = relu
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).contiguous(),
                                   requires_grad=False)
        self.bias = (nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
                     if conv.bias is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[..., ::self.stride]
        rows = x.permute(0, 2, 3, 1)  # [N, 1, L, C]: a view when x is channels-last
        out = F.linear(rows, self.weight, self.bias)
        return (out.relu_() if self.relu else out).permute(0, 3, 1, 2)


class PackedConv(nn.Module):
    """A channels-last Conv2d whose weight oneDNN reordered once, with an optional fused ReLU.

    ``F.conv2d`` reorders the weight into oneDNN's blocked layout on every call; with the
    weight packed once, batches of 8 and more run ~6 % faster here (decisions.md 26). Below
    ``min_batch`` the packed kernels measured slower (batch 1: -14 %), so small batches
    keep the plain call. Same arithmetic, same outputs. Scriptable, so a traced graph of the
    rewrite (``lanes.py``) keeps both paths.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, input_size: list[int], min_batch: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.groups = conv.kernel_size, conv.groups
        self.stride, self.padding, self.dilation = (list(conv.stride), list(_int_padding(conv)),
                                                    list(conv.dilation))
        self.relu, self.min_batch = relu, min_batch
        self.attr = "relu" if relu else "none"
        self.weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        self.bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.packed = torch.ops.mkldnn._reorder_convolution_weight(
            self.weight, self.padding, self.stride, self.dilation, self.groups, input_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] < self.min_batch:
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            return out.relu_() if self.relu else out
        no_scalars: list[Optional[Union[int, float, complex]]] = []  # noqa: UP007,UP045 - TorchScript's Scalar?[]
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.attr, no_scalars, "")


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``x·scale + shift`` per channel."""
    var, mean = bn.running_var, bn.running_mean
    if var is None or mean is None:
        raise ValueError("folding a BatchNorm needs its running statistics")
    weight = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.detach() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


class ClampRange(nn.Module):
    """What is left of ``BatchNorm → ReLU`` once its affine moved into the 1×1 conv that
    follows (:func:`_fold_preactivation`): one per-channel clamp over the ``[N·L, C]`` rows of a
    channels-last ``[N, C, 1, L]`` tensor, one pass instead of multiply-add + ReLU."""

    def __init__(self, low: Tensor, high: Tensor) -> None:
        super().__init__()
        self.low = nn.Parameter(low.clone(), requires_grad=False)
        self.high = nn.Parameter(high.clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.permute(0, 2, 3, 1)  # [N, 1, L, C]: a view when x is channels-last
        return torch.clamp(rows, self.low, self.high).permute(0, 3, 1, 2)


def _fold_preactivation(bn: nn.BatchNorm1d, conv: nn.Conv1d) -> ClampRange:
    """Move an eval-mode ``BN → ReLU`` into the bias-free-or-not 1×1 ``conv`` after it (in place).

    Per channel, ``relu(s·x + b) = s·clamp(x) + b`` where the clamp bounds ``x`` below by
    ``-b/s`` if ``s > 0`` and above by ``-b/s`` if ``s < 0`` (``s = 0``: the constant
    ``relu(b)``). A 1×1 conv is linear with no padding, so ``W·(s·clamp(x) + b)`` is the conv
    with weight ``W·diag(s)`` and bias ``W·b`` on ``clamp(x)``: exact up to rounding."""
    scale, shift = _bn_affine(bn)
    zero = scale == 0
    threshold = -shift / torch.where(zero, torch.ones_like(scale), scale)
    inf = torch.full_like(scale, float("inf"))
    low = torch.where(scale > 0, threshold, -inf)
    high = torch.where(scale < 0, threshold, inf)
    weight = conv.weight.detach()[:, :, 0]  # [out, in]
    bias = weight @ torch.where(zero, shift.clamp_min(0), shift)
    if conv.bias is not None:
        bias = bias + conv.bias.detach()
    with torch.no_grad():
        conv.weight.copy_((weight * scale).unsqueeze(-1))
    conv.bias = nn.Parameter(bias, requires_grad=False)
    return ClampRange(low, high)


def _is_pointwise(module: nn.Module) -> TypeGuard[nn.Conv1d]:
    return (isinstance(module, nn.Conv1d) and module.kernel_size == (1,) and module.padding == (0,)
            and module.groups == 1)


class AffineReLU(nn.Module):
    """Eval-mode ``BatchNorm → ReLU`` on a channels-last ``[N, C, 1, L]`` tensor as
    ``relu(x·scale + shift)``: one multiply-add and one in-place ReLU over the ``[N·L, C]``
    rows, instead of batch_norm's generic kernel and a second pass."""

    def __init__(self, bn: nn.BatchNorm1d) -> None:
        super().__init__()
        scale, shift = _bn_affine(bn)
        self.scale = nn.Parameter(scale.clone(), requires_grad=False)
        self.shift = nn.Parameter(shift.clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.permute(0, 2, 3, 1)  # [N, 1, L, C]: a view when x is channels-last
        return torch.addcmul(self.shift, rows, self.scale).relu_().permute(0, 3, 1, 2)


class FastResidualBlock(nn.Module):
    """``ResidualBlock`` with the shortcut added into the concatenated branches in place."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        self.plain, self.dilated, self.shortcut = block.plain, block.dilated, block.shortcut

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.plain(x), self.dilated(x)), dim=1).add_(self.shortcut(x))


def _bn2d(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(bn.num_features, eps=bn.eps, affine=bn.affine)
    out.load_state_dict(bn.state_dict())
    return out


def _rewrite(module: nn.Module, lengths: dict[nn.Conv1d, int]) -> None:
    """In place, depth first: fold BN→ReLU→1×1 conv into ``ClampRange`` + conv, conv→BN pairs,
    other BN→ReLU pairs into ``AffineReLU``, then swap 1-D layers for 2-D ones."""
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            first, second = module[i], module[i + 1]
            third = module[i + 2] if i + 2 < len(module) else None
            if (isinstance(first, nn.BatchNorm1d) and isinstance(second, nn.ReLU)
                    and third is not None and _is_pointwise(third)):
                module[i], module[i + 1] = _fold_preactivation(first, third), nn.Identity()
            elif isinstance(first, nn.Conv1d) and isinstance(second, nn.BatchNorm1d):
                fused = fuse_conv_bn_eval(first, second)
                lengths[fused] = lengths[first]
                module[i], module[i + 1] = fused, nn.Identity()
            elif isinstance(first, nn.BatchNorm1d) and isinstance(second, nn.ReLU):
                module[i], module[i + 1] = AffineReLU(first), nn.Identity()
    for name, child in module.named_children():
        if isinstance(child, ResidualBlock):
            _rewrite(child, lengths)
            setattr(module, name, FastResidualBlock(child))
        elif isinstance(child, nn.Conv1d):
            conv = _conv2d(child, lengths[child])
            pointwise = conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            setattr(module, name, PointwiseConv(conv) if pointwise and POINTWISE_AS_GEMM else conv)
        elif isinstance(child, nn.BatchNorm1d):
            setattr(module, name, _bn2d(child))
        elif isinstance(child, nn.Dropout):
            setattr(module, name, nn.Identity())
        else:
            _rewrite(child, lengths)


def _input_shapes(body: nn.Module, x: Tensor, kinds: tuple[type, ...]) -> dict[nn.Module, list[int]]:
    """The input shape every module of ``kinds`` sees when ``body`` runs on ``x``."""
    seen: dict[nn.Module, list[int]] = {}

    def record(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen[mod] = list(args[0].shape)

    hooks = [m.register_forward_pre_hook(record) for m in body.modules() if isinstance(m, kinds)]
    try:
        with torch.inference_mode():
            body(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _fuse_relus(module: nn.Module) -> set[nn.Module]:
    """In place: every ReLU that directly follows a conv (Identities between) becomes an
    Identity; returns the convs that must apply it."""
    fused: set[nn.Module] = set()
    for child in module.children():
        fused |= _fuse_relus(child)
    if isinstance(module, nn.Sequential):
        for i, conv in enumerate(module):
            if not isinstance(conv, (nn.Conv2d, PointwiseConv)):
                continue
            j = i + 1
            while j < len(module) and isinstance(module[j], nn.Identity):
                j += 1
            if j < len(module) and isinstance(module[j], nn.ReLU):
                module[j] = nn.Identity()
                fused.add(conv)
    return fused


def pack_for_onednn(body: nn.Module, example: Tensor) -> None:
    """In place: convs get weights reordered once for oneDNN (hinted with the shapes
    ``example`` produces); convs and 1×1 GEMMs absorb the ReLU that follows them."""
    shapes = _input_shapes(body, example, (nn.Conv2d,))
    relu_after = _fuse_relus(body)
    for module in list(body.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, name, PackedConv(child, child in relu_after, shapes[child]))
            elif isinstance(child, PointwiseConv):
                child.relu = child in relu_after


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX); emulated bf16 is slower
    than float32, so the bf16 path is only worth it where this holds."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return onednn_usable() and probe is not None and bool(probe())


def onednn_usable() -> bool:
    """Whether this torch build has the oneDNN ops :func:`pack_for_onednn` relies on."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


class ChannelsLastTriageNet(nn.Module):
    """``forward(x [N, leads, length]) -> logits [N, n_classes]``, like the net it came from."""

    def __init__(self, net: TriageNet, pack: bool = True, batch_hint: int = 32,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        kwargs = net.arch_kwargs()
        self.length, self.dtype = int(kwargs["length"]), dtype
        body = copy.deepcopy(net).eval()
        leads = int(kwargs["in_leads"])
        lengths = _input_lengths(body, leads, self.length)
        _rewrite(body, lengths)  # folds BN in float32, before any rounding to bf16
        body = body.to(dtype)
        if pack and onednn_usable():
            example = torch.zeros(batch_hint, leads, 1, self.length, dtype=dtype)
            pack_for_onednn(body, example.contiguous(memory_format=torch.channels_last))
        self.body = body.eval()

    def forward(self, x: Tensor) -> Tensor:
        x4 = x.to(self.dtype).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return self.body(x4).float()


def optimize_for_cpu(net: TriageNet, pack: bool = True, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The fast CPU twin of ``net`` (eval mode only; fixed input length). ``pack=False``
    keeps the plain PyTorch conv/linear calls (no prepacked oneDNN weights); ``dtype``
    bfloat16 runs every layer in bf16 (float32 logits out) — only where
    :func:`bf16_supported`, and only for a model the bf16 check qualified (decisions.md 27)."""
    return ChannelsLastTriageNet(net.eval(), pack=pack, dtype=dtype).eval()
