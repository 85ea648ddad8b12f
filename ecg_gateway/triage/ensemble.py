"""Sliding windows and ensemble members in one module: what a checkpoint's network computes.

A network trained on random 2.5 s crops (triage.md §6) reads an ECG as overlapping windows;
the window outputs are aggregated (mean or max, chosen on PTB-XL fold 9) and the members of an
ensemble averaged. Training validation, evaluation and the daemon all run this module, so
the window layout and the aggregation cannot drift between them. A v1 checkpoint is the
degenerate case: one member, one window covering the whole input.

``forward(x [N, leads, length]) -> [N, n_classes + n_statements]`` probabilities: softmax over
the triage classes, sigmoid per statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

AGGREGATIONS = ("mean", "max")


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """How a full-length input is cut: ``length`` samples every ``stride`` samples; the triage
    probabilities and the statement probabilities are each aggregated over the windows."""

    length: int
    stride: int
    triage: str = "mean"
    statements: str = "max"

    def __post_init__(self) -> None:
        if self.length < 16 or self.stride < 1:
            raise ValueError(f"window length >= 16 and stride >= 1, got {self.length}/{self.stride}")
        if self.triage not in AGGREGATIONS or self.statements not in AGGREGATIONS:
            raise ValueError(f"aggregations must be in {AGGREGATIONS}, got {self.triage}/{self.statements}")

    def count(self, full: int) -> int:
        """Windows over an input of ``full`` samples (one if it is no longer than a window)."""
        return 1 if full <= self.length else (full - self.length) // self.stride + 1

    def to_dict(self) -> dict[str, object]:
        return {"length": self.length, "stride": self.stride, "triage": self.triage,
                "statements": self.statements}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> WindowSpec:
        return cls(length=int(data["length"]), stride=int(data["stride"]),  # type: ignore[call-overload]
                   triage=str(data.get("triage", "mean")), statements=str(data.get("statements", "max")))


def _aggregate(p: Tensor, how: str) -> Tensor:
    """``[N, W, C]`` -> ``[N, C]``."""
    return p.mean(dim=1) if how == "mean" else p.amax(dim=1)


class WindowedEnsemble(nn.Module):
    """Members (each ``[M, leads, window] -> logits [M, n_classes + n_statements]``) over the
    windows of the input; see the module docstring."""

    def __init__(self, members: Sequence[nn.Module], n_classes: int, length: int,
                 windows: WindowSpec | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.n_classes = n_classes
        self.length = length  # the full input length (the checkpoint's contract)
        self.window = windows.length if windows is not None and windows.length < length else length
        self.stride = windows.stride if windows is not None else length
        self.triage_how = windows.triage if windows is not None else "mean"
        self.statements_how = windows.statements if windows is not None else "max"

    def _windows(self, x: Tensor) -> Tensor:
        if self.window >= self.length:  # decided at construction: traces without a branch
            return x.unsqueeze(1)
        return x.unfold(2, self.window, self.stride).transpose(1, 2)  # [N, W, leads, window]

    def forward(self, x: Tensor) -> Tensor:
        windows = self._windows(x)
        n, w = windows.shape[0], windows.shape[1]
        flat = windows.reshape(n * w, windows.shape[2], windows.shape[3])
        total = torch.zeros(0)
        for i, member in enumerate(self.members):
            out = member(flat).float()
            probs = torch.cat((torch.softmax(out[:, :self.n_classes], dim=1),
                               torch.sigmoid(out[:, self.n_classes:])), dim=1)
            total = probs if i == 0 else total + probs
        mean = (total / len(self.members)).reshape(n, w, -1)
        triage = _aggregate(mean[:, :, :self.n_classes], self.triage_how)
        if self.triage_how == "max":  # a distribution again
            triage = triage / triage.sum(dim=1, keepdim=True)
        statements = _aggregate(mean[:, :, self.n_classes:], self.statements_how)
        return torch.cat((triage, statements), dim=1)
