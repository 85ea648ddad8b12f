"""The HL7 MLLP receiver: validate, decode, commit, then acknowledge.

Answers (reliability.md HL7 table; formats.md 5.3): **AR** when MSH is unreadable (100/102),
**AE 100** for a frame that holds more than one message (refused as a whole: MLLP carries one
message per frame, and answering only the first would leave the others unanswered),
for an unsupported message type / event / version / processing id (200/201/203/202) and
for our own transient failures (207: the sender resends unchanged later); **AE** for
content errors (bad numbers, wrong sample counts, no ECG, undecodable bytes; 101/102/103)
with ERR pointing at the offending field; **AA** only after the raw bytes and the triage
job are committed, also for a duplicate (sending facility, MSH-10). Enhanced mode: MSH-15
governs the accept ACK (CA/CE/CR; empty = AL), MSH-16 the application ACK (AA/AE/AR;
empty = NE), both sent on this connection in that order. All work runs in a thread so
the event loop keeps serving other connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from ecg_gateway.config import Hl7Config
from ecg_gateway.errors import InvalidEcgError, StoreUnavailableError, UndecodableError
from ecg_gateway.inbound.hl7 import Hl7Message, decode_parsed
from ecg_gateway.inbound.hl7_ack import SUPPORTED_VERSIONS, AckError, build_ack
from ecg_gateway.inbound.hl7_tokens import (
    ErrLocation,
    Hl7ContentError,
    Hl7EncodingError,
    Hl7HeaderError,
    MessageHeader,
    decode_text,
    parse_header,
    split_segments,
)
from ecg_gateway.metrics import ECGS_RECEIVED, HL7_ACKS
from ecg_gateway.mllp import FrameTooLarge, serve_mllp
from ecg_gateway.security import server_context
from ecg_gateway.store.ingest import InboundMessage, Ingestor

log = structlog.get_logger(__name__)

CONTENT_TYPE = "application/hl7-v2"
#: Message type -> trigger events we accept.
ACCEPTED_EVENTS = {"ORU": ("R01", "W01"), "MDM": ("T02",)}


@dataclass(frozen=True, slots=True)
class Outcome:
    code: str  # AA | AE | AR
    header: MessageHeader | None
    error: AckError | None = None
    text: str = ""


class Hl7Receiver:
    """Turns one MLLP payload into zero, one or two ACK payloads (see module docstring)."""

    def __init__(self, ingestor: Ingestor, *, application: str = "ECG-GATEWAY",
                 processing_ids: tuple[str, ...] = ("P", "T"), threads: int = 2) -> None:
        """``threads`` decode and commit messages (a pool of its own, not asyncio's default
        one): two overlap one message's decode with another's fsync; more only contend for
        the GIL. With 4 connections of 150 KB ORUs, 2 threads gave ACK p99 31 ms, 6 gave
        47 ms (bench/mllp.py)."""
        self._ingestor = ingestor
        self._application = application
        self._processing_ids = processing_ids
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hl7")

    async def handle(self, payload: bytes, peer: str) -> list[bytes] | None:
        """The MLLP handler: returns the ACK payload(s) to send, in order, or None."""
        outcome = await asyncio.get_running_loop().run_in_executor(self._pool, self.process, payload, peer)
        return self.respond(outcome)

    async def handle_too_large(self, marker: FrameTooLarge, peer: str) -> list[bytes] | None:
        """A frame above the size cap: AE (the sender must not resend it unchanged)."""
        try:
            header: MessageHeader | None = parse_header(marker.head)
        except Hl7HeaderError:
            header = None
        error = AckError(102, ErrLocation("MSH"), "message exceeds the size limit")
        log.warning("hl7_rejected", peer=peer, ack="AE", err=102, reason="too_large",
                    size=marker.size, control_id=header.control_id if header else None)
        self._ingestor.reject("hl7", peer, ack="AE", err=102, reason="message too large", size=marker.size,
                              control_id=header.control_id if header else None)
        return self.respond(Outcome("AE", header, error, "message too large"))

    def close(self) -> None:
        """Stop the decode threads once the listener is closed (running messages finish)."""
        self._pool.shutdown(wait=True)

    def refused(self, peer: str, reason: str) -> None:
        """A connection the listener turned away (connection caps): a security alert."""
        self._ingestor.audit.alert(reason, peer, protocol="hl7")

    # --- processing (runs in a worker thread) ---------------------------------------------

    def process(self, payload: bytes, peer: str) -> Outcome:
        try:
            header = parse_header(payload)
        except Hl7HeaderError as exc:
            return self._reject("AR", None, exc.code, exc.location, str(exc), peer)
        except Exception as exc:  # noqa: BLE001 - a parser bug must still get an answer
            log.error("hl7_decode_crashed", peer=peer, error=type(exc).__name__)
            return self._reject("AR", None, 207, None, "internal error", peer)
        refusal = self._unsupported(header)
        if refusal is not None:
            code, location, text = refusal
            return self._reject("AR", header, code, location, text, peer)
        try:
            segments = split_segments(decode_text(payload, header), header.encoding)
            if sum(1 for segment in segments if segment.id == "MSH") > 1:  # one frame, one message
                return self._reject("AE", header, 100, ErrLocation("MSH", 2), "more than one message "
                                    "in one frame: send each in its own frame", peer)
            ecg = decode_parsed(Hl7Message(header, segments))
        except (Hl7ContentError, Hl7EncodingError) as exc:
            return self._reject("AE", header, exc.code, exc.location, str(exc), peer)
        except InvalidEcgError as exc:
            code = 101 if exc.field == "leads" else 102
            return self._reject("AE", header, code, ErrLocation("OBX", None, 5), str(exc), peer)
        except UndecodableError as exc:
            return self._reject("AE", header, 102, ErrLocation("OBX", None, 5), str(exc), peer)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must become an answer
            log.error("hl7_decode_crashed", peer=peer, control_id=header.control_id,
                      error=type(exc).__name__)
            return self._reject("AR", header, 207, None, "internal error", peer)
        message = InboundMessage(
            source="hl7", idempotency_key=idempotency_key(header), raw=payload,
            content_type=CONTENT_TYPE, peer=peer, ecg_uid=header.control_id,
            identifiers=ecg.demographics.as_dict())
        try:
            result = self._ingestor.accept(message)
        except StoreUnavailableError:
            return self._reject("AR", header, 207, None, "storage unavailable, retry later", peer)
        except Exception as exc:  # noqa: BLE001 - never drop the connection silently
            log.error("hl7_store_crashed", peer=peer, control_id=header.control_id,
                      error=type(exc).__name__)
            return self._reject("AR", header, 207, None, "internal error", peer)
        log.info("hl7_accepted", peer=peer, control_id=header.control_id, ack="AA",
                 outcome=result.outcome.value, message_id=result.message_id)
        return Outcome("AA", header)

    def _unsupported(self, header: MessageHeader) -> tuple[int, ErrLocation, str] | None:
        if header.version not in SUPPORTED_VERSIONS:
            return 203, ErrLocation("MSH", 1, 12), "unsupported version"
        events = ACCEPTED_EVENTS.get(header.message_type)
        if events is None:
            return 200, ErrLocation("MSH", 1, 9, 1), "unsupported message type"
        if header.trigger_event not in events:
            return 201, ErrLocation("MSH", 1, 9, 2), "unsupported event"
        if header.processing_id not in self._processing_ids:
            return 202, ErrLocation("MSH", 1, 11), "unsupported processing id"
        return None

    def _reject(self, code: str, header: MessageHeader | None, err: int, location: ErrLocation | None,
                text: str, peer: str) -> Outcome:
        """Answer AE/AR and audit the refusal (not for 207: the database is what failed)."""
        control_id = header.control_id if header else None
        log.info("hl7_rejected", peer=peer, ack=code, err=err, location=str(location or ""),
                 control_id=control_id, reason=text)
        if err != 207:
            self._ingestor.reject("hl7", peer, ack=code, err=err, location=str(location or ""),
                                  reason=text, control_id=control_id)
        return Outcome(code, header, AckError(err, location, text), text)

    # --- answering ------------------------------------------------------------------------

    def respond(self, outcome: Outcome) -> list[bytes] | None:
        """Original mode: one ACK. Enhanced mode: accept and/or application ACK per MSH-15/16.

        Every ACK built here is sent, so each is counted (metric label: the code only)."""
        if outcome.code != "AA":  # stored messages are counted by the Ingestor
            ECGS_RECEIVED.labels(source="hl7", outcome="rejected").inc()
        header = outcome.header
        codes = [outcome.code]
        if header is not None and header.enhanced_mode:
            accept_code = {"AA": "CA", "AE": "CE", "AR": "CR"}[outcome.code]
            codes = ([accept_code] if _wanted(header.accept_ack_type or "AL", outcome.code) else []) + \
                ([outcome.code] if _wanted(header.application_ack_type or "NE", outcome.code) else [])
        acks: list[bytes] = []
        for code in codes:
            acks.append(self._encode(build_ack(code, header, text=outcome.text, error=outcome.error,
                                               application=self._application), header))
            HL7_ACKS.labels(code=code).inc()
        return acks or None

    @staticmethod
    def _encode(ack: str, header: MessageHeader | None) -> bytes:
        try:
            codec = header.codec if header else "ascii"
        except Hl7EncodingError:
            codec = "ascii"
        return ack.encode(codec, errors="replace")


def _wanted(condition: str, code: str) -> bool:
    """HL7 table 0155: AL always, NE never, ER only on error, SU only on success."""
    if condition == "NE":
        return False
    if condition == "ER":
        return code != "AA"
    if condition == "SU":
        return code == "AA"
    return True


def idempotency_key(header: MessageHeader) -> str:
    """``hl7:<sending facility>:<MSH-10>``; hashed if it would not fit the 255-char column."""
    key = f"hl7:{header.sending_facility}:{header.control_id}"
    return key if len(key) <= 255 else "hl7:sha256:" + hashlib.sha256(key.encode()).hexdigest()


async def start_hl7_listener(receiver: Hl7Receiver, config: Hl7Config,
                             ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    """The MLLP listener ``serve`` runs beside the DICOM SCP (config section ``hl7``).

    TLS (>= 1.2) when ``ssl_context`` is given or ``hl7.tls_cert_file`` is set; client
    certificates are then required if ``hl7.tls_client_ca_file`` is set.
    """
    if ssl_context is None and config.tls_cert_file:
        ssl_context = server_context(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    server = await serve_mllp(
        receiver.handle, config.host, config.port, max_frame_bytes=config.max_frame_bytes,
        message_timeout_s=config.message_timeout_s, idle_timeout_s=config.idle_timeout_s,
        write_timeout_s=config.write_timeout_s, max_connections=config.max_connections,
        ssl_context=ssl_context,
        too_large_handler=receiver.handle_too_large,
        max_connections_per_ip=config.max_connections_per_ip, on_refused=receiver.refused)
    port = server.sockets[0].getsockname()[1] if server.sockets else config.port
    log.info("hl7_listening", host=config.host, port=port, tls=ssl_context is not None)
    return server
