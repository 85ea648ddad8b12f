"""Write the bundled PLACEHOLDER model: an untrained PTB-XL-variant TriageNet.

It exists so the daemon runs end to end before a trained model ships; every result it
produces says ``placeholder: true`` in its model metadata. ``model_training`` replaces
``default_model.pt`` with a trained checkpoint in the same format.

Usage: ``python -m ecg_gateway.triage.make_placeholder [OUT]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ecg_gateway.ecg import INDEPENDENT_LEADS
from ecg_gateway.triage.model import default_checkpoint_path, save_checkpoint
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.preprocess import InputContract

PLACEHOLDER_ID = "triage-placeholder-0"


def make_placeholder(out: Path) -> str:
    torch.manual_seed(0)
    contract = InputContract(fs=100.0, length=1000, leads=INDEPENDENT_LEADS, units="mV", scale=1.0)
    net = TriageNet(in_leads=len(contract.leads), fs=contract.fs, length=contract.length).eval()
    return save_checkpoint(out, net, contract, thresholds={}, metadata={
        "model_id": PLACEHOLDER_ID, "placeholder": True,
        "description": "UNTRAINED random weights; outputs carry no clinical meaning",
        "training": None, "metrics": None,
    })


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else default_checkpoint_path()
    print(f"{out}: sha256 {make_placeholder(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
