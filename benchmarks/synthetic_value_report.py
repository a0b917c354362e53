"""The synthetic-value benchmark's outputs: ``synthetic_value.json``, ``synthetic_value.md``
(one row per setting and fraction, the diagnostics, the goal check, the validation-chosen best
setting) and ``synthetic_value.png`` (AUC against each lever, one line per condition, seed
bands). Phantom data: the figures check the machinery, not clinical truth."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

CONDITIONS = ("synthetic-bpmri", "reconstructed-source", "real-source", "none")
COLORS = {
    "synthetic-bpmri": "tab:red",
    "reconstructed-source": "tab:purple",
    "real-source": "tab:green",
    "none": "tab:gray",
}
LEVER_ORDER = (
    "count",
    "positives",
    "diffusion",
    "guidance",
    "pooling",
    "generator",
    "sampler",
    "combined",
)
PHANTOM_NOTE = "Phantom data: these figures check the machinery, not clinical truth."


def _frac(f: float) -> str:
    fr = Fraction(f).limit_denominator(64)
    return "1" if fr == 1 else f"{fr.numerator}/{fr.denominator}"


def _row(summary: list[dict[str, Any]], cond: str, f: float) -> dict[str, Any] | None:
    for r in summary:
        if r["condition"] == cond and abs(r["fraction"] - f) < 1e-9:
            return r
    return None


def _ms(r: dict[str, Any] | None, metric: str = "auc") -> str:
    if r is None:
        return "–"
    return f"{r[f'{metric}_mean']:.3f} ± {r[f'{metric}_sd']:.3f}"


def _num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _diag_cells(diag: dict[str, Any]) -> list[str]:
    """Label fidelity (synthetic | held-out real), TSTR (train synthetic | train real) and
    precision/recall averaged over the sequences, for the setting's first generator."""
    parts = [v for k, v in diag.items() if k != "status" and isinstance(v, dict)]
    if not parts:
        return [str(diag.get("status", "–"))] + ["–"] * 3
    d = parts[0]
    lf, ts, pr = d.get("label_fidelity", {}), d.get("tstr", {}), d.get("precision_recall", {})

    def mean(which: str, key: str) -> float | None:
        vals = [
            v[which][key]
            for q, v in pr.items()
            if q in ("t2w", "hbv", "adc") and isinstance(v, dict) and v.get(which)
        ]
        return sum(vals) / len(vals) if vals else None

    def judged(key: str) -> str:  # synthetic at the held-out size (held-out real baseline)
        syn = mean("synthetic_at_heldout_size", key)
        syn = mean("synthetic", key) if syn is None else syn  # as few synthetic as held-out
        ref = mean("real_heldout_baseline", key)
        return f"{_num(syn, 2)} ({_num(ref, 2)})"

    return [
        f"{_num(lf.get('auc_synthetic'), 2)} / {_num(lf.get('auc_real_heldout'), 2)}",
        f"{_num(ts.get('auc_train_synthetic'), 2)} / {_num(ts.get('auc_train_real'), 2)}",
        judged("precision"),
        judged("recall"),
    ]


def _memorised(memo: dict[str, Any]) -> str:
    parts = [v for v in memo.values() if isinstance(v, dict)]
    if not parts:
        return "–"
    return f"{sum(p['flagged'] for p in parts)} / {sum(p['screened'] for p in parts)}"


def exportable(rec: dict[str, Any]) -> bool:
    """A setting whose memorisation screen flagged no case: the only kind a site could export
    (the export gate refuses a bundle with flagged cases)."""
    memo = rec.get("memorisation", {})
    return not any(isinstance(v, dict) and v.get("flagged") for v in memo.values())


def best_on_validation(settings: dict[str, Any]) -> str | None:
    """The exportable setting whose synthetic condition has the highest mean
    external-validation AUC."""
    scored = [
        (rec["synthetic_val_auc_mean"], name)
        for name, rec in settings.items()
        if rec.get("synthetic_val_auc_mean") is not None and exportable(rec)
    ]
    return max(scored)[1] if scored else None


