"""Deadlines from the measured pace of this machine, not fixed seconds (issue #29).

A deadline in a test states what a machine does when it has the CPU (a result within 2 s);
on a loaded 2-core box the same work gets a fraction of a core and the test failed for no
fault of the code. ``cpu_share()`` measures that fraction now: the CPU time a busy loop in
this process gets per wall-clock second (1.0 idle, ~0.5 with two busy processes on two
cores). ``scaled(s)`` stretches a deadline by its inverse, at most ``cap`` times, so a test
keeps its teeth: a bug that costs a poll interval, a lease or a timeout still fails it.
"""

from __future__ import annotations

import time

DEFAULT_CAP = 5.0


def cpu_share(sample_s: float = 0.3) -> float:
    """The fraction of one core this thread gets right now (0 < share <= 1)."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall0 < sample_s:
        pass
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    return min(1.0, max(cpu / wall, 1e-3))


def scaled(seconds: float, cap: float = DEFAULT_CAP, share: float | None = None) -> float:
    """``seconds`` stretched by the measured slowdown, never more than ``cap`` times."""
    share = cpu_share() if share is None else share
    return seconds * min(cap, 1.0 / share)
