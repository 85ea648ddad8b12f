"""Markdown for ``bench/run_all``'s results file, and the README's performance table.

Both read the JSON that run_all writes (one record per benchmark step, each with its
figures: ours median (min–max) over repeats, anchor, ratio, goal).
"""

from __future__ import annotations

from typing import Any

from bench._common import fmt_num, fmt_stat, md_table

SECTIONS = {"ingest": "DICOM ingest (durable C-STORE)", "mllp": "HL7 v2 MLLP ingest",
            "inference-1t": "Inference, 1 thread (what `serve --role all` uses on 2 cores)",
            "inference": "Inference, torch default threads, and the bf16 check",
            "oru": "ORU compose and PDF render", "e2e": "End to end (C-STORE -> ORU ACK)",
            "profile": "Profile of the end-to-end path", "scaling": "Scaling",
            "chaos": "Chaos (ECGs lost under kills)", "quality_gate": "Quality gate on real ECGs"}

#: Why a goal can be missed on this machine, keyed by figure id prefix (checked in order).
#: Shown only for goals this run missed; the numbers come from the run itself.
WHY = (
    ("e2e.", "End to end, one `serve --role all` is CPU-bound on 2 cores shared with the load generator: "
             "per ECG the daemon spends the CPU shown in the stage table (column 'daemon CPU ms/ECG'), and "
             "in one process the GIL serialises ingest, worker and sender. The stage table's p99 column and "
             "its 'slowest 5 %' rows show which stage makes the tail; the profile below shows where the CPU "
             "goes. Running worker and sender as their own processes (`serve --role`) is the lever when one "
             "process is the limit."),
    ("oru.render", "The page is rendered by reportlab in Python (outbound/render.py); its cost grows with "
                   "the points drawn, so a noisy ECG costs more than a clean one."),
    ("inference.", "The network is ~200 small operators per forward (widths 32-512, lengths down to 2-8 "
                   "samples at 100 Hz): the convs themselves run at 55-99 % of the matmul rate (the profile "
                   "tables below) and pre-activation/add/concat cost ~15 %; with one thread the same code "
                   "reaches >= 75 % of the one-thread ceiling, so the 2-thread gap is OpenMP fork/join on ops "
                   "too small to split. The verified bf16 path (`model.cpu_precision: bfloat16`, ~1.4-1.75x) "
                   "is the way up on this CPU; fp32 stays the default."),
    ("scale.pg.workers", "Worker processes share the 2 cores with PostgreSQL and the load generator."),
    ("scale.memory", "The growth used to be the model's per-batch-size state (TorchScript, oneDNN), built "
                     "as new batch sizes first appeared; the worker now builds it at load (decisions.md "
                     "37). Growth that remains is glibc free-list fragmentation (mallinfo2: in-use flat), "
                     "or batch sizes above the 64 warmed at load."),
    ("dicom.", "C-STORE rates are bounded by the Python SCU on 2 cores; ours also fsyncs every "
               "commit (synchronous=FULL), the anchors do not."),
    ("hl7.", "ACK latency includes decoding the whole ECG and an fsync'd commit per message; with 4 "
             "connections each message also waits for the others' commits (SQLite has one writer)."),
)


def chaos_report(raw: dict[str, Any], exit_status: Any) -> dict[str, Any]:
    """bench/chaos.py writes its own invariants record; turn it into figures like the others."""
    from bench._common import figure

    cmd = "python bench/chaos.py"
    lost = raw.get("lost", float("nan"))
    figures = [
        figure("chaos.lost", f"ECGs lost after an ACK, {raw.get('ecgs')} ECGs, {raw.get('kills')} kill -9",
               "ECGs", [lost], higher_is_better=False, goal="0 lost", goal_met=lost == 0, goal_value=0.0,
               command=cmd),
        figure("chaos.ack_p99", "ACK latency p99 under kills (restarts included)", "s",
               [raw.get("ack_latency_p99_s", float("nan"))], higher_is_better=False, command=cmd),
    ]
    rows = [[key, str(raw[key])] for key in ("ecgs", "acked", "kills", "kills_hit", "interrupted_sends", "lost",
                                             "duplicates_after_aa", "resends_after_faults", "outbound", "jobs",
                                             "ehr_verdicts", "cart_resends", "wall_s") if key in raw]
    return {"figures": figures, "tables": {"chaos": md_table(["figure", "value"], rows)},
            "notes": [f"invariants (no loss, one job per message, same bytes, one ORU per delivery): "
                      f"{'all hold' if exit_status == 0 else 'VIOLATED, see the log'}"]}


def _figures(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(step["name"], fig) for step in summary["steps"] for fig in step.get("report", {}).get("figures", [])]


def _cell_anchor(fig: dict[str, Any]) -> str:
    anchor = fig.get("anchor")
    return f"{fmt_stat(anchor)} ({anchor['name']})" if anchor else "–"


