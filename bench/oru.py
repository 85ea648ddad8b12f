"""Cost of the outbound path: ORU composer, 12-lead PDF render, and what the PDF adds to an
acute ORU end to end.

* compose: ``compose_oru`` without / with a 130 KB PDF (target < 10 ms). Anchor: hl7apy
  parsing the same ORU (what building it with hl7apy would roughly cost); ratio = ours / hl7apy.
* render: ``render_pdf`` of a real 12-lead ECG (pydicom's Mortara ELI 250 file, 1000 Hz, and
  the same decimated to 500 Hz) with a full header (rule, measurements, statements), cold
  (first call, includes the reportlab import) and warm; goals (issue #28): warm <= 5 ms and
  <= 60 KB at 500 Hz. The old matplotlib page was 22.5 ms and 117 KB on the same host.
* acute delay: a real Sender over SQLite and a loopback MLLP EHR; latency from the outbound
  row's commit (plus ``nudge``) to the ORU arriving at the EHR, with ``attach_pdf`` off and on.
  The difference is what rendering delays the acute message (target <= 200 ms; the sender
  also enforces it: past the budget the acute ORU goes without the PDF).

    python bench/oru.py            # full run (~30 s)
    python bench/oru.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom
from pydicom.data import get_testdata_file

from ecg_gateway.config import Config
from ecg_gateway.ecg import STANDARD_LEADS, Demographics, Ecg, pack_tracing
from ecg_gateway.evidence import DecisionRule, Measurements, Statement
from ecg_gateway.outbound.oru import MessageView, ResultView, compose_oru
from ecg_gateway.outbound.page import PageText, page_text

DICOM = get_testdata_file("waveform_ecg.dcm")
IDS = {"patient_id": "BENCH-1", "patient_name": "BENCH^PATIENT", "birth_date": "19700101",
       "sex": "F", "location": "ED-1", "placer_order": "PL-1", "filler_order": "FI-1",
       "accession": "ACC-1"}


def decode(content_type: str, raw: bytes) -> Ecg:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
    return Ecg(signal=ds.waveform_array(0).T / 1000.0,
               fs=float(ds.WaveformSequence[0].SamplingFrequency), leads=STANDARD_LEADS,
               source="dicom", uid=ds.SOPInstanceUID)


def timings(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def row(name: str, seconds: Sequence[float], scale: float = 1000.0) -> list[str]:
    return [name, str(len(seconds)), f"{statistics.median(seconds) * scale:.3f}",
            f"{pct(seconds, 95) * scale:.3f}", f"{max(seconds) * scale:.3f}"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(headers), *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def bench_compose(n: int, pdf: bytes) -> tuple[list[list[str]], float]:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    result = ResultView("acute", 0.01, 0.02, 0.04, 0.93, "ecg-resnet@1", "ab" * 32)
    message = MessageView(Demographics(**IDS), "1.2.3", datetime.now(UTC), datetime.now())
    cfg = Config(outbound={"host": "ehr"}).outbound
    now = datetime.now(UTC)
    plain = timings(lambda: compose_oru(result, message, "ECGGW0000000001", cfg, None, now), n)
    with_pdf = timings(lambda: compose_oru(result, message, "ECGGW0000000001", cfg, pdf, now), n)
    er7 = compose_oru(result, message, "ECGGW0000000001", cfg, None, now).decode()
    anchor = timings(lambda: parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT),
                     max(3, n // 20))
    rows = [row(f"compose_oru, no PDF ({len(er7)} B)", plain),
            row(f"compose_oru, {len(pdf) // 1024} KB PDF", with_pdf),
            row("anchor: hl7apy parse of the same ORU", anchor)]
    return rows, statistics.median(plain) / statistics.median(anchor)


def page() -> PageText:
    """The header of a full page: every field the results carry (issues #27, #28)."""
    result = ResultView(
        "acute", 0.01, 0.02, 0.04, 0.93, "ecg-resnet@1", "ab" * 32,
        statements=(Statement("STE", "ST elevation", 0.81), Statement("AFIB", "atrial fibrillation", 0.4)),
        measurements=Measurements(72, 160, 92, 380, 410, 402, 60, 45, 30),
        decision=DecisionRule("threshold", "ACUTE: p(acute) 0.93 \u2265 0.12, the threshold that flags "
                              "10 % of ECGs", 0.12, 0.1))
    return page_text(result, MessageView(Demographics(**IDS), "1.2.3", datetime.now(UTC), datetime.now()))


def bench_render(n: int) -> tuple[list[list[str]], bytes, bytes]:
    """Rows, the 1000 Hz page and the 500 Hz page."""
    from ecg_gateway.outbound.render import render_pdf

    ecg = decode("application/dicom", Path(DICOM).read_bytes())
    text = page()
    cold = time.perf_counter()
    pdf = render_pdf(ecg, text)
    cold_s = time.perf_counter() - cold
    half = Ecg(signal=ecg.signal[:, ::2], fs=500.0, leads=ecg.leads, source="dicom")
    pdf_500 = render_pdf(half, text)
    rows = [["render_pdf cold (first call: reportlab import)", "1", f"{cold_s * 1000:.3f}", "-", "-"],
            row(f"render_pdf warm, 12 x 10 s @ 1000 Hz ({len(pdf) // 1024} KB)",
                timings(lambda: render_pdf(ecg, text), n)),
            row(f"render_pdf warm, 12 x 10 s @ 500 Hz ({len(pdf_500) // 1024} KB)",
                timings(lambda: render_pdf(half, text), n))]
    return rows, pdf, pdf_500


async def _acute_latency(attach_pdf: bool, n: int, pdfs: list[bool]) -> list[float]:
    from sqlalchemy import select

    from ecg_gateway.mllp import serve_mllp
    from ecg_gateway.outbound.sender import Sender
    from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
    from ecg_gateway.store.models import Job, Message, Outbound, Result

    arrived: dict[str, float] = {}

    async def ehr(payload: bytes, peer: str) -> bytes:
        control = payload.split(b"\r", 1)[0].split(b"|")[9].decode()
        arrived[control] = time.perf_counter()
        pdfs.append(b"|ED|" in payload)
        return f"MSH|^~\\&|EHR|H|GW|H|20250101||ACK|A1|P|2.5.1\rMSA|AA|{control}\r".encode()

    server = await serve_mllp(ehr, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade_to_head(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        cfg = Config(outbound={"host": "127.0.0.1", "port": port, "attach_pdf": attach_pdf},
                     worker={"poll_interval_s": 60.0})
        sender = Sender(sessions, cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        await asyncio.sleep(1.5 if attach_pdf else 0.2)  # warm-up render happens at start
        raw = Path(DICOM).read_bytes()
        ecg = decode("application/dicom", raw)  # the worker's decode, kept on the result
        decoded = {"tracing": pack_tracing(ecg),
                   "acquired_at": ecg.acquired_at.isoformat() if ecg.acquired_at else None}
        latencies = []
        for i in range(n):
            control = f"ECGGW{i + 1:010d}"

            def insert(control: str) -> None:
                with sessions.begin() as s:
                    msg = Message(source="dicom", idempotency_key=control, raw=raw,
                                  sha256=hashlib.sha256(raw).hexdigest(),
                                  content_type="application/dicom", ecg_uid=control,
                                  identifiers=IDS, peer="bench")
                    s.add(msg)
                    s.flush()
                    job = Job(message_id=msg.id, state="done")
                    s.add(job)
                    s.flush()
                    res = Result(message_id=msg.id, job_id=job.id, category="acute",
                                 p_normal=0.01, p_abnormal_not_acute=0.02, p_subacute=0.04,
                                 p_acute=0.93, quality={}, model_id="m", model_sha256="ab" * 32,
                                 **decoded)
                    s.add(res)
                    s.flush()
                    s.add(Outbound(result_id=res.id, control_id=control, priority=0,
                                   max_attempts=3))

            await asyncio.to_thread(insert, control)
            t0 = time.perf_counter()
            sender.nudge()
            while control not in arrived:
                await asyncio.sleep(0.001)
            latencies.append(arrived[control] - t0)
            await asyncio.sleep(0.05)  # let the ACK be recorded before the next one
        stop.set()
        await task
        with sessions() as s:
            delivered = s.scalars(select(Outbound.state)).all()
        assert all(state == "delivered" for state in delivered), delivered
        engine.dispose()
    await asyncio.sleep(0.1)  # let the EHR side see the sender hang up before closing it
    server.close()
    await server.wait_closed()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few iterations (seconds)")
    parser.add_argument("--json", type=Path, help="write figures here (for bench/run_all)")
    args = parser.parse_args(argv)
    n_compose, n_render, n_e2e = (50, 3, 3) if args.smoke else (2000, 200, 15)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}"
          f"{' (smoke)' if args.smoke else ''}")
    render_rows, pdf, pdf_500 = bench_render(n_render)
    compose_rows, ratio = bench_compose(n_compose, pdf)
    pdfs: list[bool] = []
    off = asyncio.run(_acute_latency(False, n_e2e, []))
    on = asyncio.run(_acute_latency(True, n_e2e, pdfs))
    delay = statistics.median(on) - statistics.median(off)
    headers = ["what", "n", "median ms", "p95 ms", "max ms"]
    e2e = [row("acute ORU commit -> EHR, attach_pdf off", off),
           row("acute ORU commit -> EHR, attach_pdf on", on)]
    print(table(headers, compose_rows + render_rows + e2e))
    compose_ms = float(compose_rows[1][2])
    print(f"\ncompose with PDF: {compose_ms:.3f} ms median (target < 10 ms); "
          f"ratio compose / hl7apy parse (anchor) = {ratio:.4f}")
    print(f"PDF delay on the acute path: {delay * 1000:.1f} ms median (target <= 200 ms; "
          f"enforced by the sender's render budget); PDF attached to {sum(pdfs)}/{len(pdfs)} "
          "acute ORUs (the rest went without, past the budget)")
    render_ms, render_kb = float(render_rows[2][2]), len(pdf_500) / 1000
    print(f"render at 500 Hz: {render_ms:.2f} ms median (goal <= 5 ms), {render_kb:.1f} KB "
          "(goal <= 60 KB)")
    ok = compose_ms < 10 and delay < 0.2 and render_ms <= 5 and render_kb <= 60
    print("PASS" if ok else "FAIL")
    if args.json:
        from bench._common import figure, md_table, write_report

        cmd = "python bench/oru.py"
        figures = [
            figure("oru.compose_pdf", f"compose an ORU^R01 with a {len(pdf) // 1024} KB PDF", "ms", [compose_ms],
                   anchor=[float(compose_rows[2][2])], anchor_name="hl7apy parsing the same ORU",
                   higher_is_better=False, goal="< 10 ms", goal_met=compose_ms < 10, goal_value=10.0,
                   command=cmd),
            figure("oru.render_500", "render the 12-lead PDF, 10 s @ 500 Hz (warm, median)", "ms",
                   [render_ms], higher_is_better=False, goal="<= 5 ms", goal_met=render_ms <= 5,
                   goal_value=5.0, command=cmd),
            figure("oru.pdf_kb_500", "size of the 12-lead PDF, 10 s @ 500 Hz", "KB", [render_kb],
                   higher_is_better=False, goal="<= 60 KB", goal_met=render_kb <= 60, goal_value=60.0,
                   command=cmd),
            figure("oru.pdf_delay", "PDF delay on the acute ORU (attach_pdf on - off, median)", "ms",
                   [delay * 1000], anchor=[statistics.median(off) * 1000],
                   anchor_name="acute ORU commit -> EHR without PDF", higher_is_better=False,
                   goal="<= 200 ms", goal_met=delay < 0.2, goal_value=200.0, command=cmd),
        ]
        write_report(args.json, "oru", figures, smoke=args.smoke,
                     tables={"ORU compose and render": md_table(headers, compose_rows + render_rows + e2e)})
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
