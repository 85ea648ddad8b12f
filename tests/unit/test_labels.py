"""The SCP -> triage mapping, the SNOMED mapping, the rate detector and PTB-XL bookkeeping."""

from __future__ import annotations

import ast
import csv
import math

import numpy as np
import pytest

from ecg_gateway.ecg import CATEGORY_ORDER, TriageCategory
from ecg_gateway.inbound.wfdb import read_wfdb
from model_training.cache import PtbxlArrays
from model_training.datasets import PtbxlDataset, load_ptbxl_table, v103_dropped_ids
from model_training.export import class_counts_per_fold, label_sources
from model_training.heart_rate import heart_rate_bpm
from model_training.labels import (
    MAPPING_VERSION,
    PTBXL_TABLE,
    RULES,
    deciding_statements,
    get_mapping,
    mapping_hash,
    mapping_markdown,
    triage_category,
)
from model_training.snomed import SNOMED_TABLE, snomed_category
from tests.support.paths import shared_data

N, ANA, SA, A = (TriageCategory.NORMAL, TriageCategory.ABNORMAL_NOT_ACUTE,
                 TriageCategory.SUBACUTE, TriageCategory.ACUTE)


def test_table_covers_every_scp_statement_once() -> None:
    with open(shared_data("ptbxl", "scp_statements.csv"), newline="", encoding="utf-8") as fh:
        codes = {row[""] for row in csv.DictReader(fh)}
    assert len(codes) == 71
    assert set(RULES) == codes and len(PTBXL_TABLE) == 71
    assert all(rule.rationale for rule in PTBXL_TABLE)
    assert mapping_markdown("1.0").count("\n") == 72  # header, rule, one row per statement
    assert mapping_markdown("2.0").count("\n") == 74  # and the NORM rule below the table
    assert len(mapping_hash()) == 64 and MAPPING_VERSION == "ptbxl-triage-map-2.0"
    assert mapping_hash("1.0") != mapping_hash("2.0") == mapping_hash()
    with pytest.raises(ValueError, match="unknown mapping"):
        get_mapping("3.0")


@pytest.mark.parametrize(("codes", "record", "expected"), [
    ({"NORM": 100.0, "SR": 0.0}, None, N),
    ({"NORM": 80.0, "SARRH": 0.0}, None, N),
    ({"NORM": 100.0, "SBRAD": 0.0}, None, ANA),  # NORM never overrides another statement
    ({"CRBBB": 100.0, "SR": 0.0}, None, ANA),
    ({"CRBBB": 100.0, "ISC_": 100.0, "SR": 0.0}, None, SA),  # most severe wins
    ({"CLBBB": 100.0, "SVTAC": 0.0}, None, A),
    ({"LVH": 100.0, "ISC_": 35.0}, None, ANA),  # likelihood < 50 is ignored
    ({"ISC_": 15.0}, None, None),  # nothing counts -> unlabelled
    ({"INJAS": 50.0}, None, A),
    ({"IMI": 100.0}, {"infarction_stadium1": "Stadium I"}, A),
    ({"IMI": 100.0}, {"infarction_stadium1": "Stadium I-II"}, A),
    ({"ASMI": 100.0}, {"infarction_stadium1": "Stadium II"}, SA),
    ({"ASMI": 100.0}, {"infarction_stadium1": "Stadium II-III"}, SA),
    ({"ASMI": 100.0}, {"infarction_stadium1": "Stadium III"}, ANA),
    ({"ASMI": 100.0}, {"infarction_stadium1": "Stadium III", "infarction_stadium2": "Stadium I"}, A),
    ({"ASMI": 100.0}, {"infarction_stadium1": "unknown"}, SA),
    ({"ASMI": 100.0}, {"infarction_stadium1": float("nan")}, SA),
    ({"CLBBB": 100.0}, {"infarction_stadium1": "Stadium I"}, SA),  # stadium without an MI code
    ({"AFIB": 0.0}, {"heart_rate_bpm": 130.0}, A),
    ({"AFIB": 0.0}, {"heart_rate_bpm": 85.0}, SA),
    ({"AFLT": 0.0}, {"heart_rate_bpm": 35.0}, A),
    ({"AFIB": 0.0}, None, SA),  # no rate known: the base category
    ({"AFIB": 0.0}, {"heart_rate_bpm": float("nan")}, SA),
    ({"SBRAD": 0.0}, {"heart_rate_bpm": 36.0}, A),
    ({"SBRAD": 0.0}, {"heart_rate_bpm": 52.0}, ANA),
    ({"STACH": 0.0}, {"heart_rate_bpm": 160.0}, A),
    ({"STACH": 0.0}, {"heart_rate_bpm": 115.0}, ANA),
])
def test_triage_category_mapping_1_0(codes: dict[str, float], record: dict | None,
                                     expected: TriageCategory | None) -> None:
    assert triage_category(codes, record, "1.0") == expected


