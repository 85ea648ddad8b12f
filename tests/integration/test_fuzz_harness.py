"""The fuzz targets (fuzz/targets.py) stay working without atheris: seed corpus + hypothesis.

With atheris installed, each harness also runs a few hundred libFuzzer executions.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS
from tests.support.gateway import REPO

CORPUS = REPO / "fuzz" / "corpus"


def _seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / target).iterdir()) if p.is_file()]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_t11_seed_corpus_and_regressions_pass(target: str) -> None:
    seeds = _seeds(target)
    assert seeds, f"no seeds for {target}"
    for seed in seeds:
        TARGETS[target](seed)


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    """A seed with a few random byte edits (flip, insert, delete, truncate)."""
    data = bytearray(draw(st.sampled_from(_seeds(target))))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "special"]))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif action == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.sampled_from([b"\x0b", b"\x1c\x0d", b"|", b"^", b"~", b"\\", b"&", b"\r",
                                                b"\x00", b"\xff\xfe", b"NaN", b"1e400", b"-", b"\xef\xbb\xbf"]))
    return bytes(data)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=3000))
def test_t11_mllp_framer_on_arbitrary_bytes(data: bytes) -> None:
    TARGETS["mllp"](data)


@FAST
@given(mutated("mllp"))
def test_t11_mllp_framer_on_mutated_streams(data: bytes) -> None:
    TARGETS["mllp"](data)


@FAST
@given(mutated("hl7"))
def test_t11_hl7_decoder_raises_only_validation_errors(data: bytes) -> None:
    TARGETS["hl7"](data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated("dicom"))
def test_t10_dicom_decoder_raises_only_validation_errors(data: bytes) -> None:
    TARGETS["dicom"](data)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed (pip install .[fuzz])")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_atheris_harness_runs(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # libFuzzer adds what it finds to the corpus folder: not the repo's
    shutil.copytree(CORPUS / target, corpus)
    done = subprocess.run([sys.executable, str(REPO / "fuzz" / f"fuzz_{target}.py"), str(corpus),
                           "-runs=300", f"-artifact_prefix={tmp_path}/"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"Done \d+ runs", done.stderr) and not list(tmp_path.glob("crash-*"))
