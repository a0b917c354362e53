"""Aggregate cell results into tables, paired statistics, plots and a readable report.

How seeds are combined: each seed is a paired replicate (same fraction subset, same test cases
for every condition). Per seed we test the AUC difference with DeLong's test for paired ROC
curves and the AP difference with a label-stratified paired bootstrap; across seeds we test the
per-seed differences with a Wilcoxon signed-rank test (two-sided). p-values are Holm-corrected
over the condition pairs at each fraction, separately for each metric and test.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.study import stats
from shared.atomic import atomic_write_bytes, atomic_write_text

PHANTOM_NOTE = "Results on phantom data check the machinery, not clinical truth."


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def cell_metrics(r: dict[str, Any]) -> dict[str, Any]:
    y = np.asarray(r["test_labels"])
    s = np.asarray(r["test_scores"])
    sens, spec = stats.sens_spec_at(y, s, r["threshold"])
    return {
        "condition": r["condition"],
        "fraction": r["fraction"],
        "seed": r["seed"],
        "n_train": r["n_train"],
        "auc": stats.auc(y, s),
        "ap": stats.average_precision(y, s),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": r["threshold"],
    }


def summarise(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for m in metrics:
        groups[(m["condition"], m["fraction"])].append(m)
    rows = []
    for (cond, frac), ms in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row: dict[str, Any] = {
            "condition": cond,
            "fraction": frac,
            "seeds": len(ms),
            "n_train": ms[0]["n_train"],
        }
        for k in ("auc", "ap", "sensitivity", "specificity"):
            mean, sd = stats.summarize([m[k] for m in ms])
            row[f"{k}_mean"], row[f"{k}_sd"] = mean, sd
        rows.append(row)
    return rows


def comparisons(results: list[dict[str, Any]], n_boot: int = 2000) -> list[dict[str, Any]]:
    by = {(r["condition"], r["fraction"], r["seed"]): r for r in results}
    conds = sorted({r["condition"] for r in results})
    fracs = sorted({r["fraction"] for r in results})
    rows: list[dict[str, Any]] = []
    for f in fracs:
        frac_rows = []
        for a, b in itertools.combinations(conds, 2):
            seeds = sorted(s for (c, ff, s) in by if c == a and ff == f and (b, f, s) in by)
            if not seeds:
                continue
            d_auc, d_ap, p_delong, p_boot = [], [], [], []
            for s in seeds:
                ra, rb = by[(a, f, s)], by[(b, f, s)]
                if ra["test_ids"] != rb["test_ids"]:
                    raise ValueError(
                        f"cells {a}/{b} at {f} seed {s} were scored on different test cases"
                    )
                y = np.asarray(ra["test_labels"])
                sa, sb = np.asarray(ra["test_scores"]), np.asarray(rb["test_scores"])
                dl = stats.delong_paired(y, sa, sb)
                bs = stats.paired_bootstrap_ap(y, sa, sb, n_boot=n_boot, seed=s)
                d_auc.append(dl.diff)
                p_delong.append(dl.p_value)
                d_ap.append(bs.diff)
                p_boot.append(bs.p_value)
            t_auc = stats.seed_level_test(np.asarray(d_auc))
            t_ap = stats.seed_level_test(np.asarray(d_ap))
            frac_rows.append(
                {
                    "fraction": f,
                    "condition_a": a,
                    "condition_b": b,
                    "seeds": len(seeds),
                    "auc_diff_mean": t_auc.mean_diff,
                    "auc_diff_ci_low": t_auc.ci_low,
                    "auc_diff_ci_high": t_auc.ci_high,
                    "auc_seeds_a_better": t_auc.n_better,
                    "auc_p_seed_level": t_auc.p_value,
                    "auc_delong_p_per_seed": ";".join(f"{p:.4g}" for p in p_delong),
                    "auc_delong_significant_seeds": int(sum(p < 0.05 for p in p_delong)),
                    "ap_diff_mean": t_ap.mean_diff,
                    "ap_diff_ci_low": t_ap.ci_low,
                    "ap_diff_ci_high": t_ap.ci_high,
                    "ap_seeds_a_better": t_ap.n_better,
                    "ap_p_seed_level": t_ap.p_value,
                    "ap_bootstrap_p_per_seed": ";".join(f"{p:.4g}" for p in p_boot),
                }
            )
        for key in ("auc_p_seed_level", "ap_p_seed_level"):
            adj = stats.holm([r[key] for r in frac_rows])
            for r, p in zip(frac_rows, adj, strict=True):
                r[key + "_holm"] = p
        rows += frac_rows
    return rows


def _frac_label(f: float) -> str:
    from fractions import Fraction

    fr = Fraction(f).limit_denominator(64)
    return "1" if fr == 1 else f"{fr.numerator}/{fr.denominator}"


def plot(summary: list[dict[str, Any]], path: Path, title_note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    conds = sorted({r["condition"] for r in summary})
    for ax, metric in zip(axes, ("auc", "ap"), strict=True):
        for c in conds:
            rows = sorted((r for r in summary if r["condition"] == c), key=lambda r: r["fraction"])
            x = np.array([r["fraction"] for r in rows])
            m = np.array([r[f"{metric}_mean"] for r in rows])
            sd = np.nan_to_num(np.array([r[f"{metric}_sd"] for r in rows]))
            ax.plot(x, m, marker="o", label=c)
            ax.fill_between(x, m - sd, m + sd, alpha=0.15)
        ax.set_xscale("log", base=2)
        xs = sorted({r["fraction"] for r in summary})
        ax.set_xticks(xs, [_frac_label(v) for v in xs])
        ax.set_xlabel("fraction of external training data")
        ax.set_ylabel(metric.upper() + " (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"External test set — {title_note}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_outputs(results: list[dict[str, Any]], out: Path, phantom: bool) -> dict[str, Path]:
    """predictions.csv, metrics.csv, comparisons.csv, report.md, report.html (self-contained,
    the plot inline) and study.png in ``out``."""
    preds = [
        {
            "case": cid,
            "label": lab,
            "score": sc,
            "condition": r["condition"],
            "fraction": r["fraction"],
            "seed": r["seed"],
        }
        for r in results
        for cid, lab, sc in zip(r["test_ids"], r["test_labels"], r["test_scores"], strict=True)
    ]
    metrics = [cell_metrics(r) for r in results]
    summary = summarise(metrics)
    comps = comparisons(results)
    paths = {
        k: out / v
        for k, v in {
            "predictions": "predictions.csv",
            "metrics": "metrics.csv",
            "comparisons": "comparisons.csv",
            "report": "report.md",
            "report_html": "report.html",
            "plot": "study.png",
        }.items()
    }
    atomic_write_text(paths["predictions"], _csv(preds, list(preds[0])))
    cell_cols = list(metrics[0])
    summary_cols = list(summary[0])
    atomic_write_text(
        paths["metrics"],
        "# per cell\n"
        + _csv(metrics, cell_cols)
        + "# mean and sd over seeds\n"
        + _csv(summary, summary_cols),
    )
    atomic_write_text(paths["comparisons"], _csv(comps, list(comps[0])) if comps else "")
    note = PHANTOM_NOTE if phantom else "external institution data"
    plot(summary, paths["plot"], "phantom data" if phantom else "external data")
    atomic_write_text(paths["report"], render_report(summary, comps, note))
    from coordinator.study.report_html import render_report_html  # imports this module

    html = render_report_html(summary, comps, note, paths["plot"].read_bytes())
    atomic_write_text(paths["report_html"], html)
    return paths


@dataclass
class Section:
    """One part of the report, rendered alike as markdown (``render_report``) and HTML
    (``report_html``): a title, an optional paragraph, an optional table (``marked`` rows are
    the significant ones) and an optional list of statements."""

    title: str
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    marked: list[bool] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    paper_table: bool = False  # a condition x fraction table of mean ± sd (numbers aligned)


TITLE = "Source-free adaptation study"
PLOT_CAPTION = "AUC and AP against the fraction of external data"


def _how_seeds_are_combined() -> str:
    """The module docstring's paragraph on the statistics, as one sentence-cased line."""
    text = (__doc__ or "").split("How seeds are combined: ")[1].split("\n\n")[0]
    text = text.replace("\n", " ")
    return text[:1].upper() + text[1:]


