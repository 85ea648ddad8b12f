"""MLLP framing (``<VT> payload <FS><CR>``) and an asyncio server and client.

Ours, not hl7apy's ``MLLPServer`` (byte-at-a-time reads, no size cap, no ACK for latin-1)
nor python-hl7's reader (loses the message after a trailing LF). The decoder works on
whole chunks with ``bytes.find`` and resynchronises to the next ``<VT>`` after junk, a BOM,
a trailing LF or a nested ``<VT>``; frames above the cap are dropped without being buffered.
The same decoder reads ACKs in :class:`MllpClient`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from ecg_gateway.errors import GatewayError

log = structlog.get_logger(__name__)

VT = 0x0B
FS = 0x1C
CR = 0x0D
START = b"\x0b"
END = b"\x1c\x0d"
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Bytes of an oversized frame kept so the receiver can still read its MSH and answer.
TOO_LARGE_HEAD_BYTES = 4096
_READ_CHUNK = 256 * 1024


class MllpError(GatewayError):
    """Root of MLLP transport failures."""


class MllpTimeout(MllpError, TimeoutError):
    """No connection or no complete ACK frame within the configured time."""


class MllpConnectionError(MllpError, ConnectionError):
    """The peer refused, reset or closed the connection."""


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in MLLP start/end bytes."""
    return START + payload + END


@dataclass(frozen=True, slots=True)
class FrameTooLarge:
    """Marker for a discarded frame: its first bytes (to read MSH-10) and its size so far."""

    head: bytes
    size: int


class MllpDecoder:
    """Incremental MLLP decoder: feed raw reads, get complete payloads back in order.

    ``feed`` returns ``bytes`` payloads and, for frames above ``max_frame_bytes``, a
    :class:`FrameTooLarge` marker in the position the frame had. A ``<FS>`` ends a frame
    (the ``<CR>`` after it is consumed, also when it comes in the next read); bytes outside
    a frame are junk and dropped; a ``<VT>`` inside a frame restarts the frame.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._discarding = False  # inside an oversized frame: count, do not keep
        self._discard_head = b""
        self._discard_size = 0
        self._after_fs = False  # the next byte may be the CR that belongs to the end block
        self.junk_bytes = 0
        self.frames_too_large = 0
        self.frames_restarted = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held in memory (never above the cap)."""
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """True between a ``<VT>`` and its ``<FS>``: a message is in progress."""
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes | FrameTooLarge]:
        out: list[bytes | FrameTooLarge] = []
        pos, end = 0, len(data)
        if self._after_fs and end:
            self._after_fs = False
            if data[0] == CR:
                pos = 1
        while pos < end:
            if not self._in_frame:
                start = data.find(START, pos)
                if start < 0:
                    self.junk_bytes += end - pos
                    break
                self.junk_bytes += start - pos
                self._begin_frame()
                pos = start + 1
                continue
            stop = data.find(b"\x1c", pos)
            restart = data.find(START, pos, stop if stop >= 0 else end)
            if restart >= 0:  # a new <VT> before the end block: the sender started over
                self._append(data, pos, restart)
                self.frames_restarted += 1
                if self._discarding:
                    out.append(self._close_discarded())
                self._begin_frame()
                pos = restart + 1
                continue
            if stop < 0:
                self._append(data, pos, end)
                break
            self._append(data, pos, stop)
            out.append(self._close_discarded() if self._discarding else bytes(self._buf))
            self._buf.clear()
            self._in_frame = False
            pos = stop + 1
            if pos < end:
                if data[pos] == CR:
                    pos += 1
            else:
                self._after_fs = True
        return out

    def _begin_frame(self) -> None:
        self._buf.clear()
        self._in_frame = True
        self._discarding = False

    def _append(self, data: bytes, start: int, stop: int) -> None:
        n = stop - start
        if n <= 0:
            return
        if self._discarding:
            self._discard_size += n
            return
        if len(self._buf) + n > self.max_frame_bytes:
            self._discarding = True
            self._discard_size = len(self._buf) + n
            head = bytes(self._buf[:TOO_LARGE_HEAD_BYTES])
            if len(head) < TOO_LARGE_HEAD_BYTES:
                head += data[start:start + TOO_LARGE_HEAD_BYTES - len(head)]
            self._discard_head = head
            self._buf = bytearray()  # release the memory, not just the length
            return
        self._buf += data[start:stop]

    def _close_discarded(self) -> FrameTooLarge:
        self.frames_too_large += 1
        marker = FrameTooLarge(self._discard_head, self._discard_size)
        self._discarding = False
        self._discard_head = b""
        self._discard_size = 0
        return marker


