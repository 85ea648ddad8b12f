"""MLLP framer (unit + hypothesis) and the asyncio server/client over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecg_gateway.mllp import (
    FrameTooLarge,
    MllpClient,
    MllpConnectionError,
    MllpDecoder,
    MllpTimeout,
    frame,
    serve_mllp,
)

MSG = b"MSH|^~\\&|CART|WARD|GW|HOSP|20250101||ORU^R01|C1|P|2.5.1\rPID|1||42\r"


# --- decoder ----------------------------------------------------------------------------

def test_frame_wraps_payload() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\x0d"


def test_two_frames_in_one_read() -> None:
    dec = MllpDecoder(1024)
    assert dec.feed(frame(b"one") + frame(b"two")) == [b"one", b"two"]
    assert dec.pending_bytes == 0 and not dec.in_frame


@pytest.mark.parametrize("junk", [b"garbage", b"\xef\xbb\xbf", b"\n", b"\r\n", b"\x1c\x0d"])
def test_t11_junk_between_frames_is_skipped(junk: bytes) -> None:
    dec = MllpDecoder(1024)
    assert dec.feed(junk + frame(b"one") + junk + frame(b"two") + junk) == [b"one", b"two"]


def test_t11_trailing_lf_does_not_lose_next_message() -> None:
    dec = MllpDecoder(1024)
    data = frame(MSG) + b"\n" + frame(MSG.replace(b"C1", b"C2"))
    assert dec.feed(data) == [MSG, MSG.replace(b"C1", b"C2")]


def test_t11_nested_vt_restarts_frame() -> None:
    dec = MllpDecoder(1024)
    assert dec.feed(b"\x0bpartial MSH|" + frame(b"whole")) == [b"whole"]
    assert dec.frames_restarted == 1


def test_t11_end_block_split_across_reads() -> None:
    dec = MllpDecoder(1024)
    assert dec.feed(b"\x0babc") == []
    assert dec.pending_bytes == 3 and dec.in_frame
    assert dec.feed(b"\x1c") == [b"abc"]
    assert dec.feed(b"\x0d\x0bdef\x1c") == [b"def"]
    assert dec.feed(b"\x0d") == []
    assert dec.junk_bytes == 0


def test_t11_oversized_frame_is_discarded_without_buffering() -> None:
    dec = MllpDecoder(1000)
    assert dec.feed(b"\x0b" + MSG) == []
    items = []
    for _ in range(50):
        items += dec.feed(b"x" * 500)
        assert dec.pending_bytes <= 1000
    items += dec.feed(b"\x1c\x0d" + frame(b"next"))
    assert len(items) == 2
    marker, nxt = items
    assert isinstance(marker, FrameTooLarge)
    assert marker.head.startswith(MSG) and marker.size == len(MSG) + 25_000
    assert nxt == b"next"
    assert dec.frames_too_large == 1


def test_frame_exactly_at_cap_is_kept() -> None:
    dec = MllpDecoder(10)
    assert dec.feed(frame(b"0123456789")) == [b"0123456789"]
    assert isinstance(dec.feed(frame(b"0123456789A"))[0], FrameTooLarge)


junk_bytes = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
payloads = st.binary(min_size=1, max_size=200).map(
    lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"") or b"x")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(junk_bytes, payloads), min_size=1, max_size=8), junk_bytes, st.data())
def test_t11_any_chunking_with_junk_yields_all_frames(pairs, tail, data) -> None:  # type: ignore[no-untyped-def]
    stream = b"".join(junk + frame(p) for junk, p in pairs) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = MllpDecoder(4096)
    out: list[bytes | FrameTooLarge] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:cut])
        prev = cut
    assert out == [p for _, p in pairs]


# --- server and client over loopback -------------------------------------------------------

async def echo_ack(payload: bytes, peer: str) -> bytes:
    return b"ACK:" + payload


async def start(handler=echo_ack, **kw):  # type: ignore[no-untyped-def]
    opts = dict(max_frame_bytes=1 << 20, message_timeout_s=5.0, idle_timeout_s=10.0,
                max_connections=8)
    opts.update(kw)
    server = await serve_mllp(handler, "127.0.0.1", 0, **opts)
    return server, server.sockets[0].getsockname()[1]


async def read_frames(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> list[bytes]:
    dec, out = MllpDecoder(1 << 20), []
    while len(out) < n:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        if not data:
            break
        out += dec.feed(data)
    return out


async def test_many_messages_per_connection_and_many_connections() -> None:
    server, port = await start()
    async with server:
        async def one_client(k: int) -> list[bytes]:
            async with MllpClient("127.0.0.1", port, connect_timeout_s=2, ack_timeout_s=5) as c:
                return [await c.send(b"m%d-%d" % (k, i)) for i in range(20)]
        results = await asyncio.gather(*(one_client(k) for k in range(6)))
    for k, acks in enumerate(results):
        assert acks == [b"ACK:m%d-%d" % (k, i) for i in range(20)]


async def test_pipelined_frames_with_junk_get_acks_in_order() -> None:
    server, port = await start()
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\xef\xbb\xbf" + frame(b"a") + b"\n" + frame(b"b") + b"junk\x0bcut" + frame(b"c"))
        await writer.drain()
        assert await read_frames(reader, 3) == [b"ACK:a", b"ACK:b", b"ACK:c"]
        writer.close()


async def test_t12_slow_loris_is_closed_without_ack() -> None:
    server, port = await start(message_timeout_s=0.5)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        closed = False
        for byte in frame(MSG)[:-2]:
            writer.write(bytes([byte]))
            await writer.drain()
            if await _eof_within(reader, 0.1):
                closed = True
                break
        assert closed, "server kept a 1-byte-per-100-ms sender open past its deadline"
        assert 0.4 < loop.time() - t0 < 2.0
        writer.close()


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(100), seconds)
    except TimeoutError:
        return False
    except ConnectionResetError:  # closed, and our next byte met the closed socket (loaded machine)
        return True
    assert data == b"", "no ACK may be sent for an unfinished frame"
    return True


async def test_t12_idle_connection_is_closed() -> None:
    server, port = await start(idle_timeout_s=0.3)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(10), 3.0) == b""
        writer.close()


async def test_t12_connection_cap_evicts_the_longest_idle_connection() -> None:
    """Issue #29: at the cap a new connection takes the place of the longest-idle one (no
    message in progress) instead of being refused; idle sockets cannot lock senders out."""
    server, port = await start(max_connections=2)
    async with server:
        a = await asyncio.open_connection("127.0.0.1", port)
        b = await asyncio.open_connection("127.0.0.1", port)
        a[1].write(frame(b"x"))
        assert await read_frames(a[0], 1) == [b"ACK:x"]  # a has been idle longest from here
        b[1].write(frame(b"y"))
        assert await read_frames(b[0], 1) == [b"ACK:y"]
        c = await asyncio.open_connection("127.0.0.1", port)
        c[1].write(frame(b"z"))
        assert await read_frames(c[0], 1) == [b"ACK:z"]
        assert await asyncio.wait_for(a[0].read(10), 3.0) == b""  # a was evicted
        b[1].write(frame(b"y2"))
        assert await read_frames(b[0], 1) == [b"ACK:y2"]  # b was not
        for w in (a[1], b[1], c[1]):
            w.close()


async def test_t12_connection_cap_refuses_when_every_connection_is_mid_message() -> None:
    server, port = await start(max_connections=2, max_connections_per_ip=2)
    async with server:
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in busy:
            writer.write(b"\x0bMSH|half a message")  # a frame in progress on each
            await writer.drain()
        await asyncio.sleep(0.1)
        c_reader, c_writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(c_reader.read(10), 3.0) == b""  # refused
        for reader, writer in busy:
            writer.write(b"\x1c\x0d")
            assert await read_frames(reader, 1) == [b"ACK:MSH|half a message"]  # untouched
            writer.close()
        c_writer.close()


async def test_t12_ack_writes_have_a_deadline() -> None:
    """Issue #29 D1: a peer that sends but never reads its ACKs is closed once an ACK waits
    longer than the write deadline (it used to hold its slot for ever), and the slot is
    free for the next sender."""
    async def big_ack(payload: bytes, peer: str) -> bytes:
        return b"A" * (256 * 1024)

    server, port = await start(big_ack, max_connections=1, write_timeout_s=0.5)
    async with server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        started = asyncio.get_running_loop().time()
        for _ in range(32):  # 8 MB of ACKs it will never read
            writer.write(frame(b"m"))
        await writer.drain()
        other = MllpClient("127.0.0.1", port, connect_timeout_s=2, ack_timeout_s=5)
        while True:  # the one slot is taken (the reader is mid-write) until the deadline
            try:
                assert len(await other.send(b"real")) == 256 * 1024
                break
            except MllpConnectionError:
                assert asyncio.get_running_loop().time() - started < 5, "slot never freed"
                await asyncio.sleep(0.1)
        await other.close()
        writer.close()


async def test_oversized_frame_answered_by_hook_and_next_message_ok() -> None:
    seen: list[FrameTooLarge] = []

    async def too_large(marker: FrameTooLarge, peer: str) -> bytes:
        seen.append(marker)
        return b"TOO-LARGE"

    server, port = await start(max_frame_bytes=64 * 1024, too_large_handler=too_large)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0b" + MSG)
        for _ in range(40):
            writer.write(b"9" * 16384)
            await writer.drain()
        writer.write(b"\x1c\x0d" + frame(b"after"))
        await writer.drain()
        assert await read_frames(reader, 2) == [b"TOO-LARGE", b"ACK:after"]
        assert seen[0].head.startswith(MSG) and seen[0].size > 64 * 1024
        writer.close()


async def test_handler_returning_none_sends_nothing_but_keeps_connection() -> None:
    async def maybe(payload: bytes, peer: str) -> bytes | None:
        assert peer.startswith("127.0.0.1:")
        return None if payload == b"quiet" else b"ok"

    server, port = await start(maybe)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frame(b"quiet") + frame(b"loud"))
        assert await read_frames(reader, 1) == [b"ok"]
        writer.close()


async def test_t4_client_ack_split_across_segments() -> None:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frames(reader, 1)
        for part in (b"\x0bMSH|^~\\&|EHR\rMSA|A", b"A|X1\r\x1c", b"\x0d"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = MllpClient("127.0.0.1", port, connect_timeout_s=2, ack_timeout_s=3)
        assert await client.send(MSG) == b"MSH|^~\\&|EHR\rMSA|AA|X1\r"
        await client.close()


async def test_client_timeout_then_reconnects() -> None:
    calls = 0

    async def slow_first(payload: bytes, peer: str) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1.0)
        return b"ACK:" + payload

    server, port = await start(slow_first)
    async with server:
        client = MllpClient("127.0.0.1", port, connect_timeout_s=2, ack_timeout_s=0.3)
        with pytest.raises(MllpTimeout):
            await client.send(b"first")
        assert not client.connected
        await asyncio.sleep(0.8)  # the late ACK of "first" must not answer "second"
        assert await client.send(b"second") == b"ACK:second"
        await client.close()


async def test_client_connection_refused_and_server_close() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = MllpClient("127.0.0.1", port, connect_timeout_s=1, ack_timeout_s=1)
    with pytest.raises(MllpConnectionError):
        await client.send(b"x")

    async def close_now(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        writer.close()

    server = await asyncio.start_server(close_now, "127.0.0.1", 0)
    async with server:
        client = MllpClient("127.0.0.1", server.sockets[0].getsockname()[1],
                            connect_timeout_s=1, ack_timeout_s=2)
        with pytest.raises(MllpConnectionError):
            await client.send(MSG)
        await client.close()


async def test_client_reconnects_after_server_idle_close() -> None:
    server, port = await start(idle_timeout_s=0.2)
    async with server:
        client = MllpClient("127.0.0.1", port, connect_timeout_s=2, ack_timeout_s=2)
        assert await client.send(b"a") == b"ACK:a"
        await asyncio.sleep(0.6)  # the server closed the idle connection meanwhile
        assert await client.send(b"b") == b"ACK:b"
        await client.close()


async def test_t12_junk_trickle_does_not_keep_a_connection_open() -> None:
    server, port = await start(idle_timeout_s=0.4)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = False
        for _ in range(30):  # one junk byte every 50 ms: never a frame, never idle by bytes
            writer.write(b"\n")
            try:
                await writer.drain()
            except ConnectionResetError:  # closed between two bytes (a slow, loaded machine)
                closed = True
                break
            if await _eof_within(reader, 0.05):
                closed = True
                break
        assert closed
        writer.close()


async def test_t13_mutual_tls_server_and_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import ssl

    from tests.support.tls_certs import make_pki

    pki = make_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server_ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    def client_ctx(cert, key) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    server, port = await start(ssl_context=server_ctx)
    async with server:
        good = client_ctx(pki.client_cert, pki.client_key)
        async with MllpClient("127.0.0.1", port, connect_timeout_s=5, ack_timeout_s=5,
                              ssl_context=good) as client:
            assert await client.send(MSG) == b"ACK:" + MSG
        rogue = MllpClient("127.0.0.1", port, connect_timeout_s=5, ack_timeout_s=5,
                           ssl_context=client_ctx(pki.rogue_cert, pki.rogue_key))
        with pytest.raises(MllpConnectionError):  # certificate from another CA: no ACK, ever
            await rogue.send(MSG)
        await rogue.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plaintext peer
        writer.write(frame(MSG))
        assert await asyncio.wait_for(reader.read(100), 10) == b""
        writer.close()
        async with MllpClient("127.0.0.1", port, connect_timeout_s=5, ack_timeout_s=5,
                              ssl_context=good) as client:  # the listener is still serving
            assert await client.send(b"again") == b"ACK:again"