def _diff_ci(r: dict[str, Any], metric: str) -> str:
    return (
        f"{r[f'{metric}_diff_mean']:+.3f} ({r[f'{metric}_diff_ci_low']:+.3f}, "
        f"{r[f'{metric}_diff_ci_high']:+.3f})"
    )


def report_sections(summary: list[dict[str, Any]], comps: list[dict[str, Any]]) -> list[Section]:
    """The paper-style tables, the paired comparisons and the significance statements."""
    fracs = sorted({r["fraction"] for r in summary})
    conds = sorted({r["condition"] for r in summary})
    cell = {(r["condition"], r["fraction"]): r for r in summary}
    auc_header = ["pretraining"] + [
        f"{_frac_label(f)} (n={cell[(conds[0], f)]['n_train']})"
        if (conds[0], f) in cell
        else _frac_label(f)
        for f in fracs
    ]
    sections = []
    for metric, title, header in (
        ("auc", "AUC on the external test set (mean ± sd over seeds)", auc_header),
        (
            "ap",
            "Average precision (mean ± sd over seeds)",
            ["pretraining"] + [_frac_label(f) for f in fracs],
        ),
    ):
        rows = []
        for c in conds:
            vals = []
            for f in fracs:
                r = cell.get((c, f))
                vals.append(f"{r[f'{metric}_mean']:.3f} ± {r[f'{metric}_sd']:.3f}" if r else "–")
            rows.append([c, *vals])
        sections.append(Section(title, header=header, rows=rows, paper_table=True))
    comp = Section(
        "Paired comparisons",
        text=_how_seeds_are_combined(),
        header=[
            "fraction",
            "A vs B",
            "ΔAUC (95% CI)",
            "seeds A better",
            "p (seeds, Holm)",
            "ΔAP (95% CI)",
            "p (seeds, Holm)",
        ],
    )
    significant = []
    for r in comps:
        comp.rows.append(
            [
                _frac_label(r["fraction"]),
                f"{r['condition_a']} vs {r['condition_b']}",
                _diff_ci(r, "auc"),
                f"{r['auc_seeds_a_better']}/{r['seeds']}",
                f"{r['auc_p_seed_level_holm']:.3g}",
                _diff_ci(r, "ap"),
                f"{r['ap_p_seed_level_holm']:.3g}",
            ]
        )
        comp.marked.append(r["auc_p_seed_level_holm"] < 0.05)
        if r["auc_p_seed_level_holm"] < 0.05:
            better = r["condition_a"] if r["auc_diff_mean"] > 0 else r["condition_b"]
            significant.append(
                f"at {_frac_label(r['fraction'])}, {better} has the higher AUC "
                f"({r['condition_a']} − {r['condition_b']} = "
                f"{r['auc_diff_mean']:+.3f}, Holm p = "
                f"{r['auc_p_seed_level_holm']:.3g})"
            )
    sections += [
        comp,
        Section(
            "Significant differences (seed level, Holm-corrected, α = 0.05)",
            items=significant or ["none"],
        ),
    ]
    attainable = _attainable_statements(comps)
    if attainable:
        sections.append(Section("What these seeds can show", items=attainable))
    return sections


