"""serve's signal handling (issue #31): handlers only for the run, one graceful timeout, and a
second signal that cuts the drain short (uvicorn's ``capture_signals`` / ``force_exit``).

In-process and without a database: only the stop logic runs, with real signals sent to
this process. The whole daemon's stop is covered by test_deploy.py and test_crash.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import FrameType

from ecg_gateway.app import DRAIN_TIMEOUT_S, HANDLED_SIGNALS, Gateway, capture_signals
from ecg_gateway.config import Config
from tests.support.pace import scaled


def test_capture_signals_routes_to_the_loop_and_restores_the_previous_handlers() -> None:
    seen: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        seen.append(-signum)

    old = {sig: signal.signal(sig, previous) for sig in HANDLED_SIGNALS}
    try:
        async def run() -> None:
            got = asyncio.Event()
            with capture_signals(lambda sig: (seen.append(sig), got.set())):
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(got.wait(), 5)

        asyncio.run(run())
        assert seen == [signal.SIGTERM]
        assert all(signal.getsignal(sig) is previous for sig in HANDLED_SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)  # the previous handler answers again
        assert seen == [signal.SIGTERM, -signal.SIGTERM]
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_first_signal_stops_and_a_second_forces_the_exit() -> None:
    async def run() -> tuple[bool, float, bool]:
        gateway = Gateway(Config())
        gateway._on_signal(signal.SIGTERM)
        stopping, forced_before = gateway._stopping.is_set(), gateway.force_exit
        gateway._drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        asyncio.get_running_loop().call_later(0.2, gateway._on_signal, signal.SIGINT)
        started = time.monotonic()
        done = await gateway._drain(lambda: False)  # a drain that would take the whole timeout
        assert not done and not forced_before
        return stopping, time.monotonic() - started, gateway.force_exit

    stopping, waited, forced = asyncio.run(run())
    assert stopping and forced
    assert waited < min(scaled(1.0), DRAIN_TIMEOUT_S / 3)  # cut short by the signal at 0.2 s


def test_the_drain_shares_one_deadline() -> None:
    async def run() -> tuple[bool, bool, float]:
        gateway = Gateway(Config())
        gateway._drain_deadline = time.monotonic() + 0.3
        started = time.monotonic()
        first = await gateway._drain(lambda: False)
        second = await gateway._drain(lambda: False)  # the next stage gets what is left: nothing
        return first, second, time.monotonic() - started

    first, second, waited = asyncio.run(run())
    assert not first and not second
    assert waited < 0.3 + min(scaled(0.25), 0.29)  # one 0.3 s deadline, not 0.3 s per stage
