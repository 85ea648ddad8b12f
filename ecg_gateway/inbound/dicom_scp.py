"""DICOM Storage SCP for ECG waveforms (pynetdicom), plus Verification.

The C-STORE handler runs in pynetdicom's association thread: it decodes and validates the
dataset, commits raw bytes + triage job, and only then returns 0x0000. It never raises into
pynetdicom (an exception there would become 0xC211) and never runs inference.
"""

from __future__ import annotations

import functools
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

import structlog
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from ecg_gateway.config import DicomConfig
from ecg_gateway.errors import (
    GatewayError,
    InvalidEcgError,
    StoreUnavailableError,
    UndecodableError,
)
from ecg_gateway.inbound.dicom import (
    ECG_SOP_CLASSES,
    HEMODYNAMIC,
    decode_dataset,
    uid_nonconformance,
)
from ecg_gateway.inbound.dicom_slots import DicomSlots
from ecg_gateway.metrics import DICOM_STATUSES, ECGS_RECEIVED
from ecg_gateway.security import server_context
from ecg_gateway.store.ingest import InboundMessage, Ingestor

log = structlog.get_logger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
ASSOCIATE_RQ_CAP = 1 << 20
_UID = re.compile(r"[0-9]+(\.[0-9]*)*")

# Deflated Explicit VR LE is deliberately not offered (decompression bombs; reliability.md §0.2).
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


def accepted_sop_classes(config: DicomConfig) -> tuple[str, ...]:
    return ECG_SOP_CLASSES + ((HEMODYNAMIC,) if config.accept_hemodynamic else ())


def build_ae(config: DicomConfig) -> AE:
    """An AE that registers only Verification and the ECG storage classes.

    pynetdicom copies its supported-context list for every association, so registering
    all storage classes costs CPU on every cart connection (design.md).
    """
    ae = AE(ae_title=config.ae_title)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    for uid in accepted_sop_classes(config):
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
    # the real cap is enforced at accept (dicom_slots.py); pynetdicom's own count, taken at
    # A-ASSOCIATE-RQ, still includes evicted connections for a moment: give it room
    ae.maximum_associations = 2 * config.max_associations
    ae.maximum_pdu_size = config.max_pdu_bytes
    ae.acse_timeout = config.acse_timeout_s
    ae.dimse_timeout = config.dimse_timeout_s
    ae.network_timeout = config.network_timeout_s
    ae.require_calling_aet = list(config.allowed_calling_ae_titles)
    return ae


