"""After the demo: check its outputs independently and write ``DEMO.md`` and
``demo-summary.json`` (what ran, the results table, where everything is).

The checks re-verify every bundle against the coordinator's pinned keys, re-verify every site's
audit log (which the federation appended to after the exports), and require the study's and the
federation's metrics to be finite and within [0, 1] with every cell present.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from coordinator.demo.configs import CONDITIONS
from coordinator.demo.plan import DemoPlan
from coordinator.demo.run import SITE, Demo
from coordinator.study.report import cell_metrics, summarise
from coordinator.trust.importer import verify_against_trust
from shared.atomic import atomic_write_json, atomic_write_text
from shared.errors import NothingProducedError, ToolkitError

PHANTOM_NOTE = (
    "Phantom data: these figures check the machinery end to end, not clinical performance."
)


def check_outputs(demo: Demo) -> dict[str, Any]:
    """Every check's outcome; raises ``NothingProducedError`` naming the failed ones."""
    failures: list[str] = []
    bundles = {}
    for step, bundle in demo._bundles().items():
        try:
            _, site = verify_against_trust(Path(bundle), demo.coord)
            bundles[step] = {"bundle": bundle, "site": site, "verified": True}
        except ToolkitError as exc:
            bundles[step] = {"bundle": bundle, "verified": False, "error": str(exc)}
            failures.append(f"bundle {bundle} does not verify: {exc}")
    audits = {}
    for name, ws in demo.sites.items():
        res = demo.runner.run("checks", [*SITE, "audit", "verify", "-w", str(ws), "--json"], True)
        audits[name] = {"log": str(ws / "audit" / "audit.jsonl"), **res}
    study_dir = demo.coord / "study"
    cells = [json.loads(p.read_text()) for p in sorted((study_dir / "cells").rglob("*.json"))]
    expected = sum(
        (
            demo.plan.study_seeds
            if f <= min(demo.plan.study_fractions)
            else demo.plan.study_seeds_large
        )
        for f in demo.plan.study_fractions
    ) * len(CONDITIONS)
    if len(cells) != expected:
        failures.append(f"study has {len(cells)} cells, expected {expected}")
    summary = summarise([cell_metrics(c) for c in cells]) if cells else []
    for row in summary:
        for k in ("auc_mean", "ap_mean"):
            if not (math.isfinite(row[k]) and 0.0 <= row[k] <= 1.0):
                failures.append(f"study {row['condition']} f={row['fraction']}: {k} = {row[k]}")
    for name, ws in demo.sites.items():
        report = ws / "reports" / "fidelity" / "fidelity.md"
        if not report.is_file():
            failures.append(f"site {name}: no fidelity report at {report}")
    for name in ("report.md", "study.png", "metrics.csv", "comparisons.csv", "predictions.csv"):
        if not (study_dir / name).is_file():
            failures.append(f"study output missing: {study_dir / name}")
    fed_out = demo.coord / "fed-out"
    fed_rows = _read_csv(fed_out / "metrics.csv")
    rounds = demo.plan.fed_pretrain_rounds + demo.plan.fed_adapt_rounds
    if len(fed_rows) != rounds or not (fed_out / "final").is_dir():
        failures.append(f"federation: {len(fed_rows)} of {rounds} rounds, final model missing")
    for row in fed_rows:
        auc = _float(row.get("test-auc"))
        if auc is not None and not 0.0 <= auc <= 1.0:
            failures.append(f"federation round {row['round']}: test AUC {auc}")
    result = {
        "bundles": bundles,
        "audits": audits,
        "study": {"cells": len(cells), "expected_cells": expected, "summary": summary},
        "federation": {"rounds": fed_rows},
        "failures": failures,
    }
    if failures:
        atomic_write_json(demo.ws / "demo-summary.json", result)
        raise NothingProducedError(
            f"demo outputs failed {len(failures)} check(s): {failures[0]}",
            hint=f"all of them in {demo.ws / 'demo-summary.json'}",
        )
    return result


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def where(demo: Demo) -> dict[str, str]:
    """The paths a newcomer looks at first: only those that exist (a path printed must be
    there to open), so an entry whose files are all missing is left out."""
    sites = demo.sites.values()
    candidates = {
        "summary": [demo.ws / "DEMO.md"],
        "study report": [demo.coord / "study" / "report.md"],
        "study plot": [demo.coord / "study" / "study.png"],
        "federation metrics": [demo.coord / "fed-out" / "metrics.csv"],
        "federation plot": [demo.coord / "fed-out" / "metrics.png"],
        "bundles": [ws / "exports" for ws in sites],
        "audit logs": [ws / "audit" / "audit.jsonl" for ws in sites],
        "fidelity reports (stay on site)": [
            ws / "reports" / "fidelity" / "fidelity.md" for ws in sites
        ],
        "logs": [demo.ws / "logs"],
    }
    out = {}
    for key, paths in candidates.items():
        # DEMO.md is written after this listing, in the same call
        there = [str(p) for p in paths if p.exists() or p == demo.ws / "DEMO.md"]
        if there:
            out[key] = ", ".join(there)
    return out


