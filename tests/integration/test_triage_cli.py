"""``ecg-gateway triage`` through the real entry point: every format, WFDB from the base
install, and a run that goes on past files it cannot read (error objects, exit 65 at the end)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.gateway import run_cli
from tests.support.paths import TEST_DATA, shared_data

CATEGORIES = {"normal", "abnormal_not_acute", "subacute", "acute", "uninterpretable"}


def test_bad_files_are_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.7\n1 0 obj\n")
    cda = tmp_path / "note.xml"
    cda.write_text("<?xml version='1.0'?><ClinicalDocument xmlns='urn:hl7-org:v3'/>")
    files = [TEST_DATA / "ecgtoolkit_Example.scp", pdf, TEST_DATA / "ad4d3d80-d165_1-04_orig.xml",
             tmp_path / "absent.dcm", cda, TEST_DATA / "129DYPRG.XML"]
    result = run_cli("triage", "--json", *map(str, files))
    assert result.returncode == 65, result.stderr
    objects = json.loads(result.stdout)
    assert [o["file"] for o in objects] == list(map(str, files))
    for i in (0, 2, 5):
        assert objects[i]["category"] in CATEGORIES and "error" not in objects[i]
    assert objects[1] == {"file": str(pdf), "error": "unrecognised file format: a PDF document (expected "
                          "DICOM, HL7 v2, HL7 aECG, GE MUSE XML, Philips SierraECG XML, SCP-ECG or WFDB .hea)"}
    assert objects[3]["error"] == "cannot read: No such file or directory"
    assert objects[4]["error"].startswith("unrecognised file format: an XML document <ClinicalDocument>")

    text = run_cli("triage", str(files[0]), str(pdf))
    assert text.returncode == 65
    assert text.stdout.splitlines()[0].startswith(f"{files[0]}: ")
    assert f"ecg-gateway: error: {pdf}: unrecognised file format: a PDF document" in text.stderr


def test_wfdb_and_every_new_format_triage_with_exit_0() -> None:
    hea = shared_data("ptbxl", "records100", "00000", "00001_lr.hea")
    signal_file = hea.with_suffix(".dat")
    result = run_cli("triage", "--json", str(hea), str(TEST_DATA / "ecgtoolkit_Example.scp"))
    assert result.returncode == 0, result.stderr
    assert all(o["category"] in CATEGORIES for o in json.loads(result.stdout))
    one = run_cli("triage", "--json", str(signal_file))
    assert one.returncode == 65
    assert json.loads(one.stdout)["error"] == "WFDB signal file: triage its header 00001_lr.hea instead"
