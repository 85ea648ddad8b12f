"""The documents in docs/ against the code: tables, generated examples, commands, links.

Every table marked ``<!-- checked: NAME -->`` is parsed and compared with what the code
implements (ecg_gateway.conformance reads it from the real modules); the examples between
``<!-- generated: NAME -->`` markers must equal docs/generate_examples.py's output.
"""

from __future__ import annotations

import codecs
import importlib.util
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway import cli, conformance, metrics
from ecg_gateway.config import Config, DicomConfig, Hl7Config
from ecg_gateway.inbound import dicom_scp
from ecg_gateway.inbound.hl7 import decode_hl7
from ecg_gateway.inbound.hl7_receiver import Hl7Receiver
from ecg_gateway.ops import QueueCollector
from ecg_gateway.outbound.oru import CATEGORIES
from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from ecg_gateway.store.ingest import Ingestor

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_examples", DOCS / "generate_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def table(text: str, name: str) -> list[dict[str, str]]:
    """Rows of the Markdown table right after ``<!-- checked: name -->``, keyed by header."""
    marker = f"<!-- checked: {name} -->"
    assert text.count(marker) == 1, f"table {name!r} missing or duplicated"
    lines = text.split(marker, 1)[1].strip().splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[:end]]
    header, _, *body = rows
    assert body, f"table {name!r} has no rows"
    return [dict(zip(header, row, strict=True)) for row in body]


def plain(cell: str) -> str:
    return cell.replace("`", "").strip()


def hexcode(cell: str) -> int:
    return int(plain(cell), 16)


# --- generated examples -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dicom-conformance.md", "hl7-interface.md", "operator-guide.md"])
def test_generated_blocks_equal_the_code_output(name: str) -> None:
    text = doc(name)
    for block, body in gen.blocks(text).items():
        assert body == gen.render(block), f"{name}: block {block} is stale: run docs/generate_examples.py"


def test_every_generator_is_shown_in_a_document() -> None:
    shown = set().union(*(gen.blocks(doc(n)) for n in ("hl7-interface.md", "operator-guide.md")))
    assert shown == set(gen.GENERATORS)


def test_generator_check_mode_passes() -> None:
    assert gen.main(["--check"]) == 0


def test_examples_carry_no_real_looking_patient() -> None:
    for name in ("inbound-oru", "oru-acute", "oru-uninterpretable"):
        text = gen.GENERATORS[name]()
        assert "TEST^PATIENT" in text and "TEST-000" in text


def test_inbound_example_is_a_valid_ecg() -> None:
    ecg = decode_hl7(gen.inbound_oru())
    assert ecg.leads == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert ecg.fs == 500.0 and ecg.n_samples == len(gen.SAMPLES)
    assert ecg.uid == "CART-000123" and ecg.demographics.patient_id == "TEST-0001^^^HOSP^MR"
    assert abs(float(ecg.lead("I")[0]) - gen.SAMPLES[0][0] * 5e-3) < 1e-6  # 5 uV per unit, in mV


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    """A real, migrated SQLite database."""
    url = f"sqlite:///{tmp_path_factory.mktemp('docs') / 'docs.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def _without_stamp(ack: bytes) -> list[list[str]]:
    """ACK segments with MSH-7 (time) and MSH-10 (random id) blanked."""
    segments = [seg.split("|") for seg in ack.decode().strip("\r").split("\r")]
    segments[0][6] = segments[0][9] = ""
    return segments


def test_example_aa_is_what_the_receiver_sends_after_commit(sessions: sessionmaker[Session]) -> None:
    receiver = Hl7Receiver(Ingestor(sessions))
    outcome = receiver.process(gen.inbound_oru(), peer="test")
    assert outcome.code == "AA"
    sent = receiver.respond(outcome)
    assert sent is not None and len(sent) == 1
    assert _without_stamp(sent[0]) == _without_stamp(gen.ack_aa())


# --- DICOM conformance statement -----------------------------------------------------------

