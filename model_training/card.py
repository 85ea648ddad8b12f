"""The model card: Markdown for people, JSON for machines, both from one results dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model_training.labels import mapping_markdown
from model_training.snomed import snomed_markdown

NAMES = ["normal", "abnormal_not_acute", "subacute", "acute"]

DEFINITIONS = """\
* **c-statistic (per category)**: one-vs-rest area under the ROC curve of that category's
  predicted probability (rank formula, ties count 1/2).
* **overall c**: the *unweighted mean of the four one-vs-rest c-statistics* (macro average).
  The JAHA paper does not define its "overall c" in the abstract; this is our definition.
* **PDI** (polytomous discrimination index, Van Calster et al., Stat Med 2012): pick one ECG
  from each of the 4 categories; PDI_i is the probability that the ECG truly in category i has
  the highest p_i of the four; PDI is the mean of PDI_i (chance = 0.25, perfect = 1).
  Computed exactly over all 4-tuples; ties share the win.
* **sensitivity, specificity, PPV, NPV**: one-vs-rest, of the *decided* category under the
  shipped policy, which is the daemon's `ecg_gateway/triage/decide.py`: acute when
  p_acute >= the acute threshold, else the most probable of the other categories (ties ->
  more urgent).
* **flag budget**: the acute threshold is the fold-9 quantile of p(acute) that flags that share
  of all fold-9 ECGs; the table reports, on the test sets, the acute sensitivity, the PPV and
  the share actually flagged at that threshold.
* **statement macro-AUC**: the mean one-vs-rest AUC of the statement head over the SCP
  statements present in the set (truth: the statement is listed for the record, any
  likelihood), as the PTB-XL benchmark scores its "all statements" task.
* **95% CI**: percentile bootstrap over records ({n_boot} resamples, seed {seed}); a resample
  in which a metric is undefined (e.g. no acute case drawn) is skipped for that metric.
* **calibration**: observed frequency vs mean predicted probability in 10 equal-count bins per
  category; ECE = count-weighted mean absolute gap; Brier = mean squared error of p_k.
"""


def _fmt(metric: dict[str, list], i: int = 0) -> str:
    v, lo, hi = metric["value"][i], metric["ci_low"][i], metric["ci_high"][i]
    if v is None:
        return "n/a"
    ci = f" ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{v:.3f}{ci}"


def metrics_markdown(res: dict[str, Any]) -> str:
    m = res["metrics"]
    lines = [f"n = {res['n']}; reference counts: " +
             ", ".join(f"{k} {v}" for k, v in res["class_counts"].items()), "",
             f"**Overall c = {_fmt(m['overall_c'])}; PDI = {_fmt(m['pdi'])}**", "",
             "| category | n | c-statistic | PDI_i | sensitivity | specificity | PPV | NPV |",
             "|---|---|---|---|---|---|---|---|"]
    for i, name in enumerate(NAMES):
        lines.append(f"| {name} | {res['class_counts'][name]} | {_fmt(m['c'], i)} | "
                     f"{_fmt(m['pdi_class'], i)} | {_fmt(m['sensitivity'], i)} | "
                     f"{_fmt(m['specificity'], i)} | {_fmt(m['ppv'], i)} | {_fmt(m['npv'], i)} |")
    lines += ["", "Confusion matrix (rows = reference, columns = decided):", "",
              "| reference \\ decided | " + " | ".join(NAMES) + " |",
              "|---" * (len(NAMES) + 1) + "|"]
    for name, row in zip(NAMES, res["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + " |")
    lines += ["", "Calibration: " + "; ".join(
        f"{name} ECE {res['calibration'][name]['ece'][0]:.3f}, Brier {res['calibration'][name]['brier'][0]:.3f}"
        for name in NAMES)]
    return "\n".join(lines)


def counts_markdown(counts: dict[str, dict[str, int]]) -> str:
    cols = NAMES + ["unlabelled", "total"]
    lines = ["| fold | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for fold, row in counts.items():
        lines.append(f"| {fold} | " + " | ".join(str(row.get(c, 0)) for c in cols) + " |")
    return "\n".join(lines)


def sources_markdown(sources: dict[str, dict[str, int]] | None) -> list[str]:
    """The statements that set each category's labels (all folds), as card lines."""
    if not sources:
        return []
    lines = [("Statements that set the labels, all folds (`python -m model_training labels --sources`; "
              "a record counts once for each statement of its category):"), "",
             "| category | statement (records) |", "|---|---|"]
    lines += [f"| {name} | " + ", ".join(f"{code} {n}" for code, n in codes.items()) + " |"
              for name, codes in sources.items()]
    return [*lines, ""]


