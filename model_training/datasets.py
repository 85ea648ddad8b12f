"""Labelled ECG sources for training and evaluation; each yields :class:`LabeledEcg`.

* :class:`PtbxlDataset`: PTB-XL via WFDB (v1.0.1 content minus the 38 duplicates that
  v1.0.2 removed), triage labels from :mod:`model_training.labels`.
* :class:`CincDataset`: the CinC 2021 sample (external test only), SNOMED labels.
* :class:`DbExportDataset`: the gateway's own database (messages + results) + a CSV of
  clinician labels keyed by message id (message_id,category).
"""

from __future__ import annotations

import ast
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecg_gateway.ecg import Ecg, TriageCategory
from ecg_gateway.inbound.wfdb import header_comments, read_wfdb
from model_training.heart_rate import heart_rate_bpm
from model_training.labels import triage_category
from model_training.snomed import snomed_category


@dataclass(frozen=True)
class LabeledEcg:
    ecg: Ecg
    label: TriageCategory | None  # None: no usable label (left out of training/metrics)
    key: str  # record id in its source (ecg_id, file name, message id)
    meta: dict[str, Any] = field(default_factory=dict)


def v103_dropped_ids(root: Path) -> list[int]:
    """The 38 duplicate ecg_ids listed at the end of ptbxl_v103_changelog.txt."""
    text = (root / "ptbxl_v103_changelog.txt").read_text(encoding="utf-8")
    match = re.search(r"Dropped ecg_ids \[\d+ in total\]\s*=\s*(\[[\d,\s]+\])", text)
    if match is None:
        raise ValueError("ptbxl_v103_changelog.txt: list of dropped ecg_ids not found")
    return [int(x) for x in ast.literal_eval(match.group(1))]


def load_ptbxl_table(root: Path, folds: list[int] | None = None, drop_duplicates: bool = True):
    """ptbxl_database.csv as a DataFrame indexed by ecg_id, scp_codes parsed."""
    import pandas as pd

    df = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    df["scp_codes"] = df["scp_codes"].apply(ast.literal_eval)
    if drop_duplicates:
        df = df.drop(index=[i for i in v103_dropped_ids(root) if i in df.index])
    if folds is not None:
        df = df[df["strat_fold"].isin(folds)]
    return df


class PtbxlDataset:
    """PTB-XL records at 100 Hz; the label needs the signal (rate rules), so it is read first."""

    def __init__(self, root: str | Path, folds: list[int] | None = None,
                 drop_duplicates: bool = True, limit: int | None = None,
                 per_fold: int | None = None) -> None:
        self.root = Path(root)
        self.table = load_ptbxl_table(self.root, folds, drop_duplicates)
        if per_fold is not None:  # the first records of each fold (smoke runs, CI subsets)
            self.table = self.table.groupby("strat_fold", sort=False).head(per_fold).sort_index()
        if limit is not None:
            self.table = self.table.iloc[:limit]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> LabeledEcg:
        ecg_id = int(self.table.index[i])
        row = self.table.iloc[i].to_dict()
        ecg = read_wfdb(self.root / row["filename_lr"])
        row["heart_rate_bpm"] = heart_rate_bpm(ecg.signal, ecg.fs)
        meta = {"fold": int(row["strat_fold"]), "heart_rate_bpm": row["heart_rate_bpm"],
                "patient_id": row["patient_id"]}
        return LabeledEcg(ecg, triage_category(row["scp_codes"], row), str(ecg_id), meta)

    def __iter__(self) -> Iterator[LabeledEcg]:
        return (self[i] for i in range(len(self)))