@pytest.mark.parametrize(("codes", "record", "expected"), [
    ({"STE_": 0.0, "NST_": 100.0, "SR": 0.0}, None, ANA),  # early repolarisation is not acute
    ({"INJAS": 50.0, "SR": 0.0}, None, SA),  # subendocardial injury: review within hours to days
    ({"ASMI": 100.0, "INJAS": 50.0}, {"infarction_stadium1": "Stadium I"}, A),  # acute through the MI
    ({"SBRAD": 0.0}, {"heart_rate_bpm": 36.0}, SA),
    ({"NORM": 100.0, "SBRAD": 0.0, "SR": 0.0}, {"heart_rate_bpm": 52.0}, N),  # the verdict outranks
    ({"NORM": 100.0, "SBRAD": 0.0}, {"heart_rate_bpm": 36.0}, SA),  # ... not a brady below 40
    ({"NORM": 100.0, "STACH": 0.0}, {"heart_rate_bpm": 160.0}, A),  # ... nor a tachy above 150
    ({"NORM": 100.0, "STE_": 0.0, "VCLVH": 0.0, "ABQRS": 0.0}, None, N),
    ({"NORM": 80.0, "VCLVH": 0.0}, None, ANA),  # only a NORM at 100 outranks
    ({"NORM": 100.0, "QWAVE": 0.0}, None, ANA),  # Q waves do not qualify
    ({"NORM": 100.0, "IRBBB": 100.0}, None, ANA),  # nor a diagnostic code
    ({"NORM": 100.0, "VCLVH": 0.0, "ISC_": 35.0}, None, N),  # a statement that does not count
    ({"AFIB": 0.0}, {"heart_rate_bpm": 130.0}, A),  # unchanged: rapid AF
    ({"IMI": 100.0}, {"infarction_stadium1": "unknown"}, SA),  # unchanged: unknown stadium
])
def test_triage_category_mapping_2_0(codes: dict[str, float], record: dict | None,
                                     expected: TriageCategory | None) -> None:
    assert triage_category(codes, record) == triage_category(codes, record, "2.0") == expected


def test_mapping_2_0_on_the_audited_ptbxl_rows() -> None:
    """triage.md §4's examples: STE_ beside a cardiologist's NORM, injury without a stadium."""
    table = load_ptbxl_table(shared_data("ptbxl"))
    for ecg_id, before, after in ((2639, A, N), (1600, A, N), (5459, A, N), (4071, A, N), (5616, A, SA)):
        row = {**table.loc[ecg_id].to_dict(), "heart_rate_bpm": 70.0}
        assert (triage_category(row["scp_codes"], row, "1.0"), triage_category(row["scp_codes"], row)) == (
            before, after), ecg_id


def test_unknown_statement_is_an_error_not_a_silent_normal() -> None:
    with pytest.raises(KeyError):
        triage_category({"XYZ": 100.0})


