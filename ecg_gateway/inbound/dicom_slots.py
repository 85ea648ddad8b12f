"""Connection slots of the DICOM listener: a cap per address and in all (issue #29).

pynetdicom gives every accepted socket an association thread (and a DUL thread) as soon as
it connects, and counts it against ``maximum_associations`` before any A-ASSOCIATE-RQ:
50 idle sockets from 13 addresses took every association and ~60 MB of RSS. The slots
count accepted sockets still in their TLS handshake and associations alike; at either cap
a new connection evicts the longest-idle one with no message in progress (caps.py), and
only when all are busy is it refused, before any thread is started for it.

Activity is stamped on the association (``_ecg_since`` when the connection opens,
``_ecg_rx`` at every read, ``_ecg_busy`` while a C-STORE is handled); a connection without
a stamp yet is busy (it is being set up).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ecg_gateway.caps import longest_idle


@dataclass(eq=False)
class Peer:
    """One connection as the caps see it."""

    ip: str
    idle_since: float
    busy: bool
    close: Callable[[], None]


def _shutdown(sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.shutdown(socket.SHUT_RDWR)  # its threads see end-of-file and finish


def association_peer(assoc: Any) -> Peer:
    """An association's address, idle time and whether a message is in progress on it."""
    since = getattr(assoc, "_ecg_since", None)
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    busy = since is None or getattr(assoc, "_ecg_busy", False) or message is not None
    idle_since = max(since or 0.0, getattr(assoc, "_ecg_rx", 0.0))
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return Peer(str(assoc.requestor.address), idle_since, busy, lambda: _shutdown(sock))


class DicomSlots:
    """Admission for accepted sockets; thread-safe (the accept loop and connection threads)."""

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip, self.total = per_ip, total
        self._lock = threading.Lock()
        self._pending: dict[int, Peer] = {}  # accepted, not yet an association (TLS handshake)
        self._evicted: weakref.WeakSet[Any] = weakref.WeakSet()  # closing, still alive a moment

    def admit(self, key: int, ip: str, sock: Any,
              associations: Iterable[Any]) -> tuple[str | None, Peer | None]:
        """(refusal reason, None), or (None, the peer evicted to make room, if any)."""
        with self._lock:
            peers = list(self._pending.values())
            for assoc in associations:
                if assoc not in self._evicted:
                    peer = association_peer(assoc)
                    peer.close = self._closer(assoc, peer.close)
                    peers.append(peer)
            victim = None
            for reason, cap, pool in (("too many connections from this address", self.per_ip,
                                       [p for p in peers if p.ip == ip]),
                                      ("too many connections", self.total, peers)):
                if len(pool) >= cap:
                    victim = longest_idle(pool, lambda p: p.idle_since, lambda p: p.busy)
                    if victim is None:
                        return reason, None
                    break
            if victim is not None:
                self._pending = {k: p for k, p in self._pending.items() if p is not victim}
            self._pending[key] = Peer(ip, time.monotonic(), False, lambda: _shutdown(sock))
        if victim is not None:
            victim.close()
        return None, victim

    def settled(self, key: int) -> None:
        """The socket became an association (now counted as one) or is gone."""
        with self._lock:
            self._pending.pop(key, None)

    def _closer(self, assoc: Any, close: Callable[[], None]) -> Callable[[], None]:
        def evict() -> None:
            self._evicted.add(assoc)
            close()
        return evict
