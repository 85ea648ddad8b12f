"""A minimal C-STORE SCU for installers (``ecg-gateway send-dicom``): does the gateway take it?

Sends one file in one association and reports the DIMSE status exactly as received. Errors
carry the CLI exit code: 65 for a file that is not a usable DICOM object or a SOP class the
peer does not accept, 69 when no association or no answer comes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from ecg_gateway.errors import EX_DATAERR, EX_UNAVAILABLE, PeerError


def quiet_dicom_libraries() -> None:
    """For the CLI: no per-element validation warnings, no duplicate association errors."""
    import logging

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def read_dataset(path: Path) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path)
        sop_class, _ = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except OSError as exc:
        raise PeerError(f"cannot read: {exc.strerror}", EX_DATAERR) from exc
    except InvalidDicomError as exc:
        raise PeerError("not a DICOM Part 10 file", EX_DATAERR) from exc
    except AttributeError as exc:
        raise PeerError("no SOP Class / SOP Instance UID in the file", EX_DATAERR) from exc
    if not sop_class:
        raise PeerError("empty SOP Class UID", EX_DATAERR)
    return ds


def send_dicom_file(path: Path, host: str, port: int, *, calling: str, called: str,
                    timeout_s: float = 30.0) -> dict[str, Any]:
    """C-STORE ``path`` to ``called@host:port``; returns the status as a plain dict."""
    ds = read_dataset(path)
    syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.file_meta \
        else ImplicitVRLittleEndian
    syntaxes = [syntax] if syntax.is_compressed else \
        list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(ds.SOPClassUID, syntaxes)
    ae.add_requested_context(Verification)  # so a refused SOP class still gets an association
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise PeerError(_why_not(assoc, called, host, port), EX_UNAVAILABLE)
    try:
        if not any(c.abstract_syntax == ds.SOPClassUID for c in assoc.accepted_contexts):
            raise PeerError(f"{called}@{host}:{port} does not accept SOP class {ds.SOPClassUID}",
                            EX_DATAERR)
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        raise PeerError(f"no C-STORE response from {called}@{host}:{port} (timeout or abort)",
                        EX_UNAVAILABLE)
    code = int(status.Status)
    return {"status": f"0x{code:04X}", "category": code_to_category(code),
            "error_comment": str(status.get("ErrorComment", "")) or None,
            "sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID)}


def _why_not(assoc: Any, called: str, host: str, port: int) -> str:
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        detail = f"result {rj.result}, source {rj.result_source}, reason {rj.diagnostic}" \
            if rj is not None else "no detail"
        return f"association rejected by {called}@{host}:{port} ({detail})"
    return f"no association with {called}@{host}:{port} (connection refused, aborted or timed out)"