def test_snomed_mapping() -> None:
    assert snomed_category(["426783006"]) == N
    assert snomed_category(["426783006", "59118001"]) == ANA
    assert snomed_category(["164889003", "59118001"], 90.0) == SA
    assert snomed_category(["164889003"], 125.0) == A
    assert snomed_category(["426177001"], 35.0, "1.0") == A
    assert snomed_category(["426177001"], 35.0) == SA  # mapping 2.0, as SBRAD < 40
    assert (snomed_category(["164931005"], math.nan, "1.0"), snomed_category(["164931005"])) == (A, ANA)
    assert snomed_category(["164865005", "713422000"]) == A
    assert snomed_category(["266257000"]) is None  # TIA: not an ECG finding, unmapped
    assert snomed_category([]) is None
    scored = shared_data("cinc2021-samples", "dx_mapping_scored.csv")
    with open(scored, newline="", encoding="utf-8") as fh:
        assert {row["SNOMEDCTCode"] for row in csv.DictReader(fh)} <= set(SNOMED_TABLE)


def test_heart_rate_agrees_with_rhythm_statements() -> None:
    """The rate rules rely on the detector: check it on real sinus brady/tachycardias."""
    root = shared_data("ptbxl")
    table = load_ptbxl_table(root, folds=[10])
    for code, ok in (("SBRAD", lambda r: 35 < r < 62), ("STACH", lambda r: 98 < r < 180),
                     ("NORM", lambda r: 45 < r < 101)):
        rows = table[table["scp_codes"].apply(lambda d, c=code: c in d)].head(6)
        rates = [heart_rate_bpm(read_wfdb(root / f).signal, 100.0) for f in rows["filename_lr"]]
        assert sum(ok(r) for r in rates) >= 5, (code, rates)
    flat = np.zeros((8, 1000), dtype=np.float32)
    assert math.isnan(heart_rate_bpm(flat, 100.0))


def test_ptbxl_table_drops_the_38_v103_duplicates_and_reads_labels() -> None:
    root = shared_data("ptbxl")
    dropped = v103_dropped_ids(root)
    assert len(dropped) == 38 and 137 in dropped and 3801 in dropped
    table = load_ptbxl_table(root)
    assert len(table) == 21837 - 38 and not set(dropped) & set(table.index)
    ds = PtbxlDataset(root, folds=[9, 10], per_fold=2)
    assert len(ds) == 4
    item = ds[0]
    assert item.ecg.fs == 100 and item.ecg.leads[:2] == ("I", "II") and item.meta["fold"] in (9, 10)
    codes = ast.literal_eval(str(ds.table.iloc[0]["scp_codes"])) if isinstance(
        ds.table.iloc[0]["scp_codes"], str) else ds.table.iloc[0]["scp_codes"]
    assert item.label == triage_category(codes, {**ds.table.iloc[0].to_dict(),
                                                 "heart_rate_bpm": item.meta["heart_rate_bpm"]})


@pytest.mark.parametrize(("codes", "record", "expected"), [
    ({"NORM": 100.0, "SR": 0.0}, None, ("NORM", "SR")),
    ({"NORM": 100.0, "SBRAD": 0.0, "IRBBB": 100.0}, None, ("IRBBB", "SBRAD")),
    ({"STE_": 0.0, "NST_": 100.0, "SR": 0.0}, None, ("STE_",)),
    ({"ASMI": 100.0, "INJAS": 50.0, "LAFB": 100.0}, {"infarction_stadium1": "Stadium I"}, ("ASMI", "INJAS")),
    ({"AFIB": 0.0, "ISC_": 100.0}, {"heart_rate_bpm": 130.0}, ("AFIB",)),
    ({"AFIB": 0.0, "ISC_": 100.0}, {"heart_rate_bpm": 80.0}, ("AFIB", "ISC_")),
    ({"ISC_": 15.0}, None, ()),
])
def test_deciding_statements(codes: dict[str, float], record: dict | None, expected: tuple[str, ...]) -> None:
    assert deciding_statements(codes, record, "1.0") == expected


