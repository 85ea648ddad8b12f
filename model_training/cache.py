"""PTB-XL as one compact array file: decode the FLAC records once, train anywhere.

``[N, 8, 1000]`` int16 microvolts (the records' own resolution: gain 1000/mV, so lossless)
of the independent leads I, II, V1-V6, plus ecg_id, fold, label (-1 = none), the
measured heart rate, the counted SCP statements (multi-hot), every statement's likelihood
and the infarction stadia — enough to label the records under any mapping version
(:meth:`PtbxlArrays.with_mapping`) and to build the statement head's targets. A GPU host
without wfdb/soundfile trains from this file alone.

The manifest hash identifies the training data: sha256 over the dataset's SHA256SUMS, the
kept ecg_ids with their folds and labels, and the mapping hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ecg_gateway.ecg import CATEGORY_ORDER, INDEPENDENT_LEADS, Ecg
from model_training.labels import (
    MAPPING_VERSION,
    counted_statements,
    get_mapping,
    mapping_hash,
    statement_codes,
    triage_category,
)

FS = 100.0
LENGTH = 1000


@dataclass(frozen=True)
class PtbxlArrays:
    signals: np.ndarray  # int16 [N, 8, LENGTH] microvolts
    ecg_id: np.ndarray
    fold: np.ndarray
    label: np.ndarray  # int8, CATEGORY_ORDER index or -1
    heart_rate: np.ndarray  # float32 bpm (NaN when undetectable)
    manifest_hash: str
    mapping_version: str
    statements: np.ndarray | None = None  # uint8 [N, len(statement_codes())]; None in old caches
    likelihoods: np.ndarray | None = None  # float32 [N, len(statement_codes())], NaN = absent
    stadium: np.ndarray | None = None  # str [N, 2]: infarction_stadium1/2 ("" = none)
    data_digest: str = ""  # sha256 of the dataset's SHA256SUMS (to re-derive the manifest hash)

    def subset(self, mask: np.ndarray) -> PtbxlArrays:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[mask]

        return PtbxlArrays(self.signals[mask], self.ecg_id[mask], self.fold[mask], self.label[mask],
                           self.heart_rate[mask], self.manifest_hash, self.mapping_version,
                           pick(self.statements), pick(self.likelihoods), pick(self.stadium),
                           self.data_digest)

    def ecg(self, i: int) -> Ecg:
        """Record i as an Ecg in mV (for preprocess(); identical to reading the WFDB file)."""
        return Ecg(signal=self.signals[i].astype(np.float32) / 1000.0, fs=FS,
                   leads=INDEPENDENT_LEADS, source="ptbxl-cache", uid=str(int(self.ecg_id[i])))

    def scp_codes(self, i: int) -> dict[str, float]:
        """Record i's statements with their likelihoods, as in ptbxl_database.csv."""
        if self.likelihoods is None:
            raise ValueError("this cache has no likelihoods: rebuild it (python -m model_training cache)")
        row = self.likelihoods[i]
        return {code: float(row[j]) for j, code in enumerate(statement_codes()) if not np.isnan(row[j])}

    def record(self, i: int) -> dict[str, object]:
        """The fields the label rules read: stadia and the measured rate."""
        stadium = ("", "") if self.stadium is None else tuple(self.stadium[i])
        return {"infarction_stadium1": stadium[0] or None, "infarction_stadium2": stadium[1] or None,
                "heart_rate_bpm": float(self.heart_rate[i])}

    def with_mapping(self, mapping: str | None) -> PtbxlArrays:
        """The same records labelled under another mapping version ("1.0", "2.0")."""
        table = get_mapping(mapping)
        if table.version == self.mapping_version:
            return self
        labels = np.array([_index(triage_category(self.scp_codes(i), self.record(i), table))
                           for i in range(len(self.ecg_id))], dtype=np.int8)
        digest = _manifest(self.data_digest, self.ecg_id, self.fold, labels, mapping_hash(table))
        return replace(self, label=labels, manifest_hash=digest, mapping_version=table.version)

    def statement_targets(self) -> np.ndarray:
        """Likelihood-aware targets ``[N, S]`` in [0, 1]: likelihood / 100, and 1 for a statement
        given without a likelihood (0: every rhythm/form statement); 0 where absent."""
        if self.likelihoods is None:
            raise ValueError("this cache has no likelihoods: rebuild it (python -m model_training cache)")
        lik = self.likelihoods
        return np.where(np.isnan(lik), 0.0, np.where(lik == 0, 1.0, lik / 100.0)).astype(np.float32)

    def statement_truth(self) -> np.ndarray:
        """Binary ``[N, S]``: the statement is listed for the record (any likelihood), as the
        PTB-XL benchmark scores its "all statements" task."""
        if self.likelihoods is None:
            raise ValueError("this cache has no likelihoods: rebuild it (python -m model_training cache)")
        return (~np.isnan(self.likelihoods)).astype(np.uint8)


