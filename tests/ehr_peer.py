"""A real MLLP receiver acting as the EHR worklist, on its own event-loop thread."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable

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