def test_deciding_statements_name_the_verdict_that_outranks() -> None:
    assert deciding_statements({"NORM": 100.0, "SBRAD": 0.0, "SR": 0.0}, {"heart_rate_bpm": 55.0}) == ("NORM",)
    assert deciding_statements({"STE_": 0.0, "NST_": 100.0}) == ("NST_", "STE_")


def test_label_sources_counts_the_statements_that_set_each_label() -> None:
    """Real PTB-XL rows: the counts per category add up to at least the records labelled so."""
    table = load_ptbxl_table(shared_data("ptbxl"), folds=[9])
    ids = np.array(table.index[:300])
    labels = [triage_category(table.loc[i, "scp_codes"], {**table.loc[i].to_dict(), "heart_rate_bpm": 75.0})
              for i in ids]
    codes = [CATEGORY_ORDER.index(x) if x is not None else -1 for x in labels]
    arrays = PtbxlArrays(np.zeros((len(ids), 8, 1000), np.int16), ids, np.full(len(ids), 9),
                         np.array(codes, np.int8), np.full(len(ids), 75.0, np.float32), "h", MAPPING_VERSION)
    sources = label_sources(table, arrays)
    for k, name in enumerate(c.value for c in CATEGORY_ORDER):
        assert sum(sources[name].values()) >= codes.count(k)
        assert all(RULES[code].category.value == name or RULES[code].rule != "fixed" for code in sources[name])
    assert set(sources["normal"]) <= {"NORM", "SR", "SARRH"}
    counts = list(sources["acute"].values())
    assert counts == sorted(counts, reverse=True) and sources["acute"]


def test_class_counts_per_fold_report() -> None:
    arrays = PtbxlArrays(np.zeros((6, 8, 1000), np.int16), np.arange(6), np.array([1, 1, 9, 9, 10, 10]),
                         np.array([0, 3, 1, -1, 2, 2], np.int8), np.zeros(6, np.float32), "h", "v")
    counts = class_counts_per_fold(arrays)
    assert counts["1"] == {"normal": 1, "abnormal_not_acute": 0, "subacute": 0, "acute": 1,
                           "unlabelled": 0, "total": 2}
    assert counts["9"]["unlabelled"] == 1 and counts["10"]["subacute"] == 2
    assert counts["all"]["total"] == 6


def test_db_export_joins_results_with_clinician_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Real SQLite database at migration head: only messages with a result AND a label come out."""
    from sqlalchemy.orm import Session

    from ecg_gateway.store.db import make_engine, upgrade_to_head
    from ecg_gateway.store.models import Job, Message, Result
    from model_training.datasets import DbExportDataset

    url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        for i in range(1, 4):
            msg = Message(source="hl7", idempotency_key=f"k{i}", sha256="0" * 64,
                          content_type="application/hl7-v2", raw=b"MSH|x", identifiers={})
            session.add(msg)
            session.flush()
            job = Job(message_id=msg.id)
            session.add(job)
            session.flush()
            if i != 3:  # message 3 never got a result
                session.add(Result(message_id=msg.id, job_id=job.id, category="acute", p_normal=0.1,
                                   p_abnormal_not_acute=0.1, p_subacute=0.1, p_acute=0.7,
                                   model_id="m", model_sha256="1" * 64))
    engine.dispose()
    labels = tmp_path / "labels.csv"
    labels.write_text("message_id,category\n1,subacute\n3,normal\n")
    ds = DbExportDataset(url, labels)
    assert len(ds) == 1 and ds.rows[0]["id"] == 1 and ds.rows[0]["p_acute"] == 0.7
    assert ds.labels["1"] == TriageCategory.SUBACUTE
    labels.write_text("message_id,category\n1,urgent\n")
    with pytest.raises(ValueError, match="line 2"):
        DbExportDataset(url, labels)


def test_statement_targets_follow_the_label_rule_and_survive_the_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The auxiliary multi-hot targets count exactly the statements the label counts."""
    from model_training import cache
    from model_training.labels import statement_codes

    codes = statement_codes()
    assert len(codes) == len(set(codes)) == 71
    targets = cache.statement_targets([{"NORM": 100.0, "SR": 0.0}, {"IMI": 35.0, "LVH": 50.0}, {}])
    on = [[codes[j] for j in np.flatnonzero(row)] for row in targets]
    assert on == [["NORM", "SR"], ["LVH"], []]  # IMI at 35 % does not count, as in the label
    arrays = PtbxlArrays(np.zeros((3, 8, 1000), np.int16), np.arange(3), np.array([1, 9, 10]),
                         np.array([0, 1, -1], np.int8), np.zeros(3, np.float32), "h", "v", targets)
    cache.save(arrays, tmp_path / "c.npz")
    back = cache.load(tmp_path / "c.npz")
    assert back.statements is not None and np.array_equal(back.statements, targets)
    assert np.array_equal(back.subset(np.array([False, True, True])).statements, targets[1:])


