"""The Alembic migrations build exactly the schema the models declare, on both engines."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from ecg_gateway.evidence import DecisionRule, Measurements, Statement
from ecg_gateway.store.models import Base


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_evidence_round_trips_through_json() -> None:
    statement = Statement("AFIB", "atrial fibrillation", 0.91234)
    assert Statement.from_json(statement.to_json()) == Statement("AFIB", "atrial fibrillation", 0.9123)
    measured = Measurements(heart_rate_bpm=72.04, qrs_ms=96.0)
    assert measured.to_json() == {"heart_rate_bpm": 72.0, "qrs_ms": 96.0}  # absent = not measured
    assert Measurements.from_json(measured.to_json()).qrs_ms == 96.0
    assert Measurements.from_json(None).is_empty()
    rule = DecisionRule("threshold", "ACUTE: p(acute) 0.31 >= 0.12", threshold=0.12, flag_budget=0.1)
    assert DecisionRule.from_json(rule.to_json()) == rule
    assert DecisionRule.from_json(None) is None
