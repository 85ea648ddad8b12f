"""Inference threads: `serve --role all` leaves cores to the receivers and the sender.

bench/e2e_profile.py showed the worker's 2 OpenMP threads waiting for each other on a busy
2-core machine (model forward ~4x the samples it takes on 1 thread), which slowed every
other stage too; ``model.cpu_threads: 0`` (auto) now means half the cores with --role all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecg_gateway.config import load_config
from ecg_gateway.errors import ConfigError
from ecg_gateway.triage.model import cpu_threads
from tests.support.gateway import GatewayProcess, write_config


def test_auto_is_half_the_cores_when_sharing_and_all_of_them_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, shared, alone in ((1, 1, 1), (2, 1, 2), (3, 1, 3), (16, 8, 16)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert cpu_threads(0, shares_process=True) == shared
        assert cpu_threads(0, shares_process=False) == alone
    assert cpu_threads(3, shares_process=True) == 3  # an explicit number wins


def test_cpu_threads_must_not_be_negative(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {cpu_threads: -1}\n")
    with pytest.raises(ConfigError, match="model.cpu_threads"):
        load_config(path)


def test_serve_role_all_runs_inference_on_the_auto_thread_count(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", http={"enabled": False},
                          hl7={"enabled": False})
    proc = GatewayProcess(config)
    try:
        line = proc.wait_for_event("worker_cpu_threads", timeout=60)
        assert line["threads"] == max(1, (os.cpu_count() or 1) // 2)
        assert line["role"] == "all"
        proc.wait_started()
    finally:
        assert proc.stop() == 0
