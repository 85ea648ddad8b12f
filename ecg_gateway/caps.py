"""Connection caps that evict instead of refusing (both listeners, issue #29).

At a cap, a new connection takes the place of the connection that has been idle longest
with no message in progress; only when every connection is busy is the new one refused.
Idle sockets (an attacker's, or an interface engine's parked connection) therefore cannot
lock a real sender out, and evicting one loses nothing: no message is in flight on it,
and a sender reconnects on its next message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def longest_idle(items: Iterable[T], idle_since: Callable[[T], float],
                 busy: Callable[[T], bool]) -> T | None:
    """The item idle longest (smallest ``idle_since``) among those not ``busy``, or None."""
    return min((item for item in items if not busy(item)), key=idle_since, default=None)