def render_report(summary: list[dict[str, Any]], comps: list[dict[str, Any]], note: str) -> str:
    lines = [f"# {TITLE}", "", f"_{note}_", "", f"![{PLOT_CAPTION}](study.png)"]
    for s in report_sections(summary, comps):
        lines += ["", f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        if s.header:
            lines += ["| " + " | ".join(s.header) + " |", "|---|" + "---|" * (len(s.header) - 1)]
            lines += ["| " + " | ".join(r) + " |" for r in s.rows]
        lines += [f"- {i}" for i in s.items]
    return "\n".join(lines) + "\n"


def min_holm_wilcoxon_p(seeds: int, pairs: int) -> float:
    """The smallest Holm-adjusted p a two-sided exact Wilcoxon signed-rank test on ``seeds``
    paired differences can give among ``pairs`` comparisons: every seed agreeing gives
    2 / 2**seeds, and Holm multiplies the smallest p by the number of comparisons."""
    return min(1.0, pairs * 2.0 / 2.0**seeds)


def _attainable_notes(comps: list[dict[str, Any]]) -> list[str]:
    """The markdown lines of ``_attainable_statements`` under their heading (none: [])."""
    notes = [f"- {s}" for s in _attainable_statements(comps)]
    return ["", "## What these seeds can show", "", *notes] if notes else []


def _attainable_statements(comps: list[dict[str, Any]]) -> list[str]:
    """Say where no seed-level difference could have been significant, and what would do."""
    notes = []
    for f in sorted({r["fraction"] for r in comps}):
        rows = [r for r in comps if r["fraction"] == f]
        seeds, pairs = rows[0]["seeds"], len(rows)
        floor = min_holm_wilcoxon_p(seeds, pairs)
        if floor >= 0.05:
            need = next(n for n in range(seeds, 64) if min_holm_wilcoxon_p(n, pairs) < 0.05)
            notes.append(
                f"At {_frac_label(f)}, {seeds} seeds and {pairs} comparisons: the smallest "
                f"attainable Holm-adjusted Wilcoxon p is {floor:.3g}, so no difference can be "
                f"significant at the seed level there (even if every seed agrees); {need} seeds "
                "or fewer pre-registered comparisons would allow it. The per-seed DeLong tests "
                "and the confidence intervals above still show the size and direction."
            )
    return notes