def operating_points_markdown(rows: list[dict[str, Any]]) -> str:
    sets = [k for k in rows[0] if k not in ("target_sensitivity", "threshold", "rule", "shipped")]
    head = "| fold-9 target | threshold | " + " | ".join(
        f"{s} sens / spec / PPV / flagged" for s in sets) + " |"
    lines = [head, "|---|---|" + "---|" * len(sets)]
    for r in rows:
        cells = [f"{r[s]['sensitivity']:.3f} / {r[s]['specificity']:.3f} / {r[s]['ppv']:.3f} / "
                 f"{r[s]['flagged_fraction']:.2f}" for s in sets]
        target = f"{r['target_sensitivity']:.2f}" + (" (lower bound)" if r.get("rule") == "lower-bound" else "")
        shipped = " (shipped)" if r.get("shipped") else ""
        lines.append(f"| {target} | {r['threshold']:.4g}{shipped} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budgets_markdown(rows: list[dict[str, Any]]) -> str:
    sets = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    lines = ["| budget | threshold (fold 9) | " + " | ".join(
        f"{s}: sensitivity / PPV / flagged (n acute {rows[0][s]['n_acute']})" for s in sets) + " |",
        "|---|---|" + "---|" * len(sets)]
    for r in rows:
        cells = [" / ".join(_ci(r[s][k]) for k in ("sensitivity", "ppv", "flagged")) for s in sets]
        shipped = " (shipped)" if r.get("shipped") else ""
        lines.append(f"| {r['budget']:.0%}{shipped} | {r['threshold']:.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(m: dict[str, Any]) -> str:
    if m["value"] is None:
        return "n/a"
    ci = f" ({m['ci_low']:.3f}–{m['ci_high']:.3f})" if m.get("ci_low") is not None else ""
    return f"{m['value']:.3f}{ci}"


def statements_markdown(res: dict[str, Any] | None) -> list[str]:
    if not res:
        return ["This checkpoint has no statement head."]
    rows = res["per_statement"]
    lines = [f"**Macro-AUC {_ci(res['macro_auc'])}** over the {res['n_statements']} statements present in "
             f"fold 10 ({res['n_records']} records; {res['n_bootstrap']} bootstrap resamples).", "",
             "| statement | n | AUC | statement | n | AUC | statement | n | AUC |", "|---|---|---|" * 3 + ""]
    lines[-1] = "|---|---|---|---|---|---|---|---|---|"
    cells = [f"{r['code']} | {r['n']} | {r['auc']:.3f}" for r in rows]
    for i in range(0, len(cells), 3):
        chunk = cells[i:i + 3] + [" | | "] * (3 - len(cells[i:i + 3]))
        lines.append("| " + " | ".join(chunk) + " |")
    return lines


def fold9_markdown(f9: dict[str, Any]) -> str:
    return (f"Fold 9 (validation; every choice of threshold, window and member was made here): overall c "
            f"{f9['overall_c']:.4f}, PDI {f9['pdi']:.4f}, mean {f9['score']:.4f}; acute sensitivity "
            f"{f9.get('acute_sensitivity_budget_10pct', float('nan')):.3f} with "
            f"{f9.get('flagged_budget_10pct', float('nan')):.1%} flagged at the 10 % budget threshold "
            f"({f9['n_acute']} acute ECGs). The shipping rule (docs/decisions.md 38) compares these with v1's "
            "0.8201 and 0.878.")


def write_card(card: dict[str, Any], md_path: Path, json_path: Path) -> None:
    json_path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(card), encoding="utf-8")


def render_markdown(card: dict[str, Any]) -> str:
    t = card["thresholds"]
    ev = card["evaluation"]
    parts = [
        f"# Model card: {card['model_id']}",
        "",
        f"Checkpoint `ecg_gateway/triage/default_model.pt`, sha256 `{card.get('sha256', 'n/a')}`, "
        f"{card.get('checkpoint_bytes', 0) / 1e6:.1f} MB; "
        f"git revision of the code that trained it `{card['git_revision']}`; "
        f"label mapping `{card['mapping_version']}`; data manifest `{card['data_manifest_hash']}`.",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Limits",
        *[f"* {x}" for x in card["limitations"]],
        "",
        "## Model",
        card["model_description"],
        "",
        f"Decision policy: acute when p_acute >= **{t.get('acute', float('nan')):.4g}** "
        f"(chosen on PTB-XL fold 9: the threshold that {card['threshold_rule_text']}; "
        f"fold-9 sensitivity at this threshold {card['val_acute_sensitivity']:.3f}), else the most "
        "probable of the other categories (ties -> more urgent), as in ecg_gateway/triage/decide.py. "
        "`model.acute_flag_budget` picks another budget from the table below; `model.acute_threshold` "
        "sets a threshold outright.",
        "",
        "## Data",
        card["data_description"],
        "",
        f"Class counts per PTB-XL fold under `{card['mapping_version']}` (the labels evaluated on"
        + (" and trained on):" if card.get("trained_mapping_version", card["mapping_version"])
           == card["mapping_version"] else f"; the network was trained on "
           f"`{card['trained_mapping_version']}`):"),
        "",
        counts_markdown(card["class_counts_per_fold"]),
        "",
        "The same records under `ptbxl-triage-map-1.0` (v1's labels):",
        "",
        counts_markdown(card["class_counts_per_fold_mapping_1_0"]),
        "",
        *sources_markdown(card.get("label_sources")),
        "## Metrics",
        DEFINITIONS.format(n_boot=ev["ptbxl_fold10"]["n_bootstrap"], seed=ev["ptbxl_fold10"]["bootstrap_seed"]),
        "### PTB-XL fold 9 (validation)",
        "",
        fold9_markdown(ev["ptbxl_fold9"]),
        "",
        f"### PTB-XL fold 10 (test, patient-wise held out), labels `{card['mapping_version']}`",
        "",
        metrics_markdown(ev["ptbxl_fold10"]),
        "",
        "![ROC fold 10](report/roc_ptbxl_fold10.png) ![calibration fold 10](report/calibration_ptbxl_fold10.png)",
        "",
        "### PTB-XL fold 10, labels `ptbxl-triage-map-1.0` (v1's mapping, same predictions and policy)",
        "",
        metrics_markdown(ev["ptbxl_fold10_mapping_1_0"]),
        "",
        "### Acute flag budgets (threshold chosen on fold 9; acute flag = p_acute >= t; 95 % bootstrap CIs)",
        "",
        budgets_markdown(ev["flag_budgets"]),
        "",
        "### SCP statements, PTB-XL fold 10",
        "",
        *statements_markdown(ev.get("statements_fold10")),
        "",
        "### PhysioNet/CinC 2021 sample (external; Georgia, Chapman-Shaoxing/Ningbo, CPSC)",
        "",
        card["cinc_note"],
        "",
        metrics_markdown(ev["cinc_external"]),
        "",
        "![ROC CinC](report/roc_cinc_external.png) ![calibration CinC](report/calibration_cinc_external.png)",
        "",
        "### Acute operating points by sensitivity target (threshold chosen on fold 9, for comparison)",
        "",
        operating_points_markdown(ev["acute_operating_points"]),
        "",
        "### Against the targets (PTB-XL fold 10)",
        *[f"* {x}" for x in card["targets"]],
        "",
        "## Training",
        card["training_description"],
        "",
        "## Reproduce",
        "```",
        *card["commands"],
        "```",
        card["reproducibility"],
        "",
        f"## Label mapping `{card['mapping_version']}` (PTB-XL SCP statement → triage category)",
        card["mapping_rules"],
        "",
        mapping_markdown(),
        "",
        "Mapping 1.0 differs in: STE_ and INJAS/INJAL/INJLA/INJIN/INJIL acute, SBRAD < 40 bpm acute, and "
        "no NORM rule (`python -m model_training labels --mapping 1.0` prints its counts; "
        "`model_training/labels.py` holds both tables).",
        "",
        f"## SNOMED-CT mapping `{card['snomed_version']}` (CinC external set)",
        "",
        snomed_markdown(),
        "",
    ]
    return "\n".join(parts)
