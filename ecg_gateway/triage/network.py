"""The triage CNN: one definition shared by the daemon and ``model_training/``.

A reconstruction of the 37-layer residual network of van de Leur et al. (JAHA 2020) from
the group's public code (docs: triage.md §1.3):

* stem, 3 conv: Conv(k7, stride 2) → BN-ReLU → Conv(k1) → BN-ReLU-Dropout → Conv(k5);
* body, 16 pre-activation residual blocks in 4 groups (widths 64→128→256→512, block
  strides 2,1,2,1 per group); each block runs two parallel branches (BN-ReLU-Conv k1 to
  C_in/2, then BN-ReLU-Dropout-Conv k5 to C_out/2), the second one dilated, and
  concatenates them; a 1×1 conv shortcut where the shape changes; 2 conv layers of depth;
* heads, 2 FC: Flatten → Linear(→fc_hidden)-ReLU-Dropout → Linear(→n_classes). An
  auxiliary head of the same shape reads the middle of the body (after group 2); it only
  serves the training loss (0.3·L_aux + L_main) and is not saved in inference checkpoints.
  Optionally (``n_statements``) a linear multi-label head on the main head's hidden layer
  predicts the SCP statements; ``forward`` then returns the triage logits followed by the
  statement logits (``[N, n_classes + n_statements]``), so one graph serves both.
* ``head="pool"`` replaces the Flatten by concatenated average and max pooling over time
  (as the PTB-XL benchmark's xresnet1d): the net then reads any input length, which lets
  it train on random 2.5 s crops and serve sliding windows (triage.md §6); ``length`` is
  then the window it was trained on.

3 + 16·2 + 2 = 37 layers. Sampling rate, length, leads, widths and depth are constructor
arguments so the paper's net (8 leads, 500 Hz, 5000 samples) and the PTB-XL variant
(100 Hz, 1000 samples) are the same class; the dilation scales with the sampling rate
(paper: 100 samples at 500 Hz, i.e. 0.2 s) unless given.

Every op is per-sample in eval mode (BatchNorm uses running statistics), so a record's
output does not depend on what else is in its batch. Parameters: 4.76 M body + 1.31 M
main head (paper) / 0.26 M (PTB-XL), + the auxiliary head in training. The daemon runs a
faster, numerically equivalent CPU rewrite of this graph (``optimize.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The paper's dilation: 100 samples at 500 Hz (0.2 s).
PAPER_DILATION_S = 100 / 500


def default_dilation(fs: float) -> int:
    """The paper's dilation expressed in samples at ``fs`` (20 at 100 Hz, 100 at 500 Hz)."""
    return max(1, round(PAPER_DILATION_S * fs))


def conv_out_len(length: int, kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0) -> int:
    """Output length of a Conv1d (PyTorch's formula)."""
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class DilatedConv1d(nn.Conv1d):
    """A "same"-padded dilated conv that skips the taps which can only read padding.

    When the input is no longer than the dilation, every tap but the centre one falls in
    the zero padding, so the conv equals a 1×1 conv with the centre tap — exactly, not
    approximately. Deep in the net (lengths 40 → 10 at 500 Hz with dilation 100) this
    avoids 4/5 of the multiply-adds, which all multiply zeros. Same weights, same keys.
    """

    def forward(self, x: Tensor) -> Tensor:
        dilation, kernel = self.dilation[0], self.kernel_size[0]
        if x.shape[-1] <= dilation and self.padding[0] == dilation * (kernel - 1) // 2:
            centre = kernel // 2
            return F.conv1d(x, self.weight[:, :, centre:centre + 1], self.bias, self.stride)
        return super().forward(x)


