"""Checkpoint format, loading and inference.

A checkpoint is one file written by :func:`save_checkpoint` and read with
``torch.load(weights_only=True)`` (no pickled code runs): the inference weights plus
plain-type metadata — architecture kwargs, class order, input contract, decision
thresholds and free metadata (model id, placeholder flag, training manifest hash,
metrics, git revision). :func:`load_model` refuses anything it cannot meet with a
one-line :class:`CheckpointError`, and logs the file's sha256.

Format 2 adds, all optional: several ``members`` of one architecture (an ensemble, weights
maybe float16), the sliding ``windows`` the members read, the statement head's
``statements`` vocabulary (codes, descriptions, categories, per-statement thresholds) and the
acute thresholds per flag budget (``acute_flag_budgets``: share of ECGs flagged on PTB-XL
fold 9 -> threshold). Format 1 files (v1: one member, whole record, no statements) load too.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from ecg_gateway.ecg import CATEGORY_NAMES
from ecg_gateway.errors import CheckpointError
from ecg_gateway.triage.decide import check_thresholds
from ecg_gateway.triage.ensemble import WindowedEnsemble, WindowSpec
from ecg_gateway.triage.lanes import compile_lanes
from ecg_gateway.triage.network import TriageNet
from ecg_gateway.triage.optimize import bf16_supported, optimize_for_cpu
from ecg_gateway.triage.preprocess import InputContract

log = structlog.get_logger(__name__)

FORMAT = "ecg-gateway.triage/2"
FORMATS = ("ecg-gateway.triage/1", FORMAT)
ARCH = "TriageNet"
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
    layer on a busy core made batch-32 inference 3-6x slower on 2 cores (bench/e2e_profile.py),
    so ``0`` (auto) leaves half the cores to the rest there, and takes them all in a
    dedicated ``--role worker`` process."""
    if configured > 0:
        return configured
    cores = os.cpu_count() or 1
    return max(1, cores // 2) if shares_process else cores


@dataclass(frozen=True)
class StatementVocabulary:
    """The statement head's columns: SCP code, description, base triage category under the
    training mapping, and the probability from which the statement is reported (chosen on
    PTB-XL fold 9)."""

    codes: tuple[str, ...]
    descriptions: tuple[str, ...]
    categories: tuple[str, ...]
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.codes)
        if not n or any(len(x) != n for x in (self.descriptions, self.categories, self.thresholds)):
            raise ValueError("statement codes, descriptions, categories and thresholds must be equally long")
        if any(c not in CATEGORY_NAMES for c in self.categories):
            raise ValueError("statement categories must be triage categories")
        if not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError("statement thresholds must be probabilities")

    def to_dict(self) -> dict[str, list[Any]]:
        return {"codes": list(self.codes), "descriptions": list(self.descriptions),
                "categories": list(self.categories), "thresholds": [float(t) for t in self.thresholds]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatementVocabulary:
        return cls(tuple(map(str, data["codes"])), tuple(map(str, data["descriptions"])),
                   tuple(map(str, data["categories"])), tuple(float(t) for t in data["thresholds"]))


def _half(value: torch.Tensor, half: bool) -> torch.Tensor:
    """Weights (conv and linear, 2-D and up) in float16 when asked; BatchNorm and biases stay float32."""
    value = value.detach().cpu()
    return value.half().clone() if half and value.is_floating_point() and value.ndim >= 2 else value.clone()


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


def save_checkpoint(path: str | os.PathLike[str], net: TriageNet | Sequence[TriageNet],
                    contract: InputContract, *,
                    class_order: tuple[str, ...] | list[str] = CATEGORY_NAMES,
                    thresholds: dict[str, float] | None = None,
                    metadata: dict[str, Any] | None = None, windows: WindowSpec | None = None,
                    statements: StatementVocabulary | None = None,
                    flag_budgets: dict[float, float] | None = None, half: bool = False) -> str:
    """Write ``net`` (one net or the members of an ensemble; inference weights only, float16
    weights if ``half``) and its contract atomically; return the sha256. The statement head is
    kept only with a ``statements`` vocabulary."""
    members = [net] if isinstance(net, TriageNet) else list(net)
    arch = members[0].arch_kwargs()
    arch["aux_head"] = False  # the auxiliary heads only serve training
    arch["n_statements"] = len(statements.codes) if statements is not None else 0
    payload = {
        "format": FORMAT, "arch": ARCH, "arch_kwargs": arch,
        "members": [{k: _half(v, half) for k, v in m.inference_state_dict(statements is not None).items()}
                    for m in members],
        "class_order": [str(c) for c in class_order], "contract": contract.to_dict(),
        "thresholds": {str(k): float(v) for k, v in (thresholds or {}).items()},
        "windows": windows.to_dict() if windows is not None else None,
        "statements": statements.to_dict() if statements is not None else None,
        "acute_flag_budgets": {f"{float(k):g}": float(v) for k, v in (flag_budgets or {}).items()},
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


@dataclass(frozen=True)
class CheckpointParts:
    """A validated checkpoint, weights not yet loaded."""

    contract: InputContract
    class_order: list[str]
    thresholds: dict[str, float]
    metadata: dict[str, Any]
    members: list[dict[str, torch.Tensor]]
    windows: WindowSpec | None
    statements: StatementVocabulary | None
    flag_budgets: dict[float, float]


def _validate(payload: Any) -> CheckpointParts:
    """Check everything but the weights; raise CheckpointError with a one-line reason."""
    if not isinstance(payload, dict) or payload.get("format") not in FORMATS:
        raise CheckpointError(f"not an ecg-gateway triage checkpoint (format not in {list(FORMATS)})")
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
    try:
        windows = WindowSpec.from_dict(payload["windows"]) if payload.get("windows") else None
        statements = (StatementVocabulary.from_dict(payload["statements"]) if payload.get("statements")
                      else None)
        budgets = {float(k): float(v) for k, v in (payload.get("acute_flag_budgets") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"bad windows, statements or flag budgets: {exc}") from None
    if not all(0.0 < k < 1.0 and 0.0 <= v <= 1.0 for k, v in budgets.items()):
        raise CheckpointError("acute flag budgets must map shares in (0, 1) to probabilities")
    input_length = windows.length if windows is not None and windows.length < contract.length else contract.length
    if arch.get("length") != input_length or arch.get("in_leads") != len(contract.leads):
        raise CheckpointError("architecture input shape does not match the input contract")
    if arch.get("n_classes") != len(CATEGORY_NAMES):
        raise CheckpointError(f"network has {arch.get('n_classes')} outputs, need {len(CATEGORY_NAMES)}")
    if arch.get("n_statements", 0) != (len(statements.codes) if statements is not None else 0):
        raise CheckpointError("the statement head does not match the statement vocabulary")
    members = payload.get("members") if "members" in payload else [payload.get("state_dict")]
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise CheckpointError("checkpoint holds no weights")
    return CheckpointParts(contract, order, thresholds, metadata, members, windows, statements, budgets)


class TriageModel:
    """A loaded checkpoint: ``predict`` maps model inputs to CATEGORY_ORDER probabilities,
    ``predict_full`` also to the statement probabilities (empty without a statement head)."""

    def __init__(self, net: TriageNet | Sequence[TriageNet], contract: InputContract,
                 class_order: list[str], thresholds: dict[str, float], metadata: dict[str, Any],
                 sha256: str, device: torch.device, path: Path | None = None, optimize: bool = True,
                 cpu_precision: str = "float32", cpu_cores: int | None = None, *,
                 windows: WindowSpec | None = None, statements: StatementVocabulary | None = None,
                 flag_budgets: dict[float, float] | None = None) -> None:
        """``cpu_cores``: spend that many cores on CPU inference as single-threaded lanes
        (sets torch's intra-op threads to 1, process-wide; decisions.md 32); ``None`` runs
        one lane on torch's current threads."""
        self.members = [m.eval().to(device) for m in ([net] if isinstance(net, TriageNet) else net)]
        self.net = self.members[0]  # the architecture every member shares
        self.windows, self.statements = windows, statements
        self.flag_budgets = dict(flag_budgets or {})
        self.acute_budget: float | None = None  # the flag budget that set the acute threshold
        self.class_order = list(class_order)
        k = len(CATEGORY_NAMES)
        self.ensemble = WindowedEnsemble(self.members, k, contract.length, windows).eval()
        # CPU: a channels-last, BN-folded twin of the same function (optimize.py), ~1.3-1.5x faster
        self.precision = "float32" if device.type == "cpu" else "autocast"
        self.runner: torch.nn.Module = self.ensemble
        self.lanes = 0  # 0: eager; n: a TorchScript graph in n lanes (lanes.py)
        if optimize and device.type == "cpu":
            if cpu_precision == "bfloat16" and not bf16_supported():
                log.warning("bf16_unsupported_using_float32", reason="this CPU lacks native bfloat16 in oneDNN")
            elif cpu_precision == "bfloat16":
                self.precision = "bfloat16"
            dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
            fast = [optimize_for_cpu(m, dtype=dtype) for m in self.members]
            self.runner = WindowedEnsemble(fast, k, contract.length, windows).eval()
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

    @property
    def n_statements(self) -> int:
        return len(self.statements.codes) if self.statements is not None else 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``[N, leads, length]`` float32 → ``[N, 4]`` float32 probabilities (CATEGORY_ORDER).

        Runs under inference_mode, with autocast (bf16, or fp16 where bf16 is missing) on CUDA.
        """
        return self.predict_full(batch)[0]

    def predict_full(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[N, leads, length]`` → (``[N, 4]`` triage probabilities, ``[N, S]`` statement
        probabilities in :attr:`statements` order; ``S = 0`` without a statement head)."""
        expected = (len(self.contract.leads), self.contract.length)
        if batch.ndim != 3 or batch.shape[1:] != expected:
            raise ValueError(f"batch must be [N, {expected[0]}, {expected[1]}], got {list(batch.shape)}")
        k = len(CATEGORY_NAMES)
        if batch.shape[0] == 0:
            return np.zeros((0, k), dtype=np.float32), np.zeros((0, self.n_statements), dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        out = self._forward(x).cpu().numpy()
        return out[:, :k], out[:, k:]

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
        """``[N, 4 + S]``: probabilities in CATEGORY_ORDER, then the statements', for a float32
        batch already on the device."""
        with torch.inference_mode():
            if self.device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                with torch.autocast("cuda", dtype=dtype):
                    probs = self.runner(x)
            else:
                probs = self.runner(x)
            probs = probs.float()
            k = len(CATEGORY_NAMES)
            return torch.cat((probs[:, :k][:, self._reorder], probs[:, k:]), dim=1)


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
    parts = _validate(payload)
    contract = parts.contract
    nets = [_member(payload["arch_kwargs"], weights) for weights in parts.members]
    model = TriageModel(nets, contract, parts.class_order, parts.thresholds, parts.metadata, sha256,
                        resolve_device(device), path, optimize=optimize, cpu_precision=cpu_precision,
                        cpu_cores=cpu_cores, windows=parts.windows, statements=parts.statements,
                        flag_budgets=parts.flag_budgets)
    probe = model.predict(np.zeros((1, len(contract.leads), contract.length), dtype=np.float32))
    if probe.shape != (1, len(CATEGORY_NAMES)) or not np.all(np.isfinite(probe)):
        raise CheckpointError("checkpoint produces non-finite outputs")
    log.info("model_loaded", model_id=model.model_id, sha256=sha256, path=str(path),
             device=str(model.device), precision=model.precision, cpu_lanes=model.lanes,
             members=len(model.members), windows=model.windows.count(contract.length) if model.windows else 1,
             statements=model.n_statements,
             placeholder=model.placeholder, fs=contract.fs,
             length=contract.length, leads=len(contract.leads))
    return model


def checkpoint_summary(path: str | os.PathLike[str] | None) -> str:
    """One line naming a checkpoint file's model (id, members, statements) without building it."""
    path = Path(path) if path is not None else default_checkpoint_path()
    try:
        parts = _validate(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - a status line, not a load: say what is wrong
        return f"{path.name}: unusable ({type(exc).__name__})"
    model_id = parts.metadata.get("model_id") or path.name
    return (f"{model_id} ({'bundled default' if path == default_checkpoint_path() else path.name}, "
            f"{len(parts.members)} member(s), "
            f"{len(parts.statements.codes) if parts.statements else 0} statements)")


def _member(arch: dict[str, Any], weights: dict[str, torch.Tensor]) -> TriageNet:
    """One ensemble member from its weights (float16 weights come back as float32)."""
    try:
        net = TriageNet(**arch)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                            strict=True)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"weights do not fit the architecture: {first}") from None
    return net


def set_operating_point(model: TriageModel, budget: float | None, acute: float | None) -> TriageModel:
    """Apply the ward's acute operating point to a loaded model.

    ``acute`` (``model.acute_threshold``) is an explicit threshold and wins; otherwise
    ``budget`` (``model.acute_flag_budget``) picks the checkpoint's threshold that flagged that
    share of PTB-XL fold 9. A checkpoint without flag budgets (v1) keeps its own threshold; a
    budget the checkpoint lacks is refused, naming the ones it has.
    """
    if acute is not None:
        model.thresholds = {**model.thresholds, "acute": float(acute)}
        check_thresholds(model.thresholds)
        model.acute_budget = None
        log.info("acute_threshold_overridden", model_id=model.model_id, acute=acute)
    elif budget is not None and model.flag_budgets:
        match = next((t for b, t in model.flag_budgets.items() if abs(b - budget) < 1e-9), None)
        if match is None:
            have = ", ".join(f"{b:g}" for b in sorted(model.flag_budgets))
            raise CheckpointError(f"model.acute_flag_budget {budget:g} is not in the checkpoint (it has {have})")
        model.thresholds = {**model.thresholds, "acute": match}
        model.acute_budget = budget
        log.info("acute_flag_budget", model_id=model.model_id, budget=budget, acute=match)
    return model