def test_sop_class_table_is_what_the_ae_registers() -> None:
    rows = table(doc("dicom-conformance.md"), "sop-classes")
    documented = {r["SOP Class UID"]: r for r in rows}
    always = {uid for uid, r in documented.items() if "only with" not in r["Provider of service (SCP)"]}
    default_ae = {cx.sop_class_uid for cx in conformance.dicom_contexts(DicomConfig())}
    full_ae = conformance.dicom_contexts(DicomConfig(accept_hemodynamic=True))
    assert always == default_ae
    assert set(documented) == {cx.sop_class_uid for cx in full_ae}
    for cx in full_ae:
        assert documented[cx.sop_class_uid]["SOP Class"] == cx.name
        assert documented[cx.sop_class_uid]["User of service (SCU)"] == "No"
    switched = [r for r in rows if "only with" in r["Provider of service (SCP)"]]
    assert [plain(r["Provider of service (SCP)"]).split("only with ")[1] for r in switched] == \
        ["dicom.accept_hemodynamic: true"]


def test_presentation_context_table_is_what_the_ae_accepts() -> None:
    rows = table(doc("dicom-conformance.md"), "presentation-contexts")
    documented: dict[str, list[str]] = {}
    for r in rows:
        assert r["Role"] == "SCP" and r["Ext. neg."] == "None"
        assert UID(r["Abstract syntax UID"]).name == r["Abstract syntax"]
        assert UID(r["Transfer syntax UID"]).name == r["Transfer syntax"]
        documented.setdefault(r["Abstract syntax UID"], []).append(r["Transfer syntax UID"])
    actual = {cx.sop_class_uid: list(cx.transfer_syntaxes)
              for cx in conformance.dicom_contexts(DicomConfig(accept_hemodynamic=True))}
    assert documented == actual  # same syntaxes, in the AE's order of preference


def test_deflated_is_never_accepted() -> None:
    for cx in conformance.dicom_contexts(DicomConfig(accept_hemodynamic=True)):
        assert DeflatedExplicitVRLittleEndian not in cx.transfer_syntaxes
    assert list(conformance.dicom_storage_transfer_syntaxes().values()) == [
        "Explicit VR Little Endian", "Implicit VR Little Endian", "Explicit VR Big Endian"]


def test_c_store_status_table_is_every_status_the_handler_returns() -> None:
    rows = table(doc("dicom-conformance.md"), "c-store-statuses")
    documented = {hexcode(r["Error code"]): (r["Service status"], r["Further meaning"]) for r in rows}
    assert documented == conformance.c_store_statuses()
    assert documented.keys() == {dicom_scp.SUCCESS, dicom_scp.PROCESSING_FAILURE, dicom_scp.OUT_OF_RESOURCES,
                                 dicom_scp.DATASET_DOES_NOT_MATCH_SOP_CLASS, dicom_scp.CANNOT_UNDERSTAND}


def test_waveform_limit_table_is_the_decoder_limits() -> None:
    rows = table(doc("dicom-conformance.md"), "waveform-limits")
    limits = conformance.dicom_waveform_limits()
    by_name = {UID(uid).name: lim for uid, lim in limits.items()}
    assert {r["SOP Class"] for r in rows} == set(by_name)
    for r in rows:
        lim = by_name[r["SOP Class"]]
        low, high = (float(x) for x in r["Sampling frequency (Hz)"].split("–"))
        kinds = {(int(k.split()[0]), k.split()[1])
                 for k in r["Bits allocated / sample interpretation"].split(", ")}
        assert (int(r["Max channels per group"]), int(r["Max samples per channel"]), (low, high), kinds) == \
            (lim.max_channels, lim.max_samples, lim.sampling_hz, set(lim.sample_kinds))


def test_association_limit_defaults_are_the_config_defaults() -> None:
    text = doc("dicom-conformance.md")
    defaults = DicomConfig()
    for r in table(text, "association-limits"):
        key = plain(r["Config key"])
        assert key.startswith("dicom.")
        assert yaml.safe_load(r["Default"]) == getattr(defaults, key.split(".", 1)[1]), key
    assert dicom_scp.ASSOCIATE_RQ_CAP == 1 << 20 and "claims more than 1 MiB" in text