class _Branch(nn.Sequential):
    """BN-ReLU-Conv k1 (bottleneck to ``in_ch/2``) → BN-ReLU-Dropout-Conv k to ``out_ch``
    (strided, maybe dilated)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, dilation: int,
                 dropout: float) -> None:
        mid = in_ch // 2
        super().__init__(
            nn.BatchNorm1d(in_ch), nn.ReLU(inplace=True),
            nn.Conv1d(in_ch, mid, kernel_size=1, bias=False),
            nn.BatchNorm1d(mid), nn.ReLU(inplace=True), nn.Dropout(dropout),
            DilatedConv1d(mid, out_ch, kernel_size=kernel, stride=stride, dilation=dilation,
                      padding=dilation * (kernel - 1) // 2, bias=False),
        )


class ResidualBlock(nn.Module):
    """Pre-activation block with a plain and a dilated branch, concatenated.

    ``x [N, in_ch, L] -> [N, out_ch, ceil(L / stride)]``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, dilation: int,
                 dropout: float) -> None:
        super().__init__()
        if out_ch % 2 or in_ch % 2:
            raise ValueError(f"block widths must be even (two branches), got {in_ch}->{out_ch}")
        half = out_ch // 2
        self.plain = _Branch(in_ch, half, kernel, stride, 1, dropout)
        self.dilated = _Branch(in_ch, half, kernel, stride, dilation, dropout)
        self.shortcut: nn.Module = (
            nn.Conv1d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
            if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.plain(x), self.dilated(x)), dim=1) + self.shortcut(x)


