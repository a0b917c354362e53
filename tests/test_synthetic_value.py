"""The synthetic-value benchmark (issue 12): its sweep runs end to end at the smallest size,
writes its JSON, table and plot, and resumes without redoing finished settings; its goal check
reads the study's own comparisons the way the issue states the goal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import synthetic_value as sv
from shared.errors import InputError


def _comps(f: float, d_rec: float, p_rec: float, d_none: float, p_none: float) -> list[dict]:
    return [
        {
            "fraction": f,
            "condition_a": "reconstructed-source",  # stored as a - b with a sorted first
            "condition_b": "synthetic-bpmri",
            "auc_diff_mean": -d_rec,
            "auc_p_seed_level_holm": p_rec,
        },
        {
            "fraction": f,
            "condition_a": "none",
            "condition_b": "synthetic-bpmri",
            "auc_diff_mean": -d_none,
            "auc_p_seed_level_holm": p_none,
        },
    ]


@pytest.mark.parametrize(
    ("d_rec", "p_rec", "d_none", "p_none", "met"),
    [
        (0.02, 0.8, 0.10, 0.01, True),  # at least as good as the control, clearly above none
        (-0.01, 0.9, 0.10, 0.01, False),  # mean below the control
        (0.02, 0.8, 0.10, 0.20, False),  # above none, but not significantly
        (0.02, 0.8, -0.05, 0.01, False),  # significantly *worse* than none
    ],
)
def test_goal_check_follows_the_issue(d_rec, p_rec, d_none, p_none, met):
    goal = sv.goal_check([], _comps(0.0625, d_rec, p_rec, d_none, p_none), [0.0625])
    assert goal["0.0625"]["met"] is met
    assert goal["met"] is met
    assert goal["0.0625"]["vs_reconstructed_diff"] == pytest.approx(d_rec)
    assert goal["0.0625"]["vs_none_diff"] == pytest.approx(d_none)


def test_goal_needs_every_fraction():
    comps = _comps(0.0625, 0.02, 0.8, 0.1, 0.01) + _comps(0.125, -0.02, 0.8, 0.1, 0.01)
    goal = sv.goal_check([], comps, [0.0625, 0.125])
    assert goal["0.0625"]["met"] and not goal["0.125"]["met"]
    assert not goal["met"]


def test_every_lever_of_the_issue_is_swept():
    levers = {s.lever for s in sv.settings_for(sv.SIZES["full"])}
    assert {"baseline", "count", "positives", "diffusion", "guidance", "pooling"} <= levers
    assert "sampler" in levers  # issue 15's few-step default is judged here too
    full = {s.name: s for s in sv.settings_for(sv.SIZES["full"])}
    assert {full["count-x4"].multiplier, full["count-x16"].multiplier} == {4, 16}
    assert len(full["pooled-2-sites"].generators) == 2
    long = next(s for s in full.values() if s.lever == "diffusion")
    assert long.generators[0].diffusion_steps >= 5 * sv.SIZES["full"].diffusion_steps
    assert sv.SIZES["full"].seeds >= 10


@pytest.mark.slow
def test_sweep_runs_end_to_end_and_resumes(tmp_path: Path):
    work, out = tmp_path / "work", tmp_path / "out"
    first = ["baseline", "count-x2"]
    sv.main(["--size", "smallest", "--work", str(work), "--out", str(out), "--only", *first])
    rec = json.loads((out / "synthetic_value.json").read_text())
    assert set(rec["settings"]) == set(first)
    for name in first:
        s = rec["settings"][name]
        conds = {r["condition"] for r in s["summary"]}
        assert conds == {"synthetic-bpmri", "reconstructed-source", "real-source", "none"}
        for r in s["summary"]:
            assert 0.0 <= r["auc_mean"] <= 1.0
            assert r["seeds"] == sv.SIZES["smallest"].seeds
        assert {c["fraction"] for c in s["comparisons"]} == set(sv.SIZES["smallest"].fractions)
        assert all(len(c["auc_delong_p_per_seed"].split(";")) == 2 for c in s["comparisons"])
    n1 = rec["settings"]["baseline"]["generation"]["aurora"]["n"]
    n2 = rec["settings"]["count-x2"]["generation"]["aurora"]["n"]
    assert n2 == 2 * n1 > 0
    assert len(list((work / "settings" / "count-x2" / "cases" / "aurora").iterdir())) == n2
    md = (out / "synthetic_value.md").read_text()
    assert "count-x2" in md and "not clinical truth" in md
    assert (out / "synthetic_value.png").read_bytes()[:4] == b"\x89PNG"

    # Resume: finished settings and stages are read back, not redone; a new one runs.
    done = {p: p.stat().st_mtime_ns for p in (work / "settings").glob("*/result.json")}
    cells = len(list((work / "study" / "cells").rglob("*.json")))
    sv.main(["--size", "smallest", "--work", str(work), "--out", str(out), "--only",
             "baseline", "pooled-2-sites", "sampler-rflow-heun-2"])  # fmt: skip
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())
    rec = json.loads((out / "synthetic_value.json").read_text())
    # the report keeps count-x2, measured before and left out of --only
    new = {"pooled-2-sites", "sampler-rflow-heun-2"}
    assert set(rec["settings"]) == {"baseline", "count-x2", *new}
    pooled = rec["settings"]["pooled-2-sites"]["generation"]
    assert set(pooled) == {"aurora", "borealis"}
    # the sampler lever re-samples the baseline's network with the few-step sampler, and the
    # cases' provenance says so
    heun = rec["settings"]["sampler-rflow-heun-2"]["generation"]["aurora"]
    assert (heun["sampler"], heun["sampling_steps"]) == ("rflow-heun", 2)
    case = next((work / "settings" / "sampler-rflow-heun-2" / "cases" / "aurora").iterdir())
    prov = json.loads((case / "case.json").read_text())["provenance"]
    assert (prov["sampler"], prov["steps"]) == ("rflow-heun", 2)
    # only the new settings' synthetic cells were added (2 fractions x 2 seeds each)
    assert len(list((work / "study" / "cells").rglob("*.json"))) == cells + 4 * len(new)

    # --report-only trains nothing and reports what is finished
    sv.main(["--size", "smallest", "--work", str(work), "--out", str(out), "--report-only"])
    rec = json.loads((out / "synthetic_value.json").read_text())
    assert set(rec["settings"]) == {"baseline", "count-x2", *new}
    assert not rec["complete"]


def _measured(val: float, flagged: int = 0) -> dict:
    return {"synthetic_val_auc_mean": val, "memorisation": {"aurora": {"flagged": flagged}}}


def test_combined_setting_takes_each_levers_best_exportable_value_on_validation():
    size = sv.SIZES["full"]
    results = {
        "baseline": _measured(0.60),
        "count-x4": _measured(0.62),
        "count-x16": _measured(0.65),
        "diffusion-3000": _measured(0.90, flagged=30),  # memorised: never eligible
        "generator-flip-augment": _measured(0.61),
        "guidance-1": _measured(0.55),  # below the baseline: guidance keeps the default
        "pooled-2-sites": _measured(0.63),
    }
    combo, why = sv.combined_setting(size, results)
    assert combo is not None and combo.name == "combined"
    assert why["chosen"] == {
        "count": "count-x16",
        "diffusion/generator": "generator-flip-augment",
        "pooling": "pooled-2-sites",
    }
    assert combo.multiplier == 16 and combo.guidance is None and combo.positive_fraction is None
    assert [g.name for g in combo.generators] == [
        f"{sv.SOURCE}-d{size.diffusion_steps}-flip-augment",
        f"{sv.SECOND}-d{size.diffusion_steps}-base",
    ]
    # one lever beating the baseline is that lever's own setting, not a combination
    alone, why = sv.combined_setting(size, {"baseline": _measured(0.6), "count-x4": _measured(0.7)})
    assert alone is None and "only count-x4" in why["why"]
    none, why = sv.combined_setting(size, {"count-x4": _measured(0.7)})
    assert none is None and "baseline" in why["why"]


def test_combined_setting_is_remeasured_with_each_few_step_sampler():
    size = sv.SIZES["full"]
    combo = sv.build_combined(size, {"count": "count-x4", "guidance": "guidance-1"})
    assert combo.sampler is None  # the generator's own default: the pinned baseline sampler
    variants = sv.combined_with_samplers(size, combo)
    assert [(v.name, v.sampler, v.sampling_steps) for v in variants] == [
        ("combined-rflow-heun-3", "rflow-heun", 3)
    ]
    # everything but the sampler is the combined setting's
    assert variants[0].generators == combo.generators
    assert (variants[0].multiplier, variants[0].guidance) == (4, 1.0)
    # a combination that already chose that sampler is not measured twice
    picked = sv.build_combined(size, {"count": "count-x4", "sampler": "sampler-rflow-heun-3"})
    assert (picked.sampler, picked.sampling_steps) == ("rflow-heun", 3)
    assert sv.combined_with_samplers(size, picked) == []


def test_sampler_effect_is_the_paired_per_seed_difference():
    from benchmarks.synthetic_value_report import sampler_effects

    def per_seed(aucs):
        return {f"synthetic-bpmri|0.0625|{k}": a for k, a in enumerate(aucs)} | {
            f"none|0.0625|{k}": 0.5 for k in range(len(aucs))
        }

    base = [0.70, 0.72, 0.68, 0.75, 0.71, 0.69, 0.73, 0.74, 0.70, 0.72]
    worse = [a - 0.05 + 0.001 * k for k, a in enumerate(base)]
    rec = {
        "size_record": {"fractions": [0.0625]},
        "settings": {
            "combined": {"per_seed_auc": per_seed(base)},
            "combined-rflow-heun-3": {"per_seed_auc": per_seed(worse)},
        },
    }
    (eff,) = sampler_effects(rec)
    assert eff["setting"] == "combined-rflow-heun-3" and eff["seeds"] == 10
    assert eff["auc_diff_mean"] == pytest.approx(-0.0455, abs=1e-4)
    assert eff["better_seeds"] == 0 and eff["p_seed_level"] < 0.01  # 10 of 10 worse
    rec["settings"]["combined-rflow-heun-3"]["per_seed_auc"] = per_seed(base)
    (same,) = sampler_effects(rec)
    assert same["auc_diff_mean"] == 0 and same["p_seed_level"] == 1.0


def test_combined_choice_can_be_taken_from_an_earlier_run(tmp_path):
    size = sv.SIZES["full"]
    earlier = tmp_path / "earlier.json"
    chosen = {"count": "count-x4", "guidance": "guidance-1", "pooling": "pooled-2-sites"}
    earlier.write_text(json.dumps({"combined": {"chosen": chosen}}))
    assert sv.chosen_in(earlier) == chosen
    combo = sv.build_combined(size, sv.chosen_in(earlier))
    assert combo.multiplier == 4 and combo.guidance == 1.0
    assert [g.site for g in combo.generators] == [sv.SOURCE, sv.SECOND]
    # the same choice measured in this run builds the same setting
    results = {"baseline": _measured(0.5)} | {n: _measured(0.6) for n in chosen.values()}
    assert sv.combined_setting(size, results)[0] == combo
    earlier.write_text(json.dumps({"combined": {"chosen": {"count": "count-x4"}}}))
    with pytest.raises(InputError, match="not a combination"):
        sv.chosen_in(earlier)
    earlier.write_text(json.dumps({"combined": {"chosen": chosen | {"count": "count-x99"}}}))
    with pytest.raises(InputError, match="unknown settings"):
        sv.build_combined(size, sv.chosen_in(earlier))
    with pytest.raises(InputError, match="no combined choice"):
        sv.chosen_in(tmp_path / "missing.json")


def test_synthetic_only_studies_just_the_synthetic_condition_and_reports_no_goal(tmp_path):
    from benchmarks.synthetic_value_report import figures, render_markdown

    size = sv.SIZES["smallest"]
    combo = sv.build_combined(size, {"count": "count-x2", "guidance": "guidance-1"})
    (tmp_path / "settings" / "combined").mkdir(parents=True)
    both = sv._study_toml(sv.Bench(tmp_path, size), combo).read_text()
    alone = sv._study_toml(sv.Bench(tmp_path, size, synthetic_only=True), combo).read_text()
    assert "[conditions.none]" in both and "[conditions.reconstructed-source]" in both
    assert "[conditions.none]" not in alone and "real-source" not in alone
    assert '[conditions."syn-combined"]' in alone
    row = {"condition": "synthetic-bpmri", "fraction": 0.25, "auc_mean": 0.7, "auc_sd": 0.1}
    rec = {
        "size": "smallest",
        "size_record": {"fractions": [0.25], "seeds": 2, "profile": "tiny"},
        "settings": {
            "combined": {
                "setting": {"lever": "combined", "value": "x2+1"},
                "summary": [row],
                "goal": {"met": None, "why": "controls not run (--synthetic-only)"},
                "synthetic_val_auc_mean": 0.6,
                "generation": {},
                "synthetic_only": True,
            }
        },
    }
    md = render_markdown(rec)
    assert "controls not run" in md and "0.700 ± 0.100" in md
    assert figures(rec) == []  # no goal figures without the controls


def test_synthetic_only_variant_generator_trains_its_own_autoencoder(tmp_path, monkeypatch):
    """With --synthetic-only nothing studies the site's baseline generator, so a variant's
    generator ingests the site's export and trains the whole model itself, under a name of its
    own; a full run in the same folder trains the site's baseline and a variant sharing its
    autoencoder, and never takes the synthetic-only generator for it."""
    calls: list[tuple[str, Path]] = []

    def ingest(b, site, ws):
        calls.append((f"ingest-{site}", ws))

    def train(b, g, ws):
        calls.append((f"train-{g.name}", ws))
        (ws / "models" / "generative").mkdir(parents=True, exist_ok=True)
        (ws / "models" / "generative" / "holdout.json").write_text('{"held_out": []}')
        return {}

    monkeypatch.setattr(sv, "_ingest_site", ingest)
    monkeypatch.setattr(sv, "_train_generator", train)
    size = sv.SIZES["smallest"]
    flip = sv.Generator("aurora", size.diffusion_steps, "flip-augment")
    base = sv.Generator("aurora", size.diffusion_steps)
    alone = sv.Bench(tmp_path, size, synthetic_only=True)
    own = sv.ensure_generator(alone, flip)
    assert own.name == f"{flip.name}-own-ae" and own != alone.site_ws("aurora")
    assert calls == [("ingest-aurora", own), (f"train-{flip.name}", own)]
    assert not alone.site_ws("aurora").exists()
    assert alone.generator_ws(flip) == own  # diagnostics and the screen find it too
    assert sv.ensure_generator(alone, flip) == own and len(calls) == 2  # resumed, not redone

    calls.clear()
    full = sv.Bench(tmp_path, size)  # the same work folder, now with the controls
    shared = sv.ensure_generator(full, flip)
    site = full.site_ws("aurora")
    assert shared == tmp_path / "generators" / flip.name != own
    assert calls == [
        ("ingest-aurora", site),
        (f"train-{base.name}", site),
        (f"train-{flip.name}", shared),
    ]
    # a later --synthetic-only run keeps the generator it trained before
    assert sv.Bench(tmp_path, size, synthetic_only=True).generator_ws(flip) == own
