"""MLLP framing (``<VT> payload <FS><CR>``) and an asyncio server and client.

Ours, not hl7apy's ``MLLPServer`` (byte-at-a-time reads, no size cap, no ACK for latin-1)
nor python-hl7's reader (loses the message after a trailing LF). The decoder works on
whole chunks with ``bytes.find`` and resynchronises to the next ``<VT>`` after junk, a BOM,
a trailing LF or a nested ``<VT>``; frames above the cap are dropped without being buffered.
The same decoder reads ACKs in :class:`MllpClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from ecg_gateway.caps import longest_idle
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


class _Conn:
    """One accepted connection, as the connection caps see it."""

    __slots__ = ("ip", "writer", "idle_since", "busy")

    def __init__(self, ip: str, writer: asyncio.StreamWriter, now: float) -> None:
        self.ip = ip
        self.writer = writer
        self.idle_since = now
        self.busy = False  # a frame started, being handled, or its ACK being written


class _Limits:
    def __init__(self, max_frame_bytes: int, message_timeout_s: float, idle_timeout_s: float,
                 max_connections: int, max_connections_per_ip: int | None,
                 write_timeout_s: float) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.message_timeout_s = message_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip or max_connections
        self.conns: set[_Conn] = set()

    def admit(self, conn: _Conn) -> tuple[str | None, _Conn | None]:
        """(refusal reason, None) or (None, the connection to evict to make room, if any)."""
        same_ip = [c for c in self.conns if c.ip == conn.ip]
        for reason, cap, pool in (("max_connections_per_ip", self.max_connections_per_ip, same_ip),
                                  ("max_connections", self.max_connections, list(self.conns))):
            if len(pool) >= cap:
                victim = longest_idle(pool, lambda c: c.idle_since, lambda c: c.busy)
                if victim is None:
                    return reason, None
                self.conns.discard(victim)
                self.conns.add(conn)
                return None, victim
        self.conns.add(conn)
        return None, None

    def leave(self, conn: _Conn) -> None:
        self.conns.discard(conn)


async def serve_mllp(
    handler: Handler, host: str, port: int, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    message_timeout_s: float = 30.0, idle_timeout_s: float = 300.0, max_connections: int = 64,
    ssl_context: ssl.SSLContext | None = None, too_large_handler: TooLargeHandler | None = None,
    max_connections_per_ip: int | None = None, on_refused: RefusalHook | None = None,
    write_timeout_s: float = 10.0,
) -> asyncio.Server:
    """Start an MLLP listener; ``handler(payload, "ip:port")`` returns the ACK payload(s) or None.

    Messages on one connection are handled one at a time, so ACKs go out in order. A frame
    not finished within ``message_timeout_s`` of its ``<VT>`` closes the connection without
    an ACK (slow-loris); so does ``idle_timeout_s`` without a complete message, and an ACK
    the peer has not taken within ``write_timeout_s`` (a peer that never reads would hold the
    connection for ever; Mirth and HAPI close such sockets too). At ``max_connections``, or
    ``max_connections_per_ip`` from one address, a new connection evicts the longest-idle one
    with no message in progress (caps.py); only if all are busy is it closed at once. Both
    are reported to ``on_refused``. ``too_large_handler`` may answer a frame that exceeded the
    cap (given its first bytes); without it the frame is dropped silently.
    """
    limits = _Limits(max_frame_bytes, message_timeout_s, idle_timeout_s, max_connections,
                     max_connections_per_ip, write_timeout_s)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        conn = _Conn(peer.rsplit(":", 1)[0], writer, asyncio.get_running_loop().time())
        reason, victim = limits.admit(conn)
        if victim is not None:
            victim_peer = _peer_name(victim.writer)
            log.warning("mllp_connection_evicted", peer=victim_peer, for_peer=peer,
                        idle_s=round(conn.idle_since - victim.idle_since, 1))
            if on_refused is not None:
                on_refused(victim_peer, "evicted idle connection at the connection cap")
            victim.writer.transport.abort()
        if reason is not None:
            log.warning("mllp_connection_refused", peer=peer, reason=reason)
            if on_refused is not None:
                on_refused(peer, reason)
            await _close(writer)
            return
        try:
            await _connection(reader, writer, peer, handler, too_large_handler, limits, conn)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("mllp_connection_lost", peer=peer, error=type(exc).__name__)
        finally:
            limits.leave(conn)
            await _close(writer)

    return await asyncio.start_server(
        on_connect, host, port, ssl=ssl_context, limit=_READ_CHUNK,
        ssl_handshake_timeout=min(message_timeout_s, 30.0) if ssl_context else None,
    )


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                      handler: Handler, too_large_handler: TooLargeHandler | None,
                      limits: _Limits, conn: _Conn) -> None:
    loop = asyncio.get_running_loop()
    decoder = MllpDecoder(limits.max_frame_bytes)
    frame_started: float | None = None
    log.debug("mllp_connected", peer=peer)
    while True:
        if frame_started is not None:
            remaining, reason = frame_started + limits.message_timeout_s - loop.time(), "message_timeout"
        else:
            remaining, reason = conn.idle_since + limits.idle_timeout_s - loop.time(), "idle_timeout"
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
        conn.busy = bool(items) or decoder.in_frame
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
            if ack and not await _write(writer, ack, limits.write_timeout_s, peer):
                return
        if items:
            conn.idle_since = loop.time()
        conn.busy = decoder.in_frame
        if not decoder.in_frame:
            frame_started = None
        elif items or frame_started is None:
            frame_started = now


async def _write(writer: asyncio.StreamWriter, ack: bytes | list[bytes], timeout_s: float,
                 peer: str) -> bool:
    """Send the ACK(s); False (connection dropped) if the peer does not take them in time."""
    replies = [ack] if isinstance(ack, bytes) else ack
    writer.write(b"".join(frame(reply) for reply in replies))
    try:
        await asyncio.wait_for(writer.drain(), timeout_s)
    except TimeoutError:
        log.warning("mllp_connection_closed", peer=peer, reason="write_timeout",
                    unsent_bytes=writer.transport.get_write_buffer_size())
        writer.transport.abort()  # close() would wait for the peer to read what is queued
        return False
    return True


def _peer_name(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 5.0)


#: Does this ACK frame answer the message just sent? (False: a late or duplicate ACK of an
#: earlier message, skipped.)
AckMatcher = Callable[[bytes], bool]


class MllpClient:
    """A persistent MLLP connection that sends one message and waits for its ACK frame.

    ACK frames that do not answer the message just sent (``answers`` says so: a duplicate or
    late ACK of an earlier message) are skipped, as HAPI's initiator matches ACKs to messages
    by MSA-2; frames that arrive after the answer are kept for the next ``send`` to judge.
    Any failure (timeout, reset, EOF) closes the connection; the next ``send`` reconnects.
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
        self._frames: deque[bytes | FrameTooLarge] = deque()  # decoded, not yet read
        self._lock = asyncio.Lock()
        self.stale_acks = 0  # ACK frames skipped because they answered another message

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
        self._frames.clear()

    async def send(self, payload: bytes, answers: AckMatcher | None = None) -> bytes:
        """Send one message and return the payload of the ACK frame that answers it.

        The write and the wait for the ACK each have ``ack_timeout_s`` (a peer that does not
        read must not hold the sender). Without ``answers`` the first frame is the answer."""
        async with self._lock:
            await self.connect()
            assert self._reader is not None and self._writer is not None
            skipped = self.stale_acks
            try:
                self._writer.write(frame(payload))
                await asyncio.wait_for(self._writer.drain(), self.ack_timeout_s)
                return await asyncio.wait_for(self._read_ack(answers), self.ack_timeout_s)
            except TimeoutError as exc:
                await self.close()
                stale = self.stale_acks - skipped
                note = f" ({stale} ACK(s) for another message skipped)" if stale else ""
                raise MllpTimeout(f"no ACK from {self.host}:{self.port} "
                                  f"within {self.ack_timeout_s} s{note}") from exc
            except MllpError:
                await self.close()
                raise
            except (OSError, ssl.SSLError) as exc:
                await self.close()
                raise MllpConnectionError(
                    f"connection to {self.host}:{self.port} failed: {type(exc).__name__}") from exc

    async def _read_ack(self, answers: AckMatcher | None) -> bytes:
        assert self._reader is not None
        while True:
            while self._frames:
                item = self._frames.popleft()
                if isinstance(item, FrameTooLarge):
                    raise MllpError(f"ACK from {self.host}:{self.port} exceeds "
                                    f"{self.max_frame_bytes} bytes")
                if answers is None or answers(item):
                    return item
                self.stale_acks += 1
                log.info("mllp_stale_ack_skipped", peer=f"{self.host}:{self.port}")
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                raise MllpConnectionError(f"{self.host}:{self.port} closed without an ACK")
            self._frames.extend(self._decoder.feed(data))

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            await _close(writer)

    async def __aenter__(self) -> MllpClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