class StoreHandler:
    """Handles EVT_C_STORE and EVT_C_ECHO for the SCP."""

    def __init__(self, ingestor: Ingestor, config: DicomConfig) -> None:
        self._ingestor = ingestor
        self._config = config

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, self.on_echo),
                (evt.EVT_REJECTED, self.on_rejected), (evt.EVT_CONN_OPEN, self.on_open)]

    def on_open(self, event: evt.Event) -> None:
        """Start the connection's idle clock (dicom_slots.py evicts the longest-idle one)."""
        _stamp(event.assoc, _ecg_since=time.monotonic())

    def on_rejected(self, event: evt.Event) -> None:
        """An association we refused: an unknown calling AE is a security alert."""
        allowed = self._config.allowed_calling_ae_titles
        calling = str(event.assoc.requestor.ae_title).strip()
        reason = "calling AE title not allowed" if allowed and calling not in allowed else "association refused"
        log.warning("dicom_association_rejected", peer=_peer(event), reason=reason)
        self._ingestor.audit.alert(reason, _peer(event), protocol="dicom")

    def on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def on_store(self, event: evt.Event) -> Dataset | int:
        peer = _peer(event)
        _stamp(event.assoc, _ecg_busy=True)  # a message in progress: never evicted at the cap
        try:
            answer = self._store(event, peer)
        except Exception:  # the protocol edge: never raise into pynetdicom
            log.exception("c_store_internal_error", peer=peer)
            answer = _status(PROCESSING_FAILURE, "internal error")
        finally:
            _stamp(event.assoc, _ecg_busy=False, _ecg_rx=time.monotonic())
        code = answer if isinstance(answer, int) else int(answer.Status)
        DICOM_STATUSES.labels(status=f"0x{code:04X}").inc()
        if code != SUCCESS:
            ECGS_RECEIVED.labels(source="dicom", outcome="rejected").inc()
        return answer

    def _store(self, event: evt.Event, peer: str) -> Dataset | int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop_class = str(ds.SOPClassUID)
            sop_instance = str(ds.SOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "cannot understand"
            return self._reject(peer, CANNOT_UNDERSTAND, "dataset cannot be decoded", None,
                                error=type(exc).__name__)
        # never echo a hostile value
        uid = sop_instance if len(sop_instance) <= 64 and _UID.fullmatch(sop_instance) else None
        request = cast(C_STORE, event.request)
        if sop_class != str(request.AffectedSOPClassUID) or sop_instance != str(
            request.AffectedSOPInstanceUID
        ):
            return self._reject(peer, DATASET_DOES_NOT_MATCH_SOP_CLASS, "UIDs differ from the request", None, uid)
        try:
            ecg = decode_dataset(ds, accept_hemodynamic=self._config.accept_hemodynamic)
        except InvalidEcgError as exc:
            return self._reject(peer, DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc), exc.field, uid)
        except (UndecodableError, GatewayError, ValueError, TypeError, KeyError, AttributeError) as exc:
            return self._reject(peer, CANNOT_UNDERSTAND, f"cannot decode ({type(exc).__name__})", None, uid)
        breach = uid_nonconformance(ecg.uid or "")
        if breach is not None:  # accepted (real devices write these), recorded for the vendor
            log.warning("dicom_uid_nonconformant", peer=peer, ecg_uid=ecg.uid, rule=breach)
        message = InboundMessage(
            source="dicom", idempotency_key=f"dicom:{ecg.uid}", raw=part10_bytes(event),
            content_type="application/dicom", peer=peer, ecg_uid=ecg.uid,
            identifiers=ecg.demographics.as_dict(), notes={"uid_nonconformant": breach} if breach else {},
        )
        try:
            self._ingestor.accept(message)
        except StoreUnavailableError:
            log.warning("c_store_rejected", peer=peer, status=hex(OUT_OF_RESOURCES), reason="storage unavailable")
            return _status(OUT_OF_RESOURCES, "storage unavailable")  # not audited: the database is down
        return SUCCESS

    def _reject(self, peer: str, status: int, reason: str, field: str | None, uid: str | None = None,
                error: str | None = None) -> Dataset:
        """Answer a refused dataset and audit the refusal (codes and our words; no dataset)."""
        log.warning("c_store_rejected", peer=peer, status=hex(status), reason=reason, field=field,
                    ecg_uid=uid, error=error)
        self._ingestor.reject("dicom", peer, status=f"0x{status:04X}", reason=reason, field=field,
                              ecg_uid=uid)
        return _status(status, reason)


def part10_bytes(event: evt.Event) -> bytes:
    """The received dataset as a DICOM file, byte for byte, without decode/re-encode."""
    dataset = cast(C_STORE, event.request).DataSet
    if dataset is None:  # pynetdicom hands over a C-STORE only with its data set
        raise ValueError("C-STORE request without a data set")
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, event.file_meta, enforce_standard=True)
    buffer.write(dataset.getvalue())
    return buffer.getvalue()


def _stamp(assoc: Any, **marks: float | bool) -> None:
    """Set the activity marks that dicom_slots.py reads (``_ecg_since``, ``_ecg_rx``,
    ``_ecg_busy``): pynetdicom's Association has no field for them."""
    for name, value in marks.items():
        setattr(assoc, name, value)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO; never contains PHI (messages name elements only)
    return status


def _peer(event: evt.Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title}@{requestor.address}:{requestor.port}"


class EcgAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, hardened for a hospital network.

    - TCP_NODELAY on accepted sockets: small response PDUs otherwise meet Nagle + delayed
      ACK and a cart waits ~40 ms per round trip.
    - Caps on sockets per source address and in all, evicting the longest-idle connection
      (dicom_slots.py): pynetdicom counts a socket that never sent an A-ASSOCIATE-RQ as an
      association, so idle sockets could lock real carts out.
    - The TLS handshake runs in the connection's own thread with a timeout, not in the accept
      loop, where one stalled client blocks every new association (reliability.md §0.1).
    """

    slots = DicomSlots(per_ip=8, total=16)
    handshake_timeout_s = 5.0
    tls_context: ssl.SSLContext | None = None
    alert: Callable[..., None] = staticmethod(lambda reason, peer, **detail: None)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Connection caps (dicom_slots.py): per address and in all, over associations *and*
        sockets not yet associated (a TLS handshake in progress holds a thread all the same).
        At a cap the longest-idle connection is evicted; refused only if all are busy."""
        ip = client_address[0]
        reason, victim = self.slots.admit(id(request), ip, request, self.active_associations)
        if victim is not None:
            log.warning("dicom_connection_evicted", peer_ip=victim.ip, for_peer_ip=ip)
            self.alert("evicted idle connection at the connection cap", victim.ip, protocol="dicom")
        if reason is not None:
            log.warning("dicom_connection_refused", peer_ip=ip, reason=reason)
            self.alert(reason, ip, protocol="dicom")
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        key = id(request)
        try:
            if self.tls_context is not None:
                try:
                    request.settimeout(self.handshake_timeout_s)
                    request = self.tls_context.wrap_socket(request, server_side=True,
                                                           do_handshake_on_connect=False)
                    request.do_handshake()
                    request.settimeout(None)
                except (OSError, ssl.SSLError) as exc:
                    log.warning("dicom_tls_handshake_failed", peer_ip=client_address[0], error=type(exc).__name__)
                    self.alert("TLS handshake failed", client_address[0], protocol="dicom",
                               error=type(exc).__name__)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)  # the association thread runs on
        finally:
            self.slots.settled(key)


