"""Checkpoint format, loading and inference.

A checkpoint is one file written by :func:`save_checkpoint` and read with
``torch.load(weights_only=True)`` (no pickled code runs): the inference weights plus
plain-type metadata — architecture kwargs, class order, input contract, decision
thresholds and free metadata (model id, placeholder flag, training manifest hash,
metrics, git revision). :func:`load_model` refuses anything it cannot meet with a
one-line :class:`CheckpointError`, and logs the file's sha256.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from ecg_gateway.ecg import CATEGORY_ORDER
from ecg_gateway.errors import CheckpointError
from ecg_gateway.triage.decide import check_thresholds
from ecg_gateway.triage.lanes import compile_lanes
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.optimize import bf16_supported, optimize_for_cpu
from ecg_gateway.triage.preprocess import InputContract

log = structlog.get_logger(__name__)

FORMAT = "ecg-gateway.triage/1"
ARCH = "TriageNet"
CATEGORY_NAMES: tuple[str, ...] = tuple(c.value for c in CATEGORY_ORDER)
_PLAIN = (str, int, float, bool, type(None))


def default_checkpoint_path() -> Path:
    """The model bundled inside the package (used when ``model.path`` is unset)."""
    return Path(__file__).resolve().parent / "default_model.pt"


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU. An explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError("model.device is cuda but no CUDA device is available")
    return torch.device(device)


def cpu_threads(configured: int, shares_process: bool) -> int:
    """Intra-op threads for inference. With ``--role all`` the worker shares the CPU (and the
    GIL) with the receivers and the sender: OpenMP threads that wait for each other at every
    layer on a busy core made batch-32 inference 3-6x slower on 2 cores (bench/profile.py),
    so ``0`` (auto) leaves half the cores to the rest there, and takes them all in a
    dedicated ``--role worker`` process."""
    if configured > 0:
        return configured
    cores = os.cpu_count() or 1
    return max(1, cores // 2) if shares_process else cores


def _check_plain(value: Any, where: str) -> None:
    """Metadata must be plain types so the file loads with weights_only=True anywhere."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be str, got {type(key).__name__}")
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where}: {type(value).__name__} is not a plain type")


def save_checkpoint(path: str | os.PathLike[str], net: TriageNet, contract: InputContract, *,
                    class_order: tuple[str, ...] | list[str] = CATEGORY_NAMES,
                    thresholds: dict[str, float] | None = None,
                    metadata: dict[str, Any] | None = None) -> str:
    """Write ``net`` (inference weights only) and its contract atomically; return the sha256."""
    arch = net.arch_kwargs()
    arch["aux_head"] = False  # the auxiliary heads only serve training
    arch["n_statements"] = 0
    payload = {
        "format": FORMAT, "arch": ARCH, "arch_kwargs": arch,
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.inference_state_dict().items()},
        "class_order": [str(c) for c in class_order], "contract": contract.to_dict(),
        "thresholds": {str(k): float(v) for k, v in (thresholds or {}).items()},
        "metadata": dict(metadata or {}),
    }
    _check_plain(payload["metadata"], "metadata")
    _validate(payload)  # never write a file we would refuse to load
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a model file is not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