def _cell_ratio(fig: dict[str, Any]) -> str:
    return fmt_stat(fig["ratio"]) if fig.get("ratio") else "–"


def missed_by(fig: dict[str, Any]) -> str:
    """How far a missed goal is: the measured value against the goal's threshold."""
    goal = fig.get("goal", {})
    value, measured = goal.get("value"), goal.get("measured")
    if value is None or measured is None or measured != measured or not value:
        return ""
    share = measured / value
    if share < 1:
        return f"measured {fmt_num(measured)} against {fmt_num(value)}: {1 - share:.0%} short"
    return f"measured {fmt_num(measured)} against {fmt_num(value)}: {share - 1:.0%} over"


def machine_line(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    load0, load1 = m.get("load_avg_start", []), m.get("load_avg_end", [])
    others = m.get("others_running", 0)
    text = (f"**Machine:** {m['cores']} cores, {m['cpu']}, Python {m['python']}, torch {m.get('torch', '?')} "
            f"({m.get('torch_threads', '?')} torch threads by default; the worker runs inference as "
            f"`model.cpu_threads` single-threaded lanes, auto = all cores with `--role worker`, half with "
            f"`--role all`). Load average {'/'.join(map(str, load0))} at the "
            f"start, {'/'.join(map(str, load1))} at the end.")
    if others:
        text += (f" **{others} other busy process(es)** were running when the suite started, so wall-clock "
                 "figures are noisier than on an idle machine: each is the median (min–max) over repeats, and "
                 "every ratio pairs runs made at the same time under the same load.")
    else:
        text += " No other busy process when the suite started."
    return text


def render_markdown(summary: dict[str, Any]) -> str:
    out = [f"# ecg-gateway benchmark results — {summary['date']}", "",
           f"Written by `bench/run_all{' --smoke' if summary['smoke'] else ''}` at revision `{summary['git']}` "
           f"in {summary['wall_s'] / 60:.1f} min. Figures: ours as median (min–max) over repeats; the anchor "
           f"measured in the same run; ratio = ours / anchor per repeat.", "", machine_line(summary), ""]
    figures = _figures(summary)
    goals = [(s, f) for s, f in figures if f.get("goal")]
    out += ["## Goals", "", md_table(
        ["figure", "ours", "anchor", "ratio", "goal", "met"],
        [[f["name"], f"{fmt_stat(f['ours'])} {f['unit']}", _cell_anchor(f), _cell_ratio(f), f["goal"]["text"],
          {True: "yes", False: "**no**", None: "–"}[f["goal"]["met"]]] for _, f in goals]), ""]
    missed = [(s, f) for s, f in goals if f["goal"]["met"] is False]
    if missed:
        out += ["### Missed goals, by how much and why", ""]
        for _, f in missed:
            why = next((text for prefix, text in WHY if f["id"].startswith(prefix)), "")
            out.append(f"- **{f['name']}**: {fmt_stat(f['ours'])} {f['unit']} against {f['goal']['text']}"
                       f"{'; ' + missed_by(f) if missed_by(f) else ''}. {why}")
        out.append("")
    out += _profile_section(summary)
    for step in summary["steps"]:
        out += _step_section(step)
    out += _gpu_section(summary["gpu"])
    out += ["## Steps", "", md_table(["step", "command", "exit", "seconds"],
                                     [[s["name"], "`" + " ".join(a for a in s["argv"] if "/tmp" not in a) + "`",
                                       s["exit"], s["seconds"]] for s in summary["steps"]]), ""]
    return "\n".join(out)


def _profile_section(summary: dict[str, Any]) -> list[str]:
    step = next((s for s in summary["steps"] if s["name"] == "profile" and s.get("report")), None)
    if step is None:
        return []
    report = step["report"]
    top = report.get("top", [])
    lines = ["## Top costs on the end-to-end path", "",
             f"py-spy on `serve --role all` while {report.get('ecgs')} ECGs arrived at {report.get('rate')}/s "
             f"(90 % of the sustainable rate, PDF {'on' if report.get('pdf') else 'off'}), "
             f"{report.get('samples')} busy-thread samples:", ""]
    lines += [f"{i + 1}. **{t['name']}** — {t['share']:.0%} of the samples" for i, t in enumerate(top)]
    lines.append("")
    return lines


def _step_section(step: dict[str, Any]) -> list[str]:
    title = SECTIONS.get(step["name"], step["name"])
    lines = [f"## {title}", ""]
    report = step.get("report")
    if step["exit"] != 0:
        lines += [f"**This step failed (exit {step['exit']}).** Last lines of its output:", "", "```",
                  *step["log"].splitlines()[-25:], "```", ""]
    if report is None:
        if step["exit"] == 0:
            lines += ["```", *step["log"].strip().splitlines()[-40:], "```", ""]
        return lines
    figs = report.get("figures", [])
    if figs:
        lines += [md_table(["figure", "ours", "anchor", "ratio"],
                           [[f["name"] + (f" ({f['note']})" if f.get("note") else ""),
                             f"{fmt_stat(f['ours'])} {f['unit']}", _cell_anchor(f), _cell_ratio(f)]
                            for f in figs]), ""]
    for title_, text in report.get("tables", {}).items():
        lines += [f"**{title_}**", "", text, ""]
    lines += [f"- {note}" for note in report.get("notes", [])]
    lines.append("")
    return lines


def _gpu_section(gpu: dict[str, Any]) -> list[str]:
    rows = [[name, *[f"{v:,}" for v in values]] for name, values in gpu["rows"].items()]
    return ["## GPU inference (" + gpu["note"] + ")", "",
            f"`{gpu['command']}` on {gpu['device']}: ECG/s by batch size.", "",
            md_table(["model", *[f"batch {b}" for b in gpu["batches"]]], rows), ""]


#: The README's table: (figure id, short label). Missing ids are skipped.
HEADLINE = (
    ("dicom.assoc.4.rate.vs_dcmtk", "durable C-STORE/s, one association per ECG, 4 senders"),
    ("dicom.assoc.4.rate.vs_pynetdicom", "durable C-STORE/s, one association per ECG, 4 senders"),
    ("dicom.stream.1.rate.vs_dcmtk", "durable C-STORE/s, one association, 1 sender"),
    ("hl7.150kb.4.rate", "HL7 150 KB messages/s, 4 connections"),
    ("hl7.150kb.4.p99", "HL7 150 KB ACK p99, 4 connections"),
    ("inference.cpu.l1.b32", "inference ECG/s, batch 32, 1 lane (one core)"),
    ("inference.cpu.l2.b32", "inference ECG/s, batch 32, 2 lanes (a worker's default on 2 cores)"),
    ("inference.cpu.eager_t2.b32", "inference ECG/s, batch 32, eager rewrite on 2 threads (before lanes)"),
    ("inference.cpu.p2.b32", "inference ECG/s, batch 32, 2 single-threaded processes"),
    ("inference.cpu.l2.bf16_b32", "inference ECG/s, batch 32, 2 lanes, opt-in bf16"),
    ("chaos.lost", "ECGs lost under kill -9"),
    ("oru.render_500", "render the 12-lead PDF (500 Hz ECG), warm"),
    ("oru.pdf_kb_500", "size of the 12-lead PDF (500 Hz ECG)"),
    ("e2e.pdf.r5.p99", "acute ECG C-STORE -> ORU ACK p99 at 5/s (PDF on)"),
    ("e2e.nopdf.r5.p99", "acute ECG C-STORE -> ORU ACK p99 at 5/s (PDF off)"),
    ("e2e.pdf.sustainable", "sustainable ECG/s end to end (PDF on), against dcmtk storescp storing"),
    ("e2e.nopdf.sustainable", "sustainable ECG/s end to end (PDF off)"),
    ("e2e.split.sustainable", "sustainable ECG/s end to end (PDF on, worker and sender processes)"),
    ("scale.sqlite.100000.claim_p50", "queue claim p50, SQLite, 10^5 ECGs stored"),
    ("scale.postgresql.100000.claim_p50", "queue claim p50, PostgreSQL, 10^5 ECGs stored"),
    ("scale.memory.rss", "serve RSS after 10^4 ECGs"),
    ("scale.pg.workers.2", "triage ECG/s, 2 worker processes on PostgreSQL"),
)


def readme_table(summary: dict[str, Any], results_name: str) -> str:
    by_id = {f["id"]: (s, f) for s, f in _figures(summary)}
    rows = []
    for fid, label in HEADLINE:
        if fid not in by_id:
            continue
        _, f = by_id[fid]
        rows.append([label, f"`{f['command']}`", f"{fmt_stat(f['ours'])} {f['unit']}", _cell_anchor(f),
                     _cell_ratio(f)])
    m = summary["machine"]
    head = (f"Generated by `bench/readme_perf.py` from `bench/results/{results_name}` (`bench/run_all`, "
            f"{summary['date']}, revision `{summary['git']}`) on {m['cores']} cores ({m['cpu']}), "
            f"load average {m.get('load_avg_start', ['?'])[0]} at the start"
            f"{' with other busy processes, so figures are noisy' if m.get('others_running', 0) else ''}. "
            f"Figures are median (min–max) over repeats; the anchor ran in the same run; ratio = ours / anchor. "
            f"Goals, misses and the profile: the results file.")
    return head + "\n\n" + md_table(["figure", "command", "result", "anchor", "ratio"], rows) + "\n"


__all__ = ["render_markdown", "readme_table", "fmt_num"]