def sampler_effects(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ``combined-SAMPLER`` variant against the combined setting it re-samples: the
    synthetic condition's per-seed test AUC difference (variant - combined) per fraction with
    the seed-level Wilcoxon test (same seeds, same generators, same external split)."""
    from coordinator.study.stats import seed_level_test

    settings = rec["settings"]
    base = settings.get("combined")
    if base is None:
        return []
    out = []
    for name, s in settings.items():
        if not name.startswith("combined-"):
            continue
        for f in rec["size_record"]["fractions"]:
            keys = [
                k
                for k in s.get("per_seed_auc", {})
                if k.startswith("synthetic-bpmri|") and abs(float(k.split("|")[1]) - f) < 1e-9
            ]
            diffs = [
                s["per_seed_auc"][k] - base["per_seed_auc"][k]
                for k in keys
                if k in base.get("per_seed_auc", {})
            ]
            if not diffs:
                continue
            t = seed_level_test(diffs)
            out.append(
                {
                    "setting": name,
                    "fraction": f,
                    "auc_diff_mean": round(t.mean_diff, 4),
                    "p_seed_level": round(t.p_value, 4),
                    "seeds": t.n,
                    "better_seeds": t.n_better,
                }
            )
    return out


def render_markdown(rec: dict[str, Any]) -> str:
    fr = rec["size_record"]["fractions"]
    lines = [
        "# Synthetic value: does generation earn its place?",
        "",
        f"`python -m benchmarks.synthetic_value --size {rec['size']}` on "
        f"{rec.get('machine', '?')}, "
        f"{rec.get('date', '?')}; profile `{rec['size_record']['profile']}`, "
        f"{rec['size_record']['seeds']} paired seeds per fraction, external test split fixed. "
        + PHANTOM_NOTE,
        "",
        "AUC on the external test split (mean ± sd over seeds). p: seed-level Wilcoxon on "
        "per-seed AUC differences, Holm-adjusted over the 6 pairs of the 4 conditions. "
        "Goal (issue 12): synthetic ≥ reconstructed-source and not found worse, and synthetic > "
        "none with p < 0.05, at every fraction.",
        "",
        "| setting | lever | fraction | synthetic | reconstructed | real | none | "
        "p syn vs none | p syn vs rec | goal | val AUC syn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rec["settings"].items():
        summ, goal = s["summary"], s["goal"]
        for f in fr:
            g = goal.get(f"{f:g}")
            tests = (
                f"{g['vs_none_p_holm']:.3g} | {g['vs_reconstructed_p_holm']:.3g} | "
                + ("met" if g["met"] else "not met")
                if g
                else "– | – | controls not run"
            )
            lines.append(
                f"| {name} | {s['setting']['lever']} | {_frac(f)} | "
                + " | ".join(_ms(_row(summ, c, f)) for c in CONDITIONS)
                + f" | {tests} | {_num(s['synthetic_val_auc_mean'])} |"
            )
    lines += [
        "",
        "Diagnostics of the setting's (first) generator, from the site's fidelity report: "
        "label fidelity = AUC of a classifier trained on the site's real training cases, on the "
        "synthetic cases | on held-out real cases; TSTR = AUC on held-out real cases of a "
        "classifier trained on synthetic | on real training cases; precision / recall "
        "(Kynkäänniemi et al. 2019, k = 3) in the site's autoencoder feature space, mean over "
        "t2w/hbv/adc, of synthetic subsets as large as the held-out real set (in brackets: the "
        "held-out real cases themselves, the value a perfect generator would reach).",
        "",
        "| setting | synthetic cases | label fidelity syn / real | TSTR syn / real | "
        "precision | recall | memorised (flagged) | seconds (generate, diagnostics, study) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rec["settings"].items():
        n = sum(v.get("n", 0) for v in s["generation"].values() if isinstance(v, dict))
        secs = s.get("seconds", {})
        lines.append(
            f"| {name} | {n} | "
            + " | ".join(_diag_cells(s.get("diagnostics", {})))
            + f" | {_memorised(s.get('memorisation', {}))}"
            + f" | {secs.get('generate', '–')}, {secs.get('diagnostics', '–')}, "
            f"{secs.get('study', '–')} |"
        )
    best = best_on_validation(rec["settings"])
    if best:
        g = rec["settings"][best]["goal"]
        verdict = {True: "met", False: "not met", None: "not checked (controls not run)"}
        lines += [
            "",
            f"**Chosen on validation**: `{best}` (mean external-validation AUC of its synthetic "
            f"condition {rec['settings'][best]['synthetic_val_auc_mean']:.3f}); on the test "
            f"split the goal is **{verdict[g['met']]}**.",
        ]
    combo = rec.get("combined") or {}
    picked = ", ".join(f"{lv}: `{n}`" for lv, n in (combo.get("chosen") or {}).items())
    if combo.get("chosen_in"):
        lines += [
            "",
            f"**Combined setting**: the lever values chosen on validation by the run recorded "
            f"in `{combo['chosen_in']}` ({picked}), re-measured here without sweeping every "
            "lever again.",
        ]
    elif combo.get("chosen"):
        lines += [
            "",
            f"**Combined setting**: each lever's exportable value (no case flagged by the "
            f"memorisation screen) that beat the baseline's mean validation AUC "
            f"({combo['baseline_val_auc']:.3f}) on validation, combined ({picked})"
            + (f"; not run: {combo['why']}." if combo.get("why") else "."),
        ]
    elif combo.get("why"):
        lines += ["", f"**Combined setting**: not run ({combo['why']})."]
    effects = sampler_effects(rec)
    if effects:
        lines += [
            "",
            "**Few-step sampler at the combined setting** (the same generators and seeds; "
            "synthetic condition's test AUC, variant − combined, seed-level Wilcoxon):",
            "",
            "| setting | fraction | AUC difference | seeds better | p |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {e['setting']} | {_frac(e['fraction'])} | {e['auc_diff_mean']:+.3f} | "
            f"{e['better_seeds']} / {e['seeds']} | {e['p_seed_level']:.3g} |"
            for e in effects
        ]
    if rec.get("variants"):
        lines += ["", "Generator changes tried:", ""]
        lines += [f"- `{k}`: {v['why']} ({v['overrides']})" for k, v in rec["variants"].items()]
    stage = rec.get("stage_seconds", {})
    if stage:
        total = sum(v or 0 for v in stage.values())
        lines += [
            "",
            f"Run time of the cached stages (consortium, training, generation): {total / 60:.1f} "
            f"min; this invocation: {rec['this_run_seconds'] / 60:.1f} min.",
        ]
    return "\n".join(lines) + "\n"


def plot(rec: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings = rec["settings"]
    fr = rec["size_record"]["fractions"]
    base = settings.get("baseline")
    levers = [
        lv for lv in LEVER_ORDER if any(s["setting"]["lever"] == lv for s in settings.values())
    ]
    if not levers:
        levers = ["baseline"]
    fig, axes = plt.subplots(
        len(fr), len(levers), figsize=(max(3.2 * len(levers), 7.0), 3.0 * len(fr)), squeeze=False
    )
    for i, f in enumerate(fr):
        for j, lever in enumerate(levers):
            ax = axes[i][j]
            members = [
                (s["setting"]["value"], s)
                for s in settings.values()
                if s["setting"]["lever"] == lever
            ]
            if base is not None:
                members = [(rec.get("baseline_values", {}).get(lever, "baseline"), base), *members]
            x = np.arange(len(members))
            for cond in CONDITIONS:
                rows = [_row(s["summary"], cond, f) for _, s in members]
                m = np.array([r["auc_mean"] if r else np.nan for r in rows])
                sd = np.nan_to_num(np.array([r["auc_sd"] if r else np.nan for r in rows]))
                ax.plot(x, m, marker="o", color=COLORS[cond], label=cond, lw=1.5)
                ax.fill_between(x, m - sd, m + sd, color=COLORS[cond], alpha=0.12)
            # Flagged settings could never be exported: say so where the eye lands.
            ticks = [
                v.replace("+", "+\n") + ("" if exportable(s) else "\n(memorised)")
                for v, s in members
            ]
            ax.set_xticks(x, ticks, fontsize=8)
            ax.set_title(f"{lever} — fraction {_frac(f)}", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("external test AUC (mean ± sd)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Synthetic value per lever. " + PHANTOM_NOTE, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def figures(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """For the benchmark runner: the validation-chosen setting's gap to each control."""
    best = best_on_validation(rec["settings"])
    if best is None:
        return []
    s = rec["settings"][best]
    out = []
    for f in rec["size_record"]["fractions"]:
        g = s["goal"].get(f"{f:g}")
        if g is None:  # studied without the controls (--synthetic-only)
            continue
        out.append(
            {
                "name": f"synthetic - reconstructed-source AUC at {_frac(f)} "
                f"({best}, chosen on val)",
                "value": round(g["vs_reconstructed_diff"], 4),
                "unit": "AUC",
                "peer": "reconstructed-source",
                "target": ">= 0",
                "met": g["vs_reconstructed_diff"] >= 0,
            }
        )
        out.append(
            {
                "name": f"synthetic - none AUC at {_frac(f)} ({best}), Holm p "
                f"{g['vs_none_p_holm']:.3g}",
                "value": round(g["vs_none_diff"], 4),
                "unit": "AUC",
                "peer": "none",
                "target": "> 0, p < 0.05",
                "met": g["vs_none_diff"] > 0 and g["vs_none_p_holm"] < 0.05,
            }
        )
    return out


def write_report(rec: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rec["figures"] = figures(rec)
    rec["best_on_validation"] = best_on_validation(rec["settings"])
    rec["sampler_effects"] = sampler_effects(rec)
    paths = [out / "synthetic_value.json", out / "synthetic_value.md", out / "synthetic_value.png"]
    atomic_write_json(paths[0], rec)
    atomic_write_text(paths[1], render_markdown(rec))
    if not rec["settings"]:
        return paths[:2]
    plot(rec, paths[2])
    return paths
