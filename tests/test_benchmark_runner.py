"""The benchmark runner (``python -m benchmarks``): figures, table, skip logic, one real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import runner
from benchmarks.figures import Figure, extract, fmt

REPO = Path(__file__).resolve().parent.parent

# Shapes copied from benchmarks/results/*.json, trimmed to the keys the runner reads.
INGEST = {
    "config": {"cases": 50, "profile": "tiny", "repeat": 3},
    "scan": {"seconds": 7.44},
    "ours_conversion": {"seconds": 3.0},
    "ours_full_ingest": {"seconds": 4.06},
    "picai_prep": {"version": "2.1.13", "seconds": 10.6},
    "agreement": {"compared_volumes": 150, "geometry_and_voxels_agree": 150},
    "ratios": {"picai_over_ours_conversion": 1.0154, "picai_over_ours_full_ingest": 0.9218},
}
TRAINING_ROW = {
    "profile": "tiny",
    "device": "cpu",
    "autoencoder_batch_cases": 2,
    "autoencoder_s_per_step": 0.0502,
    "diffusion_batch": 4,
    "diffusion_s_per_step": 0.0300,
    "latent_volumes_per_s": 133.5,
    "peak_rss_gib": 0.522,
}
SAMPLING_COST = {
    "benchmark": "sampling_cost",
    "profile": "paper",
    "rows": [
        {"sampler": "rflow", "steps": 25, "cases": 2, "seconds_per_case": 0.5483},
        {"sampler": "ddpm", "steps": 1000, "cases": 2, "seconds_per_case": 14.143},
    ],
    "speedup_end_to_end": 25.8,
    "speedup_denoising_only": 32.9,
}
for _row, _denoise in zip(SAMPLING_COST["rows"], (0.4257, 14.0205), strict=True):
    _row["denoise_s_per_case"] = _denoise


def _kid(kid: float, lo: float, hi: float) -> dict[str, Any]:
    return {"kid": kid, "ci": [lo, hi]}


SAMPLING_SPEED = {
    "profile": "cpu",
    "rows": [
        {
            "role": "default",
            "sampler": "rflow",
            "steps": 25,
            "cases": 12,
            "seconds_per_case": 0.504,
            "speedup_vs_ddpm1000": 22.16,
            "kid": {s: _kid(5.0, 3.0, 7.0) for s in ("t2w", "hbv", "adc")},
            "kid_within_ddpm1000_interval": {"t2w": True, "hbv": True, "adc": False},
        },
        {
            "role": "paper baseline: DDPM 1000 steps",
            "sampler": "ddpm",
            "steps": 1000,
            "cases": 12,
            "seconds_per_case": 11.169,
            "speedup_vs_ddpm1000": 1.0,
            "kid": {s: _kid(7.8, 2.4, 15.5) for s in ("t2w", "hbv", "adc")},
            "kid_within_ddpm1000_interval": {"t2w": True, "hbv": True, "adc": True},
        },
    ],
}
CALIBRATION = {
    "cases": 280,
    "splits": 3,
    "seeds": 3,
    "auc_mean": 0.925,
    "auc_seed_sd_within_split": 0.015,
}


def _by_name(figs: list[Figure], start: str) -> Figure:
    return next(f for f in figs if f.name.startswith(start))


# --- figure extraction ----------------------------------------------------------------------
def test_ingest_figures_carry_peer_ratio_and_target() -> None:
    figs = extract("ingest_vs_picai_prep", INGEST)
    conv = _by_name(figs, "conversion")
    assert conv.value == pytest.approx(10.44)
    assert (conv.peer, conv.peer_value, conv.ratio, conv.met) == (
        "picai_prep dcm2mha 2.1.13",
        10.6,
        1.0154,
        False,  # issue 15's target is 2x
    )
    assert conv.target == "≥ 2×"
    assert _by_name(figs, "full ingest").met is False
    fast = json.loads(json.dumps(INGEST))
    fast["ratios"]["picai_over_ours_conversion"] = 2.1
    assert _by_name(extract("ingest_vs_picai_prep", fast), "conversion").met is True
    same = _by_name(figs, "volumes identical")
    assert (same.value, same.peer_value, same.met) == (150, 150, True)


def test_ingest_without_peer_time_has_no_ratio() -> None:
    rec = json.loads(json.dumps(INGEST))
    rec["picai_prep"] = {"version": "2.1.13", "error": "RuntimeError: boom"}
    rec["ratios"] = {"picai_over_ours_conversion": None, "picai_over_ours_full_ingest": None}
    figs = extract("ingest_vs_picai_prep", rec)
    assert _by_name(figs, "conversion").met is None
    assert _by_name(figs, "peer failed").name.endswith("RuntimeError: boom")


def test_generative_figures_have_no_peer_and_report_failed_rows() -> None:
    rec = {
        "rows": [
            TRAINING_ROW,
            "failed (exit 1): MemoryError",
            {"profile": "paper", "batches_tried": [{"batch": 1, "result": "failed (exit -9)"}]},
        ]
    }
    figs = extract("generative_training", rec)
    vols = _by_name(figs, "latent volumes/s (tiny")
    assert (vols.value, vols.peer, vols.ratio, vols.target) == (133.5, "no peer", None, "")
    assert _by_name(figs, "peak resident memory").unit == "GiB"
    assert _by_name(figs, "a profile failed").value is None
    assert "batch 1: failed (exit -9)" in _by_name(figs, "paper: no batch fitted").name


def test_sampling_cost_figures_against_ddpm_1000() -> None:
    e2e, denoise = extract("sampling_cost", SAMPLING_COST)
    assert (e2e.value, e2e.peer_value, e2e.ratio, e2e.target, e2e.met) == (
        0.5483,
        14.143,
        25.8,
        "≥ 50×",
        False,
    )
    assert e2e.peer == "DDPM-1000, same network"
    assert (denoise.ratio, denoise.met) == (32.9, None)


def test_sampling_speed_figures_speedup_and_kid_per_sequence() -> None:
    figs = extract("sampling_speed", SAMPLING_SPEED)
    speed = _by_name(figs, "end-to-end")
    assert (speed.ratio, speed.met, speed.peer_value) == (22.16, False, 11.169)
    adc = _by_name(figs, "KID adc")
    assert (adc.value, adc.peer_value, adc.ratio, adc.met) == (5.0, 7.8, None, False)
    assert "15.5" in adc.target
    assert _by_name(figs, "KID t2w").met is True
    assert not any(f.name.startswith("label-fidelity") for f in figs)  # older records lack it
    rec = json.loads(json.dumps(SAMPLING_SPEED))
    for row, auc, ci in zip(rec["rows"], (0.7, 0.9), ((0.5, 0.9), (0.75, 1.0)), strict=True):
        row["label_fidelity"] = {"auc": auc, "ci": list(ci)}
        row["label_fidelity_within_ddpm1000_interval"] = auc >= 0.75
    lf = _by_name(extract("sampling_speed", rec), "label-fidelity")
    assert (lf.value, lf.peer_value, lf.met) == (0.7, 0.9, False)
    assert "0.75" in lf.target


def test_sampling_speed_default_is_the_profiles_default_now() -> None:
    """A record measured before the cpu default became rflow-heun-3 reports that row."""
    rec = json.loads(json.dumps(SAMPLING_SPEED))
    heun = rec["rows"][0] | {
        "role": "rflow network",
        "sampler": "rflow-heun",
        "steps": 3,
        "seconds_per_case": 0.185,
        "speedup_vs_ddpm1000": 63.38,
    }
    rec["rows"].append(heun)
    speed = _by_name(extract("sampling_speed", rec), "end-to-end")
    assert (speed.value, speed.ratio, speed.met) == (0.185, 63.38, True)
    assert "rflow-heun-3 default" in speed.name


def test_sampling_speed_default_is_also_held_to_its_own_networks_25_steps() -> None:
    """The stricter gate: a few-step default against the same network's rflow-25 interval
    (the DDPM peer's can be wide enough to pass anything); rflow-25 as default has none."""
    assert not any("own network" in f.name for f in extract("sampling_speed", SAMPLING_SPEED))
    rec = json.loads(json.dumps(SAMPLING_SPEED))
    rec["rows"][0]["role"] = "rflow network"
    kids = {"t2w": _kid(6.9, 5.0, 9.0), "hbv": _kid(7.1, 5.0, 9.0), "adc": _kid(3.0, 2.0, 4.0)}
    heun = rec["rows"][0] | {"role": "default", "sampler": "rflow-heun", "steps": 3, "kid": kids}
    rec["rows"].append(heun)
    for row, auc, ci in zip(rec["rows"], (0.8, 0.6, 0.62), ((0.65, 0.95),) * 3, strict=True):
        row["label_fidelity"] = {"auc": auc, "ci": list(ci)}
        row["label_fidelity_within_ddpm1000_interval"] = True
    figs = extract("sampling_speed", rec)
    t2w, hbv = _by_name(figs, "KID t2w against"), _by_name(figs, "KID hbv against")
    assert (t2w.value, t2w.peer_value, t2w.met) == (6.9, 5.0, True)  # 6.9 <= 7.0
    assert (hbv.value, hbv.met) == (7.1, False) and "7" in hbv.target
    assert _by_name(figs, "KID adc against").met is True
    lf = _by_name(figs, "label-fidelity AUC against")
    assert (lf.value, lf.peer_value, lf.met) == (0.62, 0.8, False)  # below rflow-25's 0.65
    assert lf.peer == "rflow-25, same network" and "0.65" in lf.target


def test_calibration_figures_against_the_target_band() -> None:
    auc, sd = extract("phantom_calibration", CALIBRATION)
    assert (auc.value, auc.met, auc.target) == (0.925, False, "0.80–0.92")
    assert (sd.value, sd.met) == (0.015, True)


def test_generic_figures_win_over_a_known_extractor() -> None:
    rec = {
        "rows": ["ignored"],
        "figures": [
            {"name": "round overhead", "value": 1.5, "unit": "s"},
            {"name": "vs flwr", "value": 2.0, "unit": "s", "peer": "flwr", "peer_value": 3.0},
        ],
    }
    plain, peered = extract("generative_training", rec)
    assert (plain.name, plain.value, plain.unit, plain.peer) == (
        "round overhead",
        1.5,
        "s",
        "no peer",
    )
    assert (peered.peer, peered.peer_value) == ("flwr", 3.0)
    assert extract("some_new_bench", {"figures": []}) == []
    with pytest.raises(ValueError, match="name"):
        extract("some_new_bench", {"figures": [{"value": 1}]})


def test_fmt() -> None:
    assert [fmt(x) for x in (None, 3, 0.012345, 22.16, 1831.2, True)] == [
        "",
        "3",
        "0.0123",
        "22.2",
        "1831",
        "True",
    ]


# --- table ----------------------------------------------------------------------------------
def test_table_and_markdown_list_skips_and_failures_with_their_reason() -> None:
    outcomes = [
        runner.Outcome(
            "sampling_cost", "ok", seconds=12.0, figures=extract("sampling_cost", SAMPLING_COST)
        ),
        runner.Outcome(
            "phantom_calibration",
            "ok",
            seconds=1.0,
            figures=extract("phantom_calibration", CALIBRATION),
        ),
        runner.Outcome("study_grid", "skipped", "needs --coordinator-workspace WS"),
        runner.Outcome("broken", "failed", "ValueError: a | b", seconds=0.5),
        runner.Outcome("quiet", "ok", seconds=0.1),
    ]
    rows = runner.table_rows(outcomes)
    assert all(len(r) == len(runner.COLUMNS) for r in rows)
    assert rows[0][2:] == ["0.548 s", "DDPM-1000, same network", "14.1 s", "25.8×", "≥ 50×", "no"]
    report = {
        "mode": "quick",
        "date": "2026-11-26T00:00:00+00:00",
        "machine": {
            "cpus": 2,
            "gpu": None,
            "gpus": 0,
            "torch": "2.x",
            "python": "3.11",
            "load_average_at_start": [0.5, 0.5, 0.5],
        },
        "benchmarks": [
            {"name": o.name, "status": o.status, "seconds": o.seconds} for o in outcomes
        ],
    }
    md = runner.to_markdown(report, rows)
    assert "| benchmark | figure | ours | peer | peer value | ratio | target | met? |" in md
    assert "| study_grid | skipped: needs --coordinator-workspace WS |" in md
    assert "failed: ValueError: a \\| b" in md  # a pipe in a reason cannot break the table
    assert "| 0.80–0.92 | **no** |" in md
    assert "ran, but its JSON has no figures" in md
    assert "2 CPU cores, no GPU" in md


# --- skip logic -----------------------------------------------------------------------------
WS: dict[str, Path | None] = {"site_workspace": None, "coordinator_workspace": None}


def test_plan_skips_a_missing_module() -> None:
    reason = runner.plan(runner.Spec("no_such_benchmark", quick=()), True, False, WS)
    assert reason == "benchmarks/no_such_benchmark.py does not exist"


def test_plan_skips_without_workspace_and_passes_it_when_given(tmp_path: Path) -> None:
    spec = runner.Spec("sampling_speed", quick=("--n", "8"), workspace="site_workspace")
    assert runner.plan(spec, True, False, WS) == "needs --site-workspace WS"
    given = WS | {"site_workspace": tmp_path}
    assert runner.plan(spec, True, False, given) == ["--n", "8", "--workspace", str(tmp_path)]


def test_plan_study_grid_is_skipped_with_a_reason_either_way() -> None:
    spec = next(s for s in runner.SPECS if s.name == "study_grid")
    reason = runner.plan(spec, False, False, WS)
    assert reason in ("benchmarks/study_grid.py does not exist", "needs --coordinator-workspace WS")


def test_plan_modes_packages_and_gpu_sizes() -> None:
    spec = runner.Spec(
        "sampling_cost",
        quick=("--profile", "tiny"),
        full=("--profile", "cpu"),
        full_gpu=("--profile", "paper"),
    )
    assert runner.plan(spec, True, True, WS) == ["--profile", "tiny"]
    assert runner.plan(spec, False, False, WS) == ["--profile", "cpu"]
    assert runner.plan(spec, False, True, WS) == ["--profile", "paper"]
    slow = runner.Spec("phantom_calibration", quick=None)
    assert runner.plan(slow, True, False, WS) == "full mode only"
    assert runner.plan(slow, False, False, WS) == []
    needs = runner.Spec("sampling_cost", quick=(), requires="no_such_package_xyz")
    assert runner.plan(needs, True, False, WS) == "no_such_package_xyz is not installed"


def test_unregistered_benchmarks_are_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, text in {
        "new_bench.py": 'if __name__ == "__main__":\n    pass\n',
        "helper.py": "X = 1\n",
        "_private.py": 'if __name__ == "__main__":\n    pass\n',
        "runner.py": 'if __name__ == "__main__":\n    pass\n',
    }.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(runner, "BENCH_DIR", tmp_path)
    (found,) = runner.discovered_specs()
    assert (found.name, found.quick) == ("new_bench", None)
    assert "full mode only" in runner.plan(found, True, False, WS)


# --- running --------------------------------------------------------------------------------
def test_a_crashing_benchmark_fails_with_one_line(tmp_path: Path) -> None:
    out = runner.run_benchmark("no_such_module_xyz", [], tmp_path / "x")
    assert out.status == "failed"
    assert "No module named" in out.reason and "Traceback" not in out.reason
    assert (tmp_path / "x" / "stderr.txt").is_file()
    assert runner.exit_code([out]) == 1
    assert runner.exit_code([runner.Outcome("a", "skipped", "why"), runner.Outcome("b", "ok")]) == 0


def test_a_report_with_nothing_to_report_is_a_skip_and_keeps_the_earlier_report(
    tmp_path: Path,
) -> None:
    """A complete run asks synthetic_value for a report of the settings finished in its cache;
    with none there it is skipped with the reason, and an earlier report in --out survives."""
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "synthetic_value.json"
    earlier.write_text('{"settings": {"baseline": {}}}')
    args = ["--report-only", "--work", str(tmp_path / "empty-cache")]
    outcome = runner.run_benchmark("synthetic_value", args, out)
    assert outcome.status == "skipped", outcome.reason
    assert outcome.reason.startswith("no finished setting in ")
    assert "Traceback" not in (out / "stderr.txt").read_text()
    assert earlier.read_text() == '{"settings": {"baseline": {}}}'
    assert sorted(p.name for p in out.iterdir()) == ["stderr.txt", "stdout.txt", earlier.name]
    assert runner.exit_code([outcome]) == 0


def test_results_without_json_or_with_a_wrong_shape_fail(tmp_path: Path) -> None:
    empty = runner.Outcome("sampling_cost", "ok")
    runner.read_results(empty, tmp_path)
    assert (empty.status, empty.reason) == ("failed", "exited 0 but wrote no result JSON")
    (tmp_path / "sampling_cost_tiny_cpu.json").write_text(json.dumps({"rows": []}))
    wrong = runner.Outcome("sampling_cost", "ok")
    runner.read_results(wrong, tmp_path)
    assert wrong.status == "failed"
    assert wrong.reason.startswith("could not read figures from sampling_cost_tiny_cpu.json")


def test_unknown_only_name_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        runner.parse_args(["--only", "no_such_benchmark"])
    assert exc.value.code == 2


def test_quick_run_of_the_cheapest_benchmark(tmp_path: Path) -> None:
    """The real thing, once: ``python -m benchmarks --quick --only generative_training``."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "generative_training",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "benchmarks.json").read_text())
    assert report["mode"] == "quick" and report["machine"]["cpus"] >= 1
    (bench,) = report["benchmarks"]
    assert (bench["name"], bench["status"], bench["results"]) == (
        "generative_training",
        "ok",
        ["generative_training.json"],
    )
    names = [f["name"] for f in bench["figures"]]
    assert "latent volumes/s (tiny profile on cpu)" in names or any("cuda" in n for n in names)
    md = (out / "benchmarks.md").read_text()
    assert "| generative_training | latent volumes/s (tiny profile on" in md
    assert "latent volumes/s" in proc.stdout


def test_cpu_model_names_the_widest_vector_unit() -> None:
    from benchmarks.host import cpu_model

    amd = "processor\t: 0\nmodel name\t: AMD  EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
    intel = (
        "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512f amx_bf16 amx_tile\n"
        "processor\t: 1\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512f amx_bf16 amx_tile\n"
    )
    assert cpu_model(amd) == "AMD EPYC (avx2)"
    assert cpu_model(intel) == "Intel Xeon (amx_bf16)"
    assert cpu_model("") == "unknown CPU"
    described = runner.describe(
        {"cpus": 2, "cpu_model": "AMD EPYC (avx2)", "gpu": None, "torch": "2", "python": "3"}
    )
    assert described.startswith("2 CPU cores (AMD EPYC (avx2)), no GPU")


def test_the_readmes_benchmark_tables_are_generated_from_the_committed_run():
    from benchmarks import readme_tables

    assert readme_tables.main(["--check"]) == 0


def test_readme_tables_follow_the_run_results_and_refuse_a_readme_without_markers(tmp_path, capsys):
    import shutil

    from benchmarks import readme_tables

    run = tmp_path / "results" / "run"
    shutil.copytree(REPO / "benchmarks" / "results" / "one-run-2026-12-07", run)
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- benchmark-tables:begin runs=results/run -->\nstale\n"
        "<!-- benchmark-tables:end -->\nafter\n"
    )
    assert readme_tables.main(["--readme", str(readme), "--check"]) == 1
    assert readme_tables.main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- benchmark-tables:end -->\nafter\n")
    assert "stale" not in text and "Results: `results/run`" in text
    assert "| 1.29× | ≥ 2× | **no** |" in text  # full ingest: picai_prep 2.49 s / ours 1.93 s
    assert readme_tables.main(["--readme", str(readme), "--check"]) == 0

    # a figure changes in the run's own result file: the table follows, the check notices
    result = next((run / "ingest_vs_picai_prep").glob("*.json"))
    rec = json.loads(result.read_text())
    rec["picai_prep"]["seconds"] *= 2  # as if picai_prep had been twice as slow
    rec["ratios"]["picai_over_ours_full_ingest"] *= 2
    rec["ratios"]["picai_over_ours_conversion"] *= 2
    result.write_text(json.dumps(rec))
    assert readme_tables.main(["--readme", str(readme), "--check"]) == 1
    assert readme_tables.main(["--readme", str(readme)]) == 0
    assert "| 2.59× | ≥ 2× | yes |" in readme.read_text()

    readme.write_text(
        "<!-- benchmark-tables:begin runs=results/none -->\n<!-- benchmark-tables:end -->\n"
    )
    capsys.readouterr()
    assert readme_tables.main(["--readme", str(readme)]) == 3
    assert "results/none is not a run folder: it has no benchmarks.json" in capsys.readouterr().err

    readme.write_text("no markers here\n")
    capsys.readouterr()
    assert readme_tables.main(["--readme", str(readme)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: no '<!-- benchmark-tables:begin") and err.count("\n") == 1
