"""A triage worker process for the SIGKILL-during-inference test (reliability.md T2).

``python -m tests.support.slow_worker_proc DB_URL DELAY_S SIGNAL_DIR``: runs the real Worker with the
bundled model; ``predict`` first writes ``SIGNAL_DIR/inferring`` and sleeps ``DELAY_S`` (the
"fake model sleeps" of reliability.md §2, so a kill lands inside inference for sure). With
DELAY_S 0 the worker writes ``SIGNAL_DIR/ready`` once its model is loaded and only starts
claiming when ``SIGNAL_DIR/go`` exists, so the test can measure the reclaim time alone.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np


def main(db_url: str, delay_s: float, signals: Path) -> None:
    import torch

    from ecg_gateway.config import Config
    from ecg_gateway.inbound.decode import decode_message
    from ecg_gateway.store.db import make_engine, make_session_factory
    from ecg_gateway.triage.model import TriageModel, load_model
    from ecg_gateway.worker import Worker

    torch.set_num_threads(1)

    class SlowModel(TriageModel):
        """The real model; inference announces itself, then takes ``delay_s`` longer."""

        def __init__(self, model: TriageModel) -> None:
            self.__dict__.update(model.__dict__)

        def predict_full(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            (signals / "inferring").write_text(str(time.time()))
            time.sleep(delay_s)
            return super().predict_full(batch)

    config = Config(worker={"lease_s": 2, "poll_interval_s": 0.05, "max_attempts": 3},
                    model={"device": "cpu", "batch_size": 4})
    sessions = make_session_factory(make_engine(db_url))
    load = (lambda path, device: SlowModel(load_model(path, device))) if delay_s else load_model
    worker = Worker(sessions, config, decode_message, load=load)
    assert worker.ensure_model()
    if not delay_s:
        (signals / "ready").write_text("1")
        while not (signals / "go").exists():
            time.sleep(0.01)
    worker.run(threading.Event())  # until the test kills or terminates us


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]))
