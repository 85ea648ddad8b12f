"""The peers of the chaos run: carts that resend until acknowledged, and a faulty EHR.

Carts are what a hospital has: a DICOM cart that opens one association per ECG and retries
the same object until it gets 0x0000, and an HL7 sender on a persistent MLLP connection
that resends the same bytes until it gets ``AA`` with its MSH-10. The EHR answers each ORU
copy with AA after a random hold, or with an injected fault (reliability.md S1): AR, close
without ACK, AA for another control id, or a stall far past the gateway's ACK timeout. It is
idempotent by MSH-10, as the gateway's at-least-once guarantee requires: a copy of an ORU it
already accepted gets AA again (never a fault: an AR to a duplicate would make the gateway
dead-letter a result the EHR holds).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from ecg_gateway.mllp import MllpDecoder, frame

log = logging.getLogger("chaos")


@dataclass
class Ecg:
    """One ECG a cart must get acknowledged: DICOM dataset or HL7 bytes."""

    key: str  # the gateway's idempotency key
    protocol: str  # dicom | hl7
    dataset: Dataset | None = None
    payload: bytes = b""
    acked_at: float | None = None
    first_try: float | None = None
    attempts: int = 0


@dataclass
class Pacer:
    """Spaces sends to a total rate across carts; counts sends in flight (kill targeting)."""

    rate_per_s: float
    in_flight: int = 0
    _next: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def wait_turn(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.rate_per_s
        time.sleep(max(0.0, slot - now))


def dicom_cart(port: int, ecgs: list[Ecg], pacer: Pacer, stop: threading.Event) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="CHAOSCART")
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 5, 10, 10
    for ecg in ecgs:
        assert ecg.dataset is not None
        ae.requested_contexts = []
        ae.add_requested_context(ecg.dataset.SOPClassUID, ecg.dataset.file_meta.TransferSyntaxUID)
        pacer.wait_turn()
        while not stop.is_set():
            ecg.attempts += 1
            ecg.first_try = ecg.first_try or time.time()
            pacer.enter()
            try:
                assoc = ae.associate("127.0.0.1", port, ae_title="ECG_GATEWAY")
                status = None
                if assoc.is_established:
                    rsp = assoc.send_c_store(ecg.dataset)
                    status = int(rsp.Status) if "Status" in rsp else None
                    assoc.release()
            except (OSError, RuntimeError):
                status = None
            finally:
                pacer.leave()
            if status == 0x0000:
                ecg.acked_at = time.time()
                break
            time.sleep(0.2)  # 0xA700, aborted or refused: resend the same object


def hl7_cart(port: int, ecgs: list[Ecg], pacer: Pacer, stop: threading.Event) -> None:
    sock: socket.socket | None = None
    for ecg in ecgs:
        pacer.wait_turn()
        control_id = ecg.key.rsplit(":", 1)[1]
        while not stop.is_set():
            ecg.attempts += 1
            ecg.first_try = ecg.first_try or time.time()
            pacer.enter()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(frame(ecg.payload))
                ack = _read_frame(sock)
                code, echoed = _msa(ack)
            except OSError:
                code, echoed = None, None
                if sock is not None:
                    sock.close()
                sock = None
            finally:
                pacer.leave()
            if code == "AA" and echoed == control_id:
                ecg.acked_at = time.time()
                break
            if code == "AE":
                raise AssertionError(f"{ecg.key}: the gateway answered AE to a valid message")
            time.sleep(0.2)  # AR 207, no answer or a dead connection: resend unchanged
    if sock is not None:
        sock.close()


def _read_frame(sock: socket.socket) -> bytes:
    decoder = MllpDecoder(1 << 20)
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed without an ACK")
        for item in decoder.feed(data):
            if isinstance(item, bytes):
                return item


def _msa(ack: bytes) -> tuple[str | None, str | None]:
    for segment in ack.decode("ascii", "replace").split("\r"):
        if segment.startswith("MSA|"):
            fields = segment.split("|")
            return fields[1], fields[2] if len(fields) > 2 else ""
    return None, None


@dataclass
class Copy:
    control_id: str
    sha256: str
    verdict: str  # AA | AR | close | wrong | stall
    at: float


class ChaosEhr:
    """The EHR worklist: an MLLP server on its own loop thread, answering per ``faults``."""

    def __init__(self, faults: dict[str, float], hold_s: float, stall_s: float, seed: int) -> None:
        self.faults, self.hold_s, self.stall_s = faults, hold_s, stall_s
        self.copies: list[Copy] = []
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._run, name="chaos-ehr", daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def _verdict(self) -> str:
        roll = self._rng.random()
        for name in ("AR", "close", "wrong", "stall"):
            roll -= self.faults.get(name, 0.0)
            if roll < 0:
                return name
        return "AA"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MllpDecoder(64 << 20)
        try:
            while data := await reader.read(262144):
                for item in decoder.feed(data):
                    if not isinstance(item, bytes):
                        continue
                    control_id = item.split(b"\r", 1)[0].split(b"|")[9].decode()
                    # an idempotent receiver: a control id it already accepted is a duplicate: AA
                    accepted = any(c.control_id == control_id and c.verdict in ("AA", "stall") for c in self.copies)
                    verdict = "AA" if accepted else self._verdict()
                    self.copies.append(Copy(control_id, hashlib.sha256(item).hexdigest(), verdict, time.time()))
                    if verdict == "close":
                        return
                    await asyncio.sleep(self.stall_s if verdict == "stall" else self._rng.uniform(0, self.hold_s))
                    answer = {"AR": "AR", "wrong": "AA"}.get(verdict, "AA")
                    echoed = "NOT-" + control_id if verdict == "wrong" else control_id
                    writer.write(frame(_ack(answer, echoed)))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)


def _ack(code: str, control_id: str) -> bytes:
    err = "ERR|||207^Application internal error^HL70357|E\r" if code == "AR" else ""
    return (f"MSH|^~\\&|EHR|HOSP|ECG-GATEWAY|HOSP|20260101000000||ACK^R01^ACK|A{control_id}|P|2.5.1\r"
            f"MSA|{code}|{control_id}\r{err}").encode()