def test_implementation_identity_is_pynetdicoms() -> None:
    rows = {r["Item"]: r["Value"] for r in table(doc("dicom-conformance.md"), "implementation")}
    assert (rows["Implementation Class UID"], rows["Implementation Version Name"]) == \
        conformance.dicom_implementation()


def migrated_sessions(tmp_path: Path) -> sessionmaker[Session]:
    """A real SQLite file at head, so the audit events of rejected input have a table to land in."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade_to_head(url)
    return make_session_factory(make_engine(url))


def test_association_rejections_and_evictions_happen_as_documented(tmp_path: Path) -> None:
    """A real SCP on loopback: unknown calling AE -> (1,1,3); at the association limit the
    idle association is closed to make room for the new one (issue #29), not rejected."""
    rows = table(doc("dicom-conformance.md"), "association-rejections")
    columns = ("Result", "Source", "Reason / diagnosis")
    documented = {tuple(int(r[k].split()[0]) for k in columns) for r in rows}
    config = DicomConfig(port=0, allowed_calling_ae_titles=["CART1"], max_associations=1)
    server = dicom_scp.start_dicom_server(config, Ingestor(migrated_sessions(tmp_path)))
    port = server.server_address[1]
    try:
        seen = set()
        scu = AE(ae_title="ROGUE")
        scu.add_requested_context(Verification)
        rejected = scu.associate("127.0.0.1", port, ae_title="ECG_GATEWAY")
        assert rejected.is_rejected
        rj = rejected.acceptor.primitive
        seen.add((int(rj.result), int(rj.result_source), int(rj.diagnostic)))
        scu.shutdown()
        deadline = time.monotonic() + 5
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)  # the rejected association's thread is still ending
        cart = AE(ae_title="CART1")
        cart.add_requested_context(Verification)
        first = cart.associate("127.0.0.1", port, ae_title="ECG_GATEWAY")
        assert first.is_established
        second = cart.associate("127.0.0.1", port, ae_title="ECG_GATEWAY")  # over the limit of 1
        assert second.is_established and second.send_c_echo().Status == 0x0000
        while first.is_established and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        assert not first.is_established  # the idle one was closed to make room
        second.release()
        cart.shutdown()
    finally:
        server.shutdown()
    assert seen == documented == {(1, 1, 3)}
    assert "the longest-idle connection" in doc("dicom-conformance.md")


# --- HL7 interface specification -------------------------------------------------------------

def test_inbound_message_types_versions_processing_ids() -> None:
    text = doc("hl7-interface.md")
    rows = table(text, "inbound-messages")
    assert {r["MSH-9.1 message type"]: tuple(r["MSH-9.2 trigger events"].split(", ")) for r in rows} == \
        conformance.hl7_accepted_messages()

    def listed(name: str) -> tuple[str, ...]:
        line = text.split(f"<!-- checked: {name} -->", 1)[1].strip().splitlines()[0]
        return tuple(line.split(": ", 1)[1].rstrip(".").split(", "))

    assert listed("versions") == conformance.hl7_versions()
    assert listed("processing-ids") == conformance.hl7_processing_ids()


def test_charset_table_is_what_the_receiver_decodes() -> None:
    rows = table(doc("hl7-interface.md"), "charsets")
    documented = {"" if r["MSH-18"] == "(empty)" else r["MSH-18"]: codecs.lookup(r["Decoded as"]).name
                  for r in rows}
    assert documented == {k: codecs.lookup(v).name for k, v in conformance.hl7_charsets().items()}


def _msh(payload: bytes, field: int, value: str) -> bytes:
    lines = payload.split(b"\r")
    fields = lines[0].split(b"|")
    fields[field - 1] = value.encode()
    return b"\r".join([b"|".join(fields), *lines[1:]])