def install_pdu_cap(max_pdu_bytes: int, alert: Callable[..., None] | None = None,
                    max_dataset_bytes: int = 16 << 20) -> None:
    """Refuse PDUs longer than we accept (pynetdicom reads whatever length is claimed), and
    data sets larger than ``max_dataset_bytes`` (pynetdicom appends P-DATA fragments to one
    buffer without limit, so a peer could stream gigabytes into one C-STORE).

    Before the association is established the cap is 1 MiB (real A-ASSOCIATE-RQs are a few
    KB); after it, our advertised maximum PDU plus the 6-byte header. A longer claim closes
    the connection before any of the claimed bytes are buffered; so does the next read once
    the message being received has buffered more than the data set cap.
    """
    if getattr(AssociationSocket.recv, "_ecg_capped", False):
        AssociationSocket.recv = AssociationSocket.recv.__wrapped__  # type: ignore[attr-defined,method-assign]
    original = AssociationSocket.recv

    @functools.wraps(original)
    def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
        assoc = self.assoc
        _stamp(assoc, _ecg_rx=time.monotonic())  # activity, for the idle eviction (dicom_slots.py)
        cap = max_pdu_bytes + 6 if assoc.is_established else ASSOCIATE_RQ_CAP
        if nr_bytes > cap and assoc.is_acceptor:
            log.warning("dicom_pdu_too_large", claimed=nr_bytes, cap=cap)
            if alert is not None:
                alert("PDU length above the cap", str(assoc.requestor.address), protocol="dicom",
                      claimed=nr_bytes)
            raise OSError("PDU length exceeds the configured cap")
        buffered = _buffered_message_bytes(assoc)
        if buffered > max_dataset_bytes and assoc.is_acceptor:
            log.warning("dicom_dataset_too_large", buffered=buffered, cap=max_dataset_bytes)
            if alert is not None:
                alert("data set above the cap", str(assoc.requestor.address), protocol="dicom",
                      buffered=buffered)
            raise OSError("data set exceeds the configured cap")
        return original(self, nr_bytes)

    recv._ecg_capped = True  # type: ignore[attr-defined]
    AssociationSocket.recv = recv  # type: ignore[method-assign]


def _buffered_message_bytes(assoc: Any) -> int:
    """Bytes pynetdicom holds for the DIMSE message being received (command + data set)."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    if message is None:
        return 0
    total = 0
    for buffer in (message.encoded_command_set, message.data_set):
        if isinstance(buffer, BytesIO):
            total += buffer.tell()  # fragments are appended: the position is the size
    return total


def tls_context(config: DicomConfig) -> ssl.SSLContext | None:
    """TLS >= 1.2 server context (BCP 195); client certificates required if a CA is set."""
    if not config.tls_cert_file:
        return None
    return server_context(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)


def start_dicom_server(config: DicomConfig, ingestor: Ingestor) -> ThreadedAssociationServer:
    """Bind and start the SCP in its own threads; ``server.server_address`` has the port."""
    ae = build_ae(config)
    handler = StoreHandler(ingestor, config)
    install_pdu_cap(config.max_pdu_bytes, ingestor.audit.alert, config.max_dataset_bytes)
    server = cast(EcgAssociationServer,
                  ae.make_server((config.host, config.port), evt_handlers=handler.handlers(),
                                 server_class=EcgAssociationServer))
    server.alert = ingestor.audit.alert
    server.slots = DicomSlots(per_ip=config.max_connections_per_ip, total=config.max_associations)
    server.handshake_timeout_s = config.tls_handshake_timeout_s
    server.tls_context = tls_context(config)
    ae._servers.append(server)  # so AE.shutdown() also stops it, as start_server would
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    return server