class ConcatPool(nn.Module):
    """``[N, C, ..., L]`` → ``[N, 2C]``: mean and max over time, concatenated. Works on the
    channels-last ``[N, C, 1, L]`` tensors of the CPU rewrite as well."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((x.mean(dim=-1).flatten(1), x.amax(dim=-1).flatten(1)), dim=1)


def _head(in_features: int, hidden: int, n_classes: int, dropout: float,
          pool: bool = False) -> nn.Sequential:
    first: nn.Module = ConcatPool() if pool else nn.Flatten()
    return nn.Sequential(first, nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, n_classes))


class TriageNet(nn.Module):
    """Residual CNN ECG classifier.

    ``forward(x [N, in_leads, length]) -> logits [N, n_classes]`` in train and eval mode
    (the auxiliary head is not used). Training calls :meth:`forward_train`, which returns
    ``(main_logits, aux_logits)``, ``aux_logits`` being ``None`` when ``aux_head=False``.
    Lengths through the net, paper settings (5000 samples): stem 2500, groups
    625 → 157 → 40 → 10; PTB-XL settings (1000 samples): 500, 125 → 32 → 8 → 2.
    """

    def __init__(self, in_leads: int = 8, n_classes: int = 4, fs: float = 100, length: int = 1000,
                 stem_channels: int = 32, widths: tuple[int, ...] = (64, 128, 256, 512),
                 blocks_per_group: int = 4, kernel_size: int = 5, dilation: int | None = None,
                 dropout: float = 0.3, fc_hidden: int = 256, aux_head: bool = True,
                 n_statements: int = 0, head: str = "flatten", statement_head: str = "shared") -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if in_leads < 1 or n_classes < 2 or length < 16 or fs <= 0 or not widths:
            raise ValueError("need in_leads >= 1, n_classes >= 2, length >= 16, fs > 0, widths")
        if head not in ("flatten", "pool"):
            raise ValueError(f"head must be 'flatten' or 'pool', got {head!r}")
        if statement_head not in ("shared", "own"):
            raise ValueError(f"statement_head must be 'shared' or 'own', got {statement_head!r}")
        dilation = default_dilation(fs) if dilation is None else int(dilation)
        self._kwargs: dict[str, Any] = dict(
            in_leads=in_leads, n_classes=n_classes, fs=float(fs), length=int(length),
            stem_channels=stem_channels, widths=tuple(int(w) for w in widths),
            blocks_per_group=blocks_per_group, kernel_size=kernel_size, dilation=dilation,
            dropout=float(dropout), fc_hidden=fc_hidden, aux_head=bool(aux_head),
            n_statements=int(n_statements),
        )
        if head != "flatten":  # absent in v1 checkpoints, which rebuild with the default
            self._kwargs["head"] = head
        if statement_head != "shared":
            self._kwargs["statement_head"] = statement_head
        first = widths[0]
        self.stem = nn.Sequential(
            nn.Conv1d(in_leads, stem_channels, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(stem_channels), nn.ReLU(inplace=True),
            nn.Conv1d(stem_channels, first, kernel_size=1, bias=False),
            nn.BatchNorm1d(first), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv1d(first, first, kernel_size=kernel_size, padding=kernel_size // 2, bias=False),
        )
        n = conv_out_len(length, 7, stride=2, padding=3)
        groups, lengths, in_ch = [], [], first
        for width in widths:
            blocks = []
            for b in range(blocks_per_group):
                stride = 2 if b % 2 == 0 else 1
                blocks.append(ResidualBlock(in_ch, width, kernel_size, stride, dilation, dropout))
                n, in_ch = conv_out_len(n, 1, stride=stride), width
            groups.append(nn.Sequential(*blocks))
            lengths.append(n)
        self.groups = nn.ModuleList(groups)
        self.aux_at = len(widths) // 2 - 1  # output of this group feeds the auxiliary head
        self.final = nn.Sequential(nn.BatchNorm1d(in_ch), nn.ReLU(inplace=True))
        pool = head == "pool"
        self.n_classes = n_classes
        self.head = _head(2 * in_ch if pool else in_ch * lengths[-1], fc_hidden, n_classes, dropout, pool)
        aux_in = widths[self.aux_at] * (2 if pool else lengths[self.aux_at])
        self.aux = _head(aux_in, fc_hidden, n_classes, dropout, pool) if aux_head else None
        # "shared": one linear layer on the triage head's hidden layer; "own": a hidden layer of
        # its own on the pooled features, so the 71 statements do not share the triage bottleneck
        self.own_statement_head = statement_head == "own"
        self.statements: nn.Module | None = None
        if n_statements and self.own_statement_head:
            features = 2 * in_ch if pool else in_ch * lengths[-1]
            self.statements = nn.Sequential(nn.Linear(features, 2 * fc_hidden), nn.ReLU(inplace=True),
                                            nn.Dropout(dropout / 2), nn.Linear(2 * fc_hidden, n_statements))
        elif n_statements:
            self.statements = nn.Linear(fc_hidden, n_statements)
        self.feature_lengths = tuple(lengths)

    def arch_kwargs(self) -> dict[str, Any]:
        """Plain-type constructor arguments: ``TriageNet(**net.arch_kwargs())`` rebuilds it."""
        kwargs = dict(self._kwargs)
        kwargs["widths"] = list(kwargs["widths"])  # plain list survives torch.load(weights_only)
        return kwargs

    @property
    def conv_depth(self) -> int:
        """Layers of depth: 3 stem conv + 2 per block + 2 FC (37 for the paper's net)."""
        return 3 + 2 * len(self._kwargs["widths"]) * self._kwargs["blocks_per_group"] + 2

    def _body(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = self.stem(x)
        mid = None
        for i, group in enumerate(self.groups):
            x = group(x)
            if i == self.aux_at:
                mid = x
        return self.final(x), mid

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, in_leads, length]`` (float) -> logits ``[N, n_classes (+ n_statements)]``."""
        features, _ = self._body(x)
        if self.statements is None:
            return self.head(features)
        triage, statements = self._heads(features)
        return torch.cat((triage, statements), dim=1)

    def _heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Triage logits and statement logits from the body's output."""
        assert self.statements is not None
        pooled = self.head[0](features)
        hidden = self.head[1:-1](pooled)
        return self.head[-1](hidden), self.statements(pooled if self.own_statement_head else hidden)

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``x [N, in_leads, length]`` -> ``(main_logits, aux_logits, statement_logits)``:
        ``[N, n_classes]`` twice and ``[N, n_statements]``; ``None`` for an absent head."""
        features, mid = self._body(x)
        aux = self.aux(mid) if self.aux is not None and mid is not None else None
        if self.statements is None:
            return self.head(features), aux, None
        triage, statements = self._heads(features)
        return triage, aux, statements

    def inference_state_dict(self, statements: bool = False) -> dict[str, Tensor]:
        """The weights an inference checkpoint needs: the auxiliary head left out, and the
        statement head unless ``statements``."""
        dropped = ("aux.",) if statements else ("aux.", "statements.")
        return {k: v for k, v in self.state_dict().items() if not k.startswith(dropped)}