def _validate(payload: Any) -> tuple[InputContract, list[str], dict[str, float], dict[str, Any]]:
    """Check everything but the weights; raise CheckpointError with a one-line reason."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"not an ecg-gateway triage checkpoint (format != {FORMAT})")
    if payload.get("arch") != ARCH or not isinstance(payload.get("arch_kwargs"), dict):
        raise CheckpointError(f"unsupported architecture {payload.get('arch')!r}")
    try:
        contract = InputContract.from_dict(payload.get("contract"))  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"bad input contract: {exc}") from None
    order = payload.get("class_order")
    if not isinstance(order, list) or sorted(order) != sorted(CATEGORY_NAMES):
        raise CheckpointError(f"class_order must be a permutation of {list(CATEGORY_NAMES)}, got {order!r}")
    thresholds = payload.get("thresholds")
    try:
        if not isinstance(thresholds, dict) or not all(isinstance(v, float) for v in thresholds.values()):
            raise ValueError("must map category names to floats")
        check_thresholds(thresholds)
    except ValueError as exc:
        raise CheckpointError(f"bad thresholds: {exc}") from None
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError("metadata must be a mapping")
    arch = payload["arch_kwargs"]
    if arch.get("length") != contract.length or arch.get("in_leads") != len(contract.leads):
        raise CheckpointError("architecture input shape does not match the input contract")
    if arch.get("n_classes") != len(CATEGORY_NAMES):
        raise CheckpointError(f"network has {arch.get('n_classes')} outputs, need {len(CATEGORY_NAMES)}")
    return contract, order, thresholds, metadata


class TriageModel:
    """A loaded checkpoint: ``predict`` maps model inputs to CATEGORY_ORDER probabilities."""

    def __init__(self, net: TriageNet, contract: InputContract, class_order: list[str],
                 thresholds: dict[str, float], metadata: dict[str, Any], sha256: str,
                 device: torch.device, path: Path | None = None, optimize: bool = True,
                 cpu_precision: str = "float32", cpu_cores: int | None = None) -> None:
        """``cpu_cores``: spend that many cores on CPU inference as single-threaded lanes
        (sets torch's intra-op threads to 1, process-wide; decisions.md 32); ``None`` runs
        one lane on torch's current threads."""
        self.net = net.eval().to(device)
        self.class_order = list(class_order)
        # CPU: a channels-last, BN-folded twin of the same function (optimize.py), ~1.3-1.5x faster
        self.precision = "float32" if device.type == "cpu" else "autocast"
        self.runner: torch.nn.Module = self.net
        self.lanes = 0  # 0: eager; n: a TorchScript graph in n lanes (lanes.py)
        if optimize and device.type == "cpu":
            if cpu_precision == "bfloat16" and not bf16_supported():
                log.warning("bf16_unsupported_using_float32", reason="this CPU lacks native bfloat16 in oneDNN")
            elif cpu_precision == "bfloat16":
                self.precision = "bfloat16"
            dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
            self.runner = optimize_for_cpu(self.net, dtype=dtype)
            self._run_in_lanes(len(contract.leads), cpu_cores)
        self.contract = contract
        self.thresholds = dict(thresholds)
        self.metadata = dict(metadata)
        self.metadata["placeholder"] = bool(metadata.get("placeholder", False))
        self.sha256 = sha256
        self.device = device
        self.path = path
        self.model_id = str(metadata.get("model_id") or f"{ARCH}-{sha256[:12]}")
        # column j of the net's output holds category CATEGORY_NAMES[j] after this reindex
        self._reorder = [class_order.index(name) for name in CATEGORY_NAMES]

    def _run_in_lanes(self, leads: int, cpu_cores: int | None) -> None:
        """Swap the eager rewrite for its compiled lanes; if that fails, the eager rewrite
        gets the cores as intra-op threads instead."""
        lanes = max(1, cpu_cores or 1)
        if cpu_cores is not None:
            torch.set_num_threads(1)
        compiled = compile_lanes(self.runner, lanes, leads)  # type: ignore[arg-type]
        if compiled is not None:
            self.runner, self.lanes = compiled, lanes
        elif cpu_cores is not None:
            torch.set_num_threads(lanes)

    @property
    def placeholder(self) -> bool:
        return self.metadata["placeholder"]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``[N, leads, length]`` float32 → ``[N, 4]`` float32 probabilities (CATEGORY_ORDER).

        Runs under inference_mode, with autocast (bf16, or fp16 where bf16 is missing) on CUDA.
        """
        expected = (len(self.contract.leads), self.contract.length)
        if batch.ndim != 3 or batch.shape[1:] != expected:
            raise ValueError(f"batch must be [N, {expected[0]}, {expected[1]}], got {list(batch.shape)}")
        if batch.shape[0] == 0:
            return np.zeros((0, len(CATEGORY_NAMES)), dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return self._forward(x).cpu().numpy()

    def warm_up(self, max_batch: int) -> float:
        """One forward pass at every batch size 1..``max_batch``; returns the seconds spent.

        The runner keeps state per input shape (TorchScript specialisations, oneDNN
        primitives: 1-2 MB each on the CPU). Built lazily, it grew a serving process for
        hours as rarer batch sizes first appeared, and the first batch of each size took
        tens of ms longer; built here, memory is flat from the first ECG (decisions.md 37).
        Largest batch first, so the smaller passes reuse its freed buffers: smallest first left
        ~70 MB more free heap (RSS) in ``serve``.
        """
        started = time.perf_counter()
        for n in range(max_batch, 0, -1):
            self._forward(torch.zeros((n, len(self.contract.leads), self.contract.length), device=self.device))
        return time.perf_counter() - started

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities in CATEGORY_ORDER for a float32 batch already on the device."""
        with torch.inference_mode():
            if self.device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                with torch.autocast("cuda", dtype=dtype):
                    logits = self.runner(x)
            else:
                logits = self.runner(x)
            return torch.softmax(logits.float(), dim=1)[:, self._reorder]


def load_model(path: str | os.PathLike[str] | None = None, device: str = "auto",
               optimize: bool = True, cpu_precision: str = "float32", cpu_cores: int | None = None) -> TriageModel:
    """Load and self-test a checkpoint (``None`` → the bundled default). Raises CheckpointError.

    ``cpu_precision="bfloat16"`` runs the CPU rewrite in bf16 where the CPU has it natively
    (else float32, with a warning); ``model.precision`` says which runs. ``cpu_cores``: see
    :class:`TriageModel` (``model.lanes`` says how many lanes run)."""
    path = Path(path) if path is not None else default_checkpoint_path()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        sha256 = file_sha256(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip error means "unusable file"
        raise CheckpointError(f"checkpoint unreadable: {path.name}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    contract, order, thresholds, metadata = _validate(payload)
    try:
        net = TriageNet(**payload["arch_kwargs"])
        net.load_state_dict(payload["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"weights do not fit the architecture: {first}") from None
    model = TriageModel(net, contract, order, thresholds, metadata, sha256,
                        resolve_device(device), path, optimize=optimize, cpu_precision=cpu_precision,
                        cpu_cores=cpu_cores)
    probe = model.predict(np.zeros((1, len(contract.leads), contract.length), dtype=np.float32))
    if probe.shape != (1, len(CATEGORY_NAMES)) or not np.all(np.isfinite(probe)):
        raise CheckpointError("checkpoint produces non-finite outputs")
    log.info("model_loaded", model_id=model.model_id, sha256=sha256, path=str(path),
             device=str(model.device), precision=model.precision, cpu_lanes=model.lanes,
             placeholder=model.placeholder, fs=contract.fs,
             length=contract.length, leads=len(contract.leads))
    return model


def override_acute_threshold(model: TriageModel, acute: float | None) -> TriageModel:
    """Apply an operator's ``model.acute_threshold`` (the ward's operating point) to a loaded model."""
    if acute is not None:
        model.thresholds = {**model.thresholds, "acute": float(acute)}
        check_thresholds(model.thresholds)
        log.info("acute_threshold_overridden", model_id=model.model_id, acute=acute)
    return model