def _cases() -> dict[tuple[str, int], bytes]:
    """One real message per documented (MSA-1, ERR-3) answer."""
    ok = gen.inbound_oru()
    no_obx = b"\r".join(seg for seg in ok.split(b"\r") if not seg.startswith(b"OBX"))
    return {
        ("AR", 100): b"PID|1||TEST-0001\r" + ok,
        ("AR", 102): ok.replace(b"MSH|^~\\&|", b"MSH|^~|", 1),
        ("AR", 101): _msh(ok, 10, ""),
        ("AR", 203): _msh(ok, 12, "2.2"),
        ("AR", 200): _msh(ok, 9, "ADT^A08^ADT_A01"),
        ("AR", 201): _msh(ok, 9, "ORU^R30^ORU_R30"),
        ("AR", 202): _msh(ok, 11, "D"),
        ("AE", 101): no_obx,
        ("AE", 102): gen.inbound_oru(number="1e5"),
        ("AE", 103): _msh(ok, 18, "ISO IR87"),
        ("AE", 100): ok + _msh(ok, 10, "SECOND-1"),  # two messages in one frame (issue #29)
    }


def test_ack_rules_table_lists_exactly_the_codes_the_receiver_emits(tmp_path: Path) -> None:
    rows = table(doc("hl7-interface.md"), "ack-rules")
    documented = {(r["MSA-1"], int(r["ERR-3"])) for r in rows}
    assert {code for _, code in documented} == set(conformance.hl7_error_codes())
    receiver = Hl7Receiver(Ingestor(migrated_sessions(tmp_path)))
    cases = _cases()
    missing = tmp_path / "no-such-dir" / "x.db"  # the database cannot be opened: a real failure
    down = Hl7Receiver(Ingestor(make_session_factory(make_engine(f"sqlite:///{missing}"))))
    cases[("AR", 207)] = gen.inbound_oru()
    answered = set()
    for (ack, code), payload in cases.items():
        rx = down if code == 207 else receiver
        outcome = rx.process(payload, peer="test")
        assert outcome.error is not None, (ack, code)
        answered.add((outcome.code, outcome.error.code))
        assert (outcome.code, outcome.error.code) == (ack, code)
    assert answered == documented  # every documented answer happens, and no other


def test_err_code_table_is_table_0357_for_the_codes_used() -> None:
    rows = table(doc("hl7-interface.md"), "err-codes")
    assert {int(r["ERR-3 code"]): r["Table 0357 text"] for r in rows} == conformance.hl7_error_codes()


def test_enhanced_mode_codes() -> None:
    rows = table(doc("hl7-interface.md"), "accept-codes")
    documented = {r["Application ACK (MSA-1)"]: r["Accept ACK (MSA-1)"] for r in rows}
    assert documented == conformance.hl7_accept_codes()


def test_mllp_limit_defaults_are_the_config_defaults() -> None:
    defaults = Hl7Config()
    for r in table(doc("hl7-interface.md"), "mllp-limits"):
        key = plain(r["Config key"]).split(".", 1)[1]
        assert yaml.safe_load(r["Default"]) == getattr(defaults, key), key


def _segments(er7: str) -> list[list[str]]:
    out = []
    for line in er7.splitlines():
        fields = line.split("|")
        if fields[0] == "MSH":
            fields.insert(1, "|")
        out.append(fields)
    return out


def test_oru_segment_table_is_what_compose_oru_writes() -> None:
    rows = table(doc("hl7-interface.md"), "oru-segments")
    acute = _segments(gen.GENERATORS["oru-acute"]())
    other = _segments(gen.GENERATORS["oru-uninterpretable"]())
    assert [s[0] for s in acute] == ["MSH", "PID", "PV1", "ORC", "OBR", "TQ1", *["OBX"] * 17, "NTE", "OBX"]
    assert {r["Segment"] for r in rows} == {s[0] for s in acute}
    assert {s[0] for s in other} <= {r["Segment"] for r in rows}
    first = {}
    for seg in acute:
        first.setdefault(seg[0], seg)
    checked = 0
    for r in rows:
        fixed = plain(r["Fixed value"])
        if not fixed:
            continue
        seg, number = plain(r["Field"]).split("-")
        assert first[seg][int(number)] == fixed, r["Field"]
        checked += 1
    assert checked >= 10
    assert all(seg[11] == "P" for seg in acute + other if seg[0] == "OBX")