#: A handler answers with one ACK payload, several (sent in order, each framed) or None.
Reply = bytes | list[bytes] | None
Handler = Callable[[bytes, str], Awaitable[Reply]]
TooLargeHandler = Callable[[FrameTooLarge, str], Awaitable[Reply]]


#: Told about every refused connection: (peer "ip:port", reason).
RefusalHook = Callable[[str, str], None]


class _Limits:
    def __init__(self, max_frame_bytes: int, message_timeout_s: float, idle_timeout_s: float,
                 max_connections: int, max_connections_per_ip: int | None) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.message_timeout_s = message_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip or max_connections
        self.active = 0
        self.per_ip: dict[str, int] = {}

    def refusal(self, ip: str) -> str | None:
        if self.active >= self.max_connections:
            return "max_connections"
        if self.per_ip.get(ip, 0) >= self.max_connections_per_ip:
            return "max_connections_per_ip"
        return None

    def enter(self, ip: str) -> None:
        self.active += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1

    def leave(self, ip: str) -> None:
        self.active -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)


async def serve_mllp(
    handler: Handler, host: str, port: int, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    message_timeout_s: float = 30.0, idle_timeout_s: float = 300.0, max_connections: int = 64,
    ssl_context: ssl.SSLContext | None = None, too_large_handler: TooLargeHandler | None = None,
    max_connections_per_ip: int | None = None, on_refused: RefusalHook | None = None,
) -> asyncio.Server:
    """Start an MLLP listener; ``handler(payload, "ip:port")`` returns the ACK payload(s) or None.

    Messages on one connection are handled one at a time, so ACKs go out in order. A frame
    not finished within ``message_timeout_s`` of its ``<VT>`` closes the connection without
    an ACK (slow-loris); so does ``idle_timeout_s`` without a complete message. Connections
    above ``max_connections``, or above ``max_connections_per_ip`` from one address (idle
    sockets from one host must not lock every sender out), are closed at once and reported to
    ``on_refused``. ``too_large_handler`` may answer a frame that exceeded the cap (given its
    first bytes); without it the frame is dropped silently.
    """
    limits = _Limits(max_frame_bytes, message_timeout_s, idle_timeout_s, max_connections,
                     max_connections_per_ip)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        ip = peer.rsplit(":", 1)[0]
        reason = limits.refusal(ip)
        if reason is not None:
            log.warning("mllp_connection_refused", peer=peer, reason=reason)
            if on_refused is not None:
                on_refused(peer, reason)
            await _close(writer)
            return
        limits.enter(ip)
        try:
            await _connection(reader, writer, peer, handler, too_large_handler, limits)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("mllp_connection_lost", peer=peer, error=type(exc).__name__)
        finally:
            limits.leave(ip)
            await _close(writer)

    return await asyncio.start_server(
        on_connect, host, port, ssl=ssl_context, limit=_READ_CHUNK,
        ssl_handshake_timeout=min(message_timeout_s, 30.0) if ssl_context else None,
    )


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                      handler: Handler, too_large_handler: TooLargeHandler | None,
                      limits: _Limits) -> None:
    loop = asyncio.get_running_loop()
    decoder = MllpDecoder(limits.max_frame_bytes)
    idle_since = loop.time()
    frame_started: float | None = None
    log.debug("mllp_connected", peer=peer)
    while True:
        if frame_started is not None:
            remaining, reason = frame_started + limits.message_timeout_s - loop.time(), "message_timeout"
        else:
            remaining, reason = idle_since + limits.idle_timeout_s - loop.time(), "idle_timeout"
        try:
            data = await asyncio.wait_for(reader.read(_READ_CHUNK), max(remaining, 0.0))
        except TimeoutError:
            log.info("mllp_connection_closed", peer=peer, reason=reason,
                     pending_bytes=decoder.pending_bytes)
            return
        if not data:
            if decoder.in_frame:
                log.info("mllp_connection_closed", peer=peer, reason="eof_mid_frame",
                         pending_bytes=decoder.pending_bytes)
            return
        now = loop.time()
        items = decoder.feed(data)
        for item in items:
            if isinstance(item, FrameTooLarge):
                log.warning("mllp_frame_too_large", peer=peer, size=item.size,
                            limit=limits.max_frame_bytes)
                ack = await too_large_handler(item, peer) if too_large_handler else None
            else:
                try:
                    ack = await handler(item, peer)
                except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the listener
                    log.error("mllp_handler_failed", peer=peer, error=type(exc).__name__)
                    return
            if ack:
                replies = [ack] if isinstance(ack, bytes) else ack
                writer.write(b"".join(frame(reply) for reply in replies))
                await writer.drain()
        if items:
            idle_since = loop.time()
        if not decoder.in_frame:
            frame_started = None
        elif items or frame_started is None:
            frame_started = now


