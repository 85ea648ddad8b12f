"""Triager with the bundled default model on real and faulty ECGs."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_gateway.ecg import CATEGORY_ORDER, UNINTERPRETABLE, Ecg
from ecg_gateway.triage.model import load_model
from ecg_gateway.triage.service import Triager
from tests.support import real_ecgs, synthetic


@pytest.fixture(scope="module")
def triager() -> Triager:
    return Triager(load_model(None, "cpu"))


def test_outcomes_in_order_with_the_documented_json(triager: Triager) -> None:
    ecgs = [real_ecgs.ptbxl(1), synthetic.flat_line(0), real_ecgs.dicom("ecgtoolkit_Example.dcm")]
    no_v1 = Ecg(ecgs[0].signal[[0, 1, 3, 4, 5, 6, 7]], 100, ("I", "II", "V2", "V3", "V4", "V5", "V6"), "t")
    outcomes = triager.triage([*ecgs, no_v1])
    real, flat, dicom, missing = (o.to_json() for o in outcomes)
    assert set(real) == {"category", "probabilities", "quality", "model", "statements", "measurements",
                         "decision"}
    assert real["decision"]["rule"] in ("threshold", "argmax")
    # the shipped model names the statements behind its category (at most 5, above their thresholds)
    codes = set(triager.model.statements.codes) if triager.model.statements is not None else set()
    assert 1 <= len(real["statements"]) <= 5
    assert all(set(s) == {"code", "description", "probability"} and s["code"] in codes
               and 0.0 < s["probability"] <= 1.0 for s in real["statements"])
    assert dicom["measurements"]["qrs_ms"] > 0 and flat["measurements"] == {}
    assert list(real["probabilities"]) == [c.value for c in CATEGORY_ORDER]
    assert sum(real["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert real["category"] in {c.value for c in CATEGORY_ORDER} and dicom["quality"]["ok"] is True
    model = triager.model
    assert real["model"] == {"id": model.model_id, "sha256": model.sha256, "placeholder": model.placeholder}
    # failed the gate: never a category, but the probabilities are still reported when computed
    assert flat["category"] == UNINTERPRETABLE and flat["quality"]["reasons"] == ["flat_line"]
    assert flat["probabilities"] is not None
    assert missing["category"] == UNINTERPRETABLE and missing["probabilities"] is None
    assert missing["quality"]["reasons"] == ["missing_lead:V1"]


def test_probabilities_do_not_depend_on_the_batch(triager: Triager) -> None:
    ecgs = [synthetic.synthetic_ecg(i, fs=fs) for i, fs in enumerate((100, 250, 500, 1000, 500))]
    together = triager.triage(ecgs)
    for ecg, joint in zip(ecgs, together, strict=True):
        alone = triager.triage([ecg])[0]
        assert alone.category == joint.category
        np.testing.assert_allclose(list(alone.probabilities.values()), list(joint.probabilities.values()),
                                   atol=1e-5)
    assert triager.triage([]) == []