def test_oru_obx_table_is_what_compose_oru_writes() -> None:
    rows = table(doc("hl7-interface.md"), "oru-obx")
    acute = [s for s in _segments(gen.GENERATORS["oru-acute"]()) if s[0] == "OBX"]
    assert [(r["OBX-2"], r["OBX-3"]) for r in rows] == [(s[2], s[3]) for s in acute]


def test_category_table_is_the_composer_categories() -> None:
    rows = table(doc("hl7-interface.md"), "categories")
    assert {plain(r["Category code (OBX-5.1)"]): (r["Text (OBX-5.2)"], r["OBX-8"]) for r in rows} == \
        {code: (text, flag) for code, (text, flag, _) in CATEGORIES.items()}


# --- operator guide --------------------------------------------------------------------------

def test_config_reference_lists_every_key_with_its_default() -> None:
    rows = table(doc("operator-guide.md"), "config-keys")
    defaults = Config().model_dump(mode="json")
    documented = {plain(r["Key"]): yaml.safe_load(plain(r["Default"])) for r in rows}
    expected = {f"{section}.{key}": value
                for section, keys in defaults.items() for key, value in keys.items()}
    assert documented == expected
    assert all(r["Meaning"] for r in rows)


def test_exit_code_table_matches_the_cli_and_the_unit() -> None:
    rows = table(doc("operator-guide.md"), "exit-codes")
    codes = {value for name, value in vars(cli).items() if name.startswith("EX_")} | {1}  # 1 = crash
    assert {int(r["Code"]) for r in rows} == codes
    unit = (REPO / "deploy" / "ecg-gateway.service").read_text()
    prevent = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.MULTILINE)
    assert prevent is not None
    no_restart = {int(r["Code"]) for r in rows if r["systemd"].startswith("no restart") and r["Code"] != "0"}
    assert no_restart == {int(x) for x in prevent.group(1).split()} == {cli.EX_USAGE, cli.EX_CONFIG}


def test_metric_table_is_every_metric_the_gateway_exports(sessions: sessionmaker[Session]) -> None:
    rows = table(doc("operator-guide.md"), "metrics")
    documented = {plain(r["Metric"]): r["Type"] for r in rows}
    exported = {m._name: m._type for m in vars(metrics).values()
                if hasattr(m, "_name") and hasattr(m, "_type")}
    families = QueueCollector(sessions).collect()  # a real migrated database
    exported.update({f.name: f.type for f in families})
    assert documented == exported


def _shell_commands(text: str) -> Iterator[list[str]]:
    """Every `ecg-gateway …` command line inside ```sh blocks."""
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split(" #", 1)[0]):
                words = shlex.split(part)
                if words and words[0].endswith("ecg-gateway") and words[0] != "ecg-gateway:0.1.0":
                    yield words[1:]


def test_every_documented_command_line_parses() -> None:
    parser = cli._parser()
    seen = set()
    for name in ("operator-guide.md", "admin.md"):
        for args in _shell_commands(doc(name)):
            parser.parse_args(args)  # SystemExit(2) on a wrong command or option
            seen.add(args[0] if args else "")
    assert {"serve", "db", "status", "check-config", "outbound", "triage", "jobs", "replay", "purge",
            "send-dicom", "send-hl7"} <= seen


def test_relative_links_and_anchors_resolve() -> None:
    def slug(heading: str) -> str:
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    for path in DOCS.glob("*.md"):
        for target, anchor in re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", path.read_text()):
            linked = DOCS / target
            assert linked.is_file(), f"{path.name}: {target}"
            if anchor:
                headings = {slug(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(), re.MULTILINE)}
                assert anchor in headings, f"{path.name}: {target}#{anchor}"