def write_summary(demo: Demo, checks: dict[str, Any], seconds: float) -> dict[str, Any]:
    times = demo.state.close_invocation(seconds)
    st = demo.state.data
    record = {
        "plan": demo.plan.record(),
        "seconds": round(seconds, 1),  # this invocation's
        "total_seconds": times["total"],  # every invocation's (None: an earlier one unknown)
        "invocations": times["invocations"],
        "lanes_at_once": demo.lanes_at_once,
        "step_seconds": st["done"],
        "step_cpu_seconds": st.get("cpu", {}),  # user + system, the step's processes
        "outputs": st["outputs"],
        "checks": {k: v for k, v in checks.items() if k != "failures"},
        "where": where(demo),
        "note": PHANTOM_NOTE,
    }
    atomic_write_json(demo.ws / "demo-summary.json", record)
    atomic_write_text(demo.ws / "DEMO.md", render(demo, record))
    return record


def render_time_line(rec: dict[str, Any]) -> str:
    n, total, this = rec["invocations"], rec["total_seconds"], rec["seconds"]
    if n == 1:
        return f"Total time {this:.0f} s."
    earlier = f"{total:.0f} s in all" if total is not None else "earlier ones' time unknown"
    return f"Run in {n} invocations ({earlier}; the last, which finished it, {this:.0f} s)."