def _index(category: object) -> int:
    return -1 if category is None else CATEGORY_ORDER.index(category)  # type: ignore[arg-type]


def manifest_hash(sums_file: bytes, ecg_id: np.ndarray, fold: np.ndarray, label: np.ndarray) -> str:
    return _manifest(hashlib.sha256(sums_file).hexdigest(), ecg_id, fold, label, mapping_hash())


def _manifest(data_digest: str, ecg_id: np.ndarray, fold: np.ndarray, label: np.ndarray,
              mapping: str) -> str:
    digest = hashlib.sha256()
    digest.update(bytes.fromhex(data_digest) if data_digest else b"")
    for arr in (ecg_id.astype(np.int64), fold.astype(np.int64), label.astype(np.int64)):
        digest.update(arr.tobytes())
    digest.update(mapping.encode())
    return digest.hexdigest()


def build(root: Path, out: Path | None, *, folds: list[int] | None = None,
          per_fold: int | None = None, progress: bool = True) -> PtbxlArrays:
    """Read the records (all: ~3 min on one core) and write ``out`` (.npz) unless None."""
    from tqdm import tqdm

    from model_training.datasets import PtbxlDataset

    ds = PtbxlDataset(root, folds=folds, per_fold=per_fold)
    n = len(ds)
    signals = np.zeros((n, len(INDEPENDENT_LEADS), LENGTH), dtype=np.int16)
    label = np.full(n, -1, dtype=np.int8)
    hr = np.full(n, np.nan, dtype=np.float32)
    fold = np.zeros(n, dtype=np.int8)
    for i in tqdm(range(n), desc="ptbxl", disable=not progress, mininterval=5):
        item = ds[i]
        if item.ecg.fs != FS or item.ecg.n_samples != LENGTH:
            raise ValueError(f"ecg_id {item.key}: expected {LENGTH} samples at {FS} Hz")
        x = np.stack([item.ecg.lead(name) for name in INDEPENDENT_LEADS])
        signals[i] = np.clip(np.round(x * 1000.0), -32768, 32767).astype(np.int16)
        label[i] = -1 if item.label is None else CATEGORY_ORDER.index(item.label)
        hr[i] = item.meta["heart_rate_bpm"]
        fold[i] = item.meta["fold"]
    ecg_id = ds.table.index.to_numpy().astype(np.int32)
    sums = (root / "SHA256SUMS").read_bytes()
    digest = manifest_hash(sums, ecg_id, fold, label)
    stadium = np.array([[str(v) if isinstance(v, str) else "" for v in pair] for pair in
                        ds.table[["infarction_stadium1", "infarction_stadium2"]].itertuples(index=False)],
                       dtype="<U16").reshape(n, 2)
    arrays = PtbxlArrays(signals, ecg_id, fold, label, hr, digest, MAPPING_VERSION,
                         statement_targets(ds.table["scp_codes"]), likelihoods(ds.table["scp_codes"]),
                         stadium, hashlib.sha256(sums).hexdigest())
    if out is not None:
        save(arrays, out)
    return arrays


def statement_targets(scp_codes: Iterable[Mapping[str, float]]) -> np.ndarray:
    """Multi-hot ``[N, len(statement_codes())]`` of the statements that count for the label."""
    column = {code: j for j, code in enumerate(statement_codes())}
    rows = list(scp_codes)
    out = np.zeros((len(rows), len(column)), dtype=np.uint8)
    for i, codes in enumerate(rows):
        out[i, [column[c] for c in counted_statements(codes)]] = 1
    return out