class CincDataset:
    """CinC 2021 sample records (all ``*.hea`` below ``root``). External test set only.

    ``HR*`` records are PTB-XL recordings at 500 Hz; by default they are left out
    (``exclude_ptbxl``) because the model was trained on PTB-XL.
    """

    def __init__(self, root: str | Path, exclude_ptbxl: bool = True, mapping: str = "2.0") -> None:
        self.root = Path(root)
        self.mapping = mapping
        headers = sorted(self.root.rglob("*.hea"))
        self.headers = [h for h in headers if not (exclude_ptbxl and h.name.startswith("HR"))]

    def __len__(self) -> int:
        return len(self.headers)

    def __getitem__(self, i: int) -> LabeledEcg:
        hea = self.headers[i]
        ecg = read_wfdb(hea)
        codes = [c for c in header_comments(hea).get("Dx", "").split(",") if c.strip()]
        rate = heart_rate_bpm(ecg.signal, ecg.fs)
        label = snomed_category(codes, rate, self.mapping) if codes else None
        meta = {"dx": codes, "heart_rate_bpm": rate, "source": _cinc_source(hea.name)}
        return LabeledEcg(ecg, label, hea.stem, meta)

    def __iter__(self) -> Iterator[LabeledEcg]:
        return (self[i] for i in range(len(self)))


def _cinc_source(name: str) -> str:
    for prefix, source in (("HR", "PTB-XL"), ("JS", "Chapman-Shaoxing/Ningbo"),
                           ("E", "Georgia"), ("A", "CPSC 2018")):
        if name.startswith(prefix):
            return source
    return "unknown"


def _read_labels(path: Path, key: str) -> dict[str, TriageCategory]:
    """CSV with columns ``key,category``; rejects unknown categories with the row number."""
    labels: dict[str, TriageCategory] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                labels[str(row[key]).strip()] = TriageCategory(str(row["category"]).strip())
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path.name} line {n}: need {key},category with a triage "
                                 f"category, got {exc}") from None
    return labels


def _decoder():  # the lead's decoder; imported lazily
    from ecg_gateway.inbound import decode

    return decode


class DbExportDataset:
    """Messages that have a result AND a clinician label; yields the clinician's category.

    The model's own result (probabilities, model id) is kept in ``meta`` so a later
    evaluation can compare the deployed model with the clinicians.
    """

    def __init__(self, db_url: str, labels_csv: str | Path) -> None:
        self.db_url = db_url
        self.labels = _read_labels(Path(labels_csv), "message_id")
        self.rows = self._query()

    def _query(self) -> list[dict[str, Any]]:
        from sqlalchemy import create_engine, select

        from ecg_gateway.store.models import Message, Result

        ids = [int(k) for k in self.labels]
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                stmt = (select(Message.id, Message.source, Message.content_type, Message.raw,
                               Result.category, Result.p_normal, Result.p_abnormal_not_acute,
                               Result.p_subacute, Result.p_acute, Result.model_id)
                        .join(Result, Result.message_id == Message.id)
                        .where(Message.id.in_(ids)).order_by(Message.id, Result.id))
                rows = {r.id: dict(r._mapping) for r in conn.execute(stmt)}  # last result wins
        finally:
            engine.dispose()
        return [rows[i] for i in sorted(rows)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> LabeledEcg:
        row = self.rows[i]
        ecg = _decode_raw(row["raw"], row["source"], row["content_type"])
        probs = [row[k] for k in ("p_normal", "p_abnormal_not_acute", "p_subacute", "p_acute")]
        meta = {"model_category": row["category"], "model_id": row["model_id"],
                "model_probs": None if any(p is None for p in probs) else probs}
        return LabeledEcg(ecg, self.labels[str(row["id"])], str(row["id"]), meta)

    def __iter__(self) -> Iterator[LabeledEcg]:
        return (self[i] for i in range(len(self)))


def _decode_raw(raw: bytes, source: str, content_type: str) -> Ecg:
    """Decode stored raw bytes with the gateway's decoder (bytes API if it has one)."""
    decode = _decoder()
    if hasattr(decode, "decode_bytes"):
        return decode.decode_bytes(raw, source=source, content_type=content_type)
    import tempfile

    suffix = {"dicom": ".dcm", "hl7": ".hl7"}.get(source, ".xml")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"message{suffix}"
        path.write_bytes(raw)
        return decode.decode_file(path)
