"""A real MLLP receiver acting as the EHR worklist: :class:`EhrPeer` on its own event-loop
thread (tests), :class:`EhrProcess` in its own process so it does not share the GIL (bench)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from ecg_gateway.mllp import serve_mllp


def control_id(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].decode().split("|")[9]


def aa(payload: bytes) -> bytes:
    return (f"MSH|^~\\&|EHR|HOSP|ECG-GATEWAY|HOSP|20260101000000||ACK^R01^ACK|A{control_id(payload)}|P|2.5.1\r"
            f"MSA|AA|{control_id(payload)}\r").encode()


class EhrPeer:
    """Collects every ORU it receives; answers with ``reply(payload)`` (default: AA)."""

    def __init__(self, reply: Callable[[bytes], bytes | None] = aa, ssl_context: ssl.SSLContext | None = None) -> None:
        self.received: list[bytes] = []
        self._ssl_context = ssl_context
        self.received_at: list[float] = []
        self._reply = reply
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def handler(payload: bytes, peer: str) -> bytes | None:
            self.received.append(payload)
            self.received_at.append(time.time())
            return self._reply(payload)

        async def start() -> None:
            self._server = await serve_mllp(handler, "127.0.0.1", 0, max_frame_bytes=32 << 20,
                                            message_timeout_s=30, idle_timeout_s=300, max_connections=8,
                                            ssl_context=self._ssl_context)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def wait_for(self, count: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _ehr_main(conn: Any) -> None:
    from ecg_gateway.logs import configure_logging

    configure_logging("WARNING", json_output=True, stream=open(os.devnull, "w"))  # noqa: SIM115
    received: list[tuple[str, float]] = []

    async def handler(payload: bytes, peer: str) -> bytes:
        received.append((control_id(payload), time.time()))
        return aa(payload)

    async def main() -> None:
        server = await serve_mllp(handler, "127.0.0.1", 0, max_frame_bytes=64 << 20,
                                  message_timeout_s=60, idle_timeout_s=3600, max_connections=16)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            conn.send(list(received))
        server.close()

    asyncio.run(main())


class EhrProcess:
    """A real MLLP EHR worklist in its own process (so it does not share our GIL)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_ehr_main, args=(child,), daemon=True)
        self._proc.start()
        self.port: int = self._conn.recv()

    def received(self) -> dict[str, float]:
        """Control id -> first arrival time (wall clock)."""
        self._conn.send("dump")
        out: dict[str, float] = {}
        for cid, at in self._conn.recv():
            out.setdefault(cid, at)
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