def likelihoods(scp_codes: Iterable[Mapping[str, float]]) -> np.ndarray:
    """``[N, len(statement_codes())]`` float32 likelihoods (0-100), NaN where not listed."""
    column = {code: j for j, code in enumerate(statement_codes())}
    rows = list(scp_codes)
    out = np.full((len(rows), len(column)), np.nan, dtype=np.float32)
    for i, codes in enumerate(rows):
        for code, value in codes.items():
            out[i, column[code]] = float(value)
    return out


_OPTIONAL = ("statements", "likelihoods", "stadium")


def _optional(arrays: PtbxlArrays) -> dict[str, np.ndarray]:
    out = {name: getattr(arrays, name) for name in _OPTIONAL if getattr(arrays, name) is not None}
    if arrays.data_digest:
        out["data_digest"] = np.array(arrays.data_digest)
    return out


def _write_npz(out: Path, writer: Callable[..., None], **arrays: np.ndarray) -> None:
    """Write ``out`` whole or not at all: a reader (a training started while the cache is
    still being written, a crash mid-write) never sees a truncated archive."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("wb") as fh:
            writer(fh, **arrays)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def save(arrays: PtbxlArrays, out: Path) -> None:
    _write_npz(out, np.savez_compressed, signals=arrays.signals, ecg_id=arrays.ecg_id, fold=arrays.fold,
                        label=arrays.label, heart_rate=arrays.heart_rate,
                        manifest_hash=np.array(arrays.manifest_hash),
                        mapping_version=np.array(arrays.mapping_version), **_optional(arrays))


def save_packed(arrays: PtbxlArrays, out: Path) -> None:
    """Smaller lossless file for slow links: first differences in time, then LZMA (~6.8 KB/record)."""
    import lzma

    diff = np.diff(arrays.signals, axis=2, prepend=np.int16(0)).astype(np.int16)
    payload = np.frombuffer(lzma.compress(diff.tobytes(), preset=6), dtype=np.uint8)
    _write_npz(out, np.savez, packed=payload, shape=np.array(arrays.signals.shape), ecg_id=arrays.ecg_id,
             fold=arrays.fold, label=arrays.label, heart_rate=arrays.heart_rate,
             manifest_hash=np.array(arrays.manifest_hash),
             mapping_version=np.array(arrays.mapping_version), **_optional(arrays))


def _signals(part: np.lib.npyio.NpzFile) -> np.ndarray:
    if "signals" in part:
        return part["signals"]
    import lzma

    diff = np.frombuffer(lzma.decompress(part["packed"].tobytes()), dtype=np.int16)
    return np.cumsum(diff.reshape(tuple(part["shape"])), axis=2, dtype=np.int16)


def load(paths: Path | list[Path]) -> PtbxlArrays:
    """Load one cache file, or several chunks of one cache concatenated in order."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    parts = [np.load(p) for p in paths]
    hashes = {str(p["manifest_hash"]) for p in parts}
    if len(hashes) != 1:
        raise ValueError("cache chunks come from different builds")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("ecg_id", "fold", "label", "heart_rate")}
    cat["signals"] = np.concatenate([_signals(p) for p in parts])
    optional = {name: (np.concatenate([p[name] for p in parts]) if all(name in p for p in parts) else None)
                for name in _OPTIONAL}
    digest = str(parts[0]["data_digest"]) if "data_digest" in parts[0] else ""
    return PtbxlArrays(cat["signals"], cat["ecg_id"], cat["fold"], cat["label"], cat["heart_rate"],
                       hashes.pop(), str(parts[0]["mapping_version"]), **optional, data_digest=digest)


def split(arrays: PtbxlArrays, out_dir: Path, n_chunks: int) -> list[Path]:
    """Write ``n_chunks`` packed chunks ``out_dir/ptbxl_<i>/ptbxl.npz`` (to move over small links)."""
    paths = []
    for i, idx in enumerate(np.array_split(np.arange(len(arrays.ecg_id)), n_chunks)):
        mask = np.zeros(len(arrays.ecg_id), dtype=bool)
        mask[idx] = True
        path = out_dir / f"ptbxl_{i}" / "ptbxl.npz"
        save_packed(arrays.subset(mask), path)
        paths.append(path)
    return paths