def _peer_name(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5.0)
    except (OSError, TimeoutError, ssl.SSLError):
        pass


class MllpClient:
    """A persistent MLLP connection that sends one message and waits for its ACK frame.

    Any failure (timeout, reset, EOF) closes the connection, so a late ACK can never be
    taken for the answer to the next message; the next ``send`` reconnects.
    """

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 5.0,
                 ack_timeout_s: float = 10.0, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.ssl_context = ssl_context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = MllpDecoder(max_frame_bytes)
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return (self._writer is not None and not self._writer.is_closing()
                and self._reader is not None and not self._reader.at_eof())

    async def connect(self) -> None:
        """Open the connection (no-op when already open). Raises MllpTimeout/MllpConnectionError."""
        if self.connected:
            return
        await self.close()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl_context,
                                        limit=_READ_CHUNK),
                self.connect_timeout_s)
        except TimeoutError as exc:
            raise MllpTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise MllpConnectionError(
                f"cannot connect to {self.host}:{self.port}: {type(exc).__name__}") from exc
        self._decoder = MllpDecoder(self.max_frame_bytes)

    async def send(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the ACK frame that answers it."""
        async with self._lock:
            await self.connect()
            assert self._reader is not None and self._writer is not None
            self._decoder = MllpDecoder(self.max_frame_bytes)  # nothing stale is read as an ACK
            try:
                self._writer.write(frame(payload))
                await asyncio.wait_for(self._writer.drain(), self.ack_timeout_s)
                return await asyncio.wait_for(self._read_ack(), self.ack_timeout_s)
            except TimeoutError as exc:
                await self.close()
                raise MllpTimeout(f"no ACK from {self.host}:{self.port} "
                                  f"within {self.ack_timeout_s} s") from exc
            except MllpError:
                await self.close()
                raise
            except (OSError, ssl.SSLError) as exc:
                await self.close()
                raise MllpConnectionError(
                    f"connection to {self.host}:{self.port} failed: {type(exc).__name__}") from exc

    async def _read_ack(self) -> bytes:
        assert self._reader is not None
        while True:
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                raise MllpConnectionError(f"{self.host}:{self.port} closed without an ACK")
            for item in self._decoder.feed(data):
                if isinstance(item, FrameTooLarge):
                    raise MllpError(f"ACK from {self.host}:{self.port} exceeds "
                                    f"{self.max_frame_bytes} bytes")
                return item  # anything after the first ACK frame is dropped with the decoder

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            await _close(writer)

    async def __aenter__(self) -> MllpClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