def render(demo: Demo, rec: dict[str, Any]) -> str:
    p = demo.plan
    lines = [
        f"# Consortium demo ({p.name}, profile `{p.profile}`)",
        "",
        f"_{PHANTOM_NOTE}_",
        "",
        f"Sites: {', '.join(f'{s.name} ({s.institution}, {s.cases} studies)' for s in p.sites)}; "
        f"external institution: {p.external_cases} studies. {render_time_line(rec)}",
        "",
        "## Study: AUC and AP on the external test split (mean ± sd over seeds)",
        "",
        *(
            [
                "The quick plan trains each classifier for "
                f"{p.study_pretrain_steps} (pretraining) and up to {p.study_finetune_steps} "
                f"(fine-tuning) steps on the small `{p.profile}` grid. At this size a "
                "condition's AUC moves by about 0.1 from run to run (each run draws its own "
                'split): read the table as "every step runs and the classifier learns", not '
                "as a comparison of conditions; the full demo (`coordinator demo`) trains on "
                "the `cpu` grid.",
                "",
            ]
            if p.name == "quick"
            else []
        ),
        "| condition | fraction | train cases | seeds | AUC | AP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rec["checks"]["study"]["summary"]:
        lines.append(
            f"| {r['condition']} | {r['fraction']:g} | {r['n_train']} | {r['seeds']} | "
            f"{r['auc_mean']:.3f} ± {_sd(r['auc_sd'])} | {r['ap_mean']:.3f} ± {_sd(r['ap_sd'])} |"
        )
    lines += [
        "",
        "Paired comparisons (DeLong, bootstrap, seed-level tests, Holm-corrected) are in the "
        "study report.",
        "",
        "## Federation (Flower simulation engine)",
        "",
        "| round | phase | accepted | test AUC | test AP |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rec["checks"]["federation"]["rounds"]:
        lines.append(
            f"| {r['round']} | {r['phase']} | {r['accepted']} | {_fmt(r.get('test-auc'))} | "
            f"{_fmt(r.get('test-ap'))} |"
        )
    lines += _worth_lines(p, rec["outputs"])
    lines += ["", "## Exports (signed, screened, verified again at the coordinator)", ""]
    for step, b in rec["checks"]["bundles"].items():
        sc = rec["outputs"].get(step, {}).get("screen")
        extra = (
            f"; PHI scan: {sc['phi_findings']} finding(s) in {sc['phi_files_scanned']} files; "
            f"memorisation: {sc['memorisation_flagged']} of {sc['memorisation_screened']} "
            f"flagged and replaced"
            if sc
            else ""
        )
        ok = "signature and hashes verified" if b["verified"] else "DID NOT VERIFY"
        lines.append(f"- `{step}`: {b['bundle']} ({ok}{extra})")
    lines += ["", "## Step times (s)", ""]
    if rec.get("lanes_at_once", 1) > 1:
        lines += [
            f"Up to {rec['lanes_at_once']} lanes ran side by side (each hospital's steps and "
            "the external institution's, sharing the cores), so their times overlap and add "
            "up to more than the total; the coordinator's steps ran after them (the "
            "study's conditions that need no federation, `study-ready`, beside the "
            "federation).",
            "",
        ]
    cpu = rec.get("step_cpu_seconds", {})
    lines += ["| step | seconds | CPU seconds |", "|---|---:|---:|"]
    lines += [f"| {k} | {v} | {cpu.get(k, '')} |" for k, v in rec["step_seconds"].items()]
    if cpu:
        lines += [
            "",
            f"CPU seconds (user + system, each step's processes): {sum(cpu.values()):.0f} for "
            f"the steps listed, on {len(os.sched_getaffinity(0))} core(s) (a failed attempt's "
            "and a step finished before CPU was recorded are not counted).",
        ]
    lines += ["", "## Where things are", ""]
    lines += [f"- {k}: {v}" for k, v in rec["where"].items()]
    return "\n".join(lines) + "\n"


def _worth_lines(p: DemoPlan, outputs: dict[str, Any]) -> list[str]:
    """Each site's fidelity-report diagnostics: were its synthetic cases worth exporting?"""
    lines = [
        "",
        "## Synthetic sets: worth exporting? (each site's fidelity report, before export)",
        "",
        "| site | label-fidelity AUC | held-out real AUC (cases) | TSTR AUC | train-real AUC | "
        "precision / recall (t2w, hbv, adc) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in p.sites:
        w = outputs.get(f"fidelity-{s.name}", {}).get("worth")
        if not w or "error" in w:
            lines.append(f"| {s.name} | {(w or {}).get('error', 'not run')} | | | | |")
            continue
        pr = "; ".join(
            "n/a" if v is None else f"{v[0]:.2f} / {v[1]:.2f}"
            for v in w["precision_recall"].values()
        )
        lines.append(
            f"| {s.name} | {_num(w['label_fidelity_auc'])} | {_num(w['heldout_real_auc'])} "
            f"({w['n_heldout']}) | "
            f"{_num(w['tstr_auc'])} | {_num(w['train_real_auc'])} | {pr} |"
        )
    lines += [
        "",
        "With a handful of held-out real cases the real references are coarse. How to read "
        "each figure: the report itself (`reports/fidelity/fidelity.md` in each site's "
        "workspace; it stays on site).",
    ]
    return lines


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _fmt(v: str | None) -> str:
    f = _float(v)
    return "" if f is None else f"{f:.3f}"


def _sd(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"
