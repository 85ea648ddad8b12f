"""A worker process for the concurrency test: drains the queue, reports how many it did."""

from __future__ import annotations

import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

from sqlalchemy import func, select


def drain(db_url: str, checkpoint: str, batch_size: int, out: Queue, go: Event,
          deadline_s: float = 120.0) -> None:
    """Load the model, say ready, wait for ``go`` (so all workers start together), drain."""
    import torch

    from ecg_gateway.config import Config, ModelConfig, WorkerConfig
    from ecg_gateway.store.db import make_engine, make_session_factory
    from ecg_gateway.store.models import Job
    from ecg_gateway.worker import Worker
    from tests.support.synthetic import decode_npz

    torch.set_num_threads(1)
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    config = Config(model=ModelConfig(path=checkpoint, device="cpu", batch_size=batch_size),
                    worker=WorkerConfig(poll_interval_s=0.05, lease_s=60))
    worker = Worker(sessions, config, decode_npz)
    if not worker.ensure_model():
        raise SystemExit(3)
    out.put("ready")
    go.wait(60)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if worker.run_once() == 0:
            with sessions() as s:
                open_jobs = s.scalar(select(func.count()).select_from(Job).where(Job.state.in_(["queued", "running"])))
            if open_jobs == 0:
                break
            time.sleep(0.02)
    out.put(worker.processed)
    engine.dispose()