def test_cache_write_is_all_or_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A cache write that fails half-way leaves the previous cache readable and no debris."""
    from model_training import cache

    def arrays(signals: object) -> PtbxlArrays:
        return PtbxlArrays(signals, np.arange(2), np.array([1, 9]), np.array([0, 1], np.int8),  # type: ignore[arg-type]
                           np.zeros(2, np.float32), "h", "v")

    class Unreadable:
        def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
            raise OSError("disk full")

    out = tmp_path / "c.npz"
    cache.save(arrays(np.ones((2, 8, 1000), np.int16)), out)
    with pytest.raises(OSError, match="disk full"):
        cache.save(arrays(Unreadable()), out)
    assert cache.load(out).signals.sum() == 2 * 8 * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_cache_relabels_under_either_mapping_and_builds_likelihood_targets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One cache serves both mappings: the likelihoods, stadia and rates are enough to relabel."""
    from model_training import cache
    from model_training.labels import statement_codes

    rows = [{"NORM": 100.0, "STE_": 0.0, "SR": 0.0}, {"INJAS": 50.0, "LVH": 15.0},
            {"IMI": 100.0, "INJIN": 100.0}, {"ISC_": 15.0}]
    likelihoods = cache.likelihoods(rows)
    stadium = np.array([["", ""], ["", ""], ["Stadium I", ""], ["", ""]], dtype="<U16")
    labels = np.array([CATEGORY_ORDER.index(triage_category(r, None, "2.0")) if triage_category(r, None, "2.0")
                       else -1 for r in rows], np.int8)
    arrays = PtbxlArrays(np.zeros((4, 8, 1000), np.int16), np.arange(4), np.array([1, 1, 9, 10]), labels,
                         np.full(4, 70.0, np.float32), "h", MAPPING_VERSION, cache.statement_targets(rows),
                         likelihoods, stadium, "ab" * 32)
    cache.save(arrays, tmp_path / "c.npz")
    back = cache.load(tmp_path / "c.npz")
    assert back.data_digest == "ab" * 32 and back.scp_codes(1) == rows[1]
    old = back.with_mapping("1.0")
    assert old.mapping_version == "ptbxl-triage-map-1.0" and old.manifest_hash != back.manifest_hash
    assert [CATEGORY_ORDER[k].value if k >= 0 else None for k in old.label] == ["acute", "acute", "acute", None]
    assert [CATEGORY_ORDER[k].value if k >= 0 else None for k in old.with_mapping("2.0").label] == [
        "normal", "subacute", "acute", None]
    targets, truth = back.statement_targets(), back.statement_truth()
    column = {code: j for j, code in enumerate(statement_codes())}
    assert targets[0, column["STE_"]] == 1.0 and targets[1, column["INJAS"]] == 0.5
    assert targets[1, column["LVH"]] == pytest.approx(0.15) and targets[3, column["NORM"]] == 0.0
    assert truth[1, column["LVH"]] == 1 and truth.sum() == 8  # every listed statement, any likelihood
