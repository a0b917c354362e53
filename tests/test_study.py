"""The study grid: config checks, nested stratified fractions, resumable cells, outputs."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from coordinator.cli.main import app as coordinator_app
from coordinator.study import run as study_run
from coordinator.study.config import load_study_config
from coordinator.study.splits import fraction_subsets, stratified_split
from shared.errors import EXIT_INTERNAL, InputError, ToolkitError
from shared.weights import load_weights
from tests.federation_support import make_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    return {
        "external": make_store(base / "external", 60, 1, "real"),
        "synthetic": make_store(base / "synthetic", 40, 2, "synthetic"),
        "base": base,
    }


def write_config(path: Path, stores, **overrides) -> Path:
    text = f"""
[study]
profile = "tiny"
external = "{stores["external"]}"
fractions = {overrides.get("fractions", "[0.25, 1.0]")}
seeds = 2
seeds_large = 1
small_fraction_max = 0.25
split = {{ train = 0.6, val = 0.2, test = 0.2, seed = 0 }}

[pretrain]
steps = 8
eval_every = 4

[finetune]
steps = 6
eval_every = 3

[conditions.none]
kind = "none"

[conditions.synthetic-bpmri]
kind = "pretrain"
cases = ["{stores["synthetic"]}"]

[conditions.synthetic-t2w]
kind = "{overrides.get("t2_kind", "pretrain")}"
cases = ["{stores["synthetic"]}"]
sequences = ["t2w"]
"""
    path.write_text(text)
    return path


def test_splits_are_stratified_nested_and_differ_between_seeds():
    y = [1] * 40 + [0] * 60
    split = stratified_split(y, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=3)
    assert not set(split.train) & set(split.val) and not set(split.train) & set(split.test)
    assert len(split.train) + len(split.val) + len(split.test) == 100
    for part in (split.train, split.test):
        rate = np.mean([y[i] for i in part])
        assert abs(rate - 0.4) < 0.03
    fr = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    a = fraction_subsets(y, split.train, fr, seed=0)
    b = fraction_subsets(y, split.train, fr, seed=1)
    for small, large in itertools.pairwise(fr):
        assert set(a[small]) <= set(a[large])
    assert a[1.0] == tuple(sorted(split.train))
    assert a[1 / 16] != b[1 / 16]
    pos = sum(y[i] for i in a[1 / 4])
    assert pos == round(0.25 * 24) and len(a[1 / 4]) - pos == round(0.25 * 36)


def test_study_runs_resumes_and_reports(stores, tmp_path, monkeypatch):
    cfg = load_study_config(write_config(tmp_path / "study.toml", stores))
    out = tmp_path / "out"
    partial = study_run.run_study(cfg, out, max_cells=4)
    assert len(partial) == 4
    done = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    calls = []
    real_run_cell = study_run.run_cell

    def counting(*args, **kwargs):
        calls.append(args[1].key)
        return real_run_cell(*args, **kwargs)

    monkeypatch.setattr(study_run, "run_cell", counting)
    results = study_run.run_study(cfg, out)
    n_cells = 3 * (2 + 1)
    assert len(results) == n_cells and len(calls) == n_cells - 4
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished cells untouched
    assert sorted((out / "pretrained").iterdir()) == [
        out / "pretrained" / "synthetic-bpmri",
        out / "pretrained" / "synthetic-t2w",
    ]
    from coordinator.study.report import write_outputs

    paths = write_outputs(results, out, phantom=True)
    rows = list(csv.DictReader(paths["predictions"].open()))
    test_n = len(json.loads((out / "split.json").read_text())["test"])
    assert len(rows) == n_cells * test_n
    # AUC in metrics.csv equals scikit-learn's on the written predictions.
    cell = [r for r in rows if r["condition"] == "none" and float(r["fraction"]) == 1.0]
    expected = roc_auc_score([int(r["label"]) for r in cell], [float(r["score"]) for r in cell])
    metrics = paths["metrics"].read_text().split("# mean")[0].splitlines()[1:]
    got = [
        m
        for m in csv.DictReader(metrics)
        if m["condition"] == "none" and float(m["fraction"]) == 1.0
    ]
    assert abs(float(got[0]["auc"]) - expected) < 1e-5
    comps = list(csv.DictReader(paths["comparisons"].open()))
    assert len(comps) == 2 * 3  # two fractions x three pairs
    assert all(0 <= float(c["auc_p_seed_level_holm"]) <= 1 for c in comps)
    report = paths["report"].read_text()
    assert "phantom data check the machinery" in report and "| none |" in report
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resumed_study_command_counts_only_new_cells_in_its_progress(stores, tmp_path):
    """`coordinator study` on a half-finished study: its progress lines say where it resumed,
    and its clock starts after pretraining, so the rate and ETA are the new cells' own."""
    p = write_config(tmp_path / "study.toml", stores)
    out = tmp_path / "out"
    study_run.run_study(load_study_config(p), out, max_cells=5)
    r = CliRunner().invoke(coordinator_app, ["study", "--config", str(p), "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "study cells:" in ln]
    assert lines[0].endswith("study cells: resumed from step 5 of 9"), lines
    assert "step 9/9 (100%)" in lines[-1], lines


def test_conditions_ready_now_run_first_and_the_study_finishes_later(stores, tmp_path):
    """`--condition` runs some conditions' cells (as the demo does while the federation runs),
    writes no report, and the full run after it keeps those cells and runs only the rest."""
    p = write_config(tmp_path / "study.toml", stores)
    out = tmp_path / "out"
    base = ["study", "--config", str(p), "--out", str(out)]
    r = CliRunner().invoke(coordinator_app, [*base, "--condition", "none", "--json"])
    assert r.exit_code == 0, r.output
    part = json.loads(r.stdout)
    assert part["cells"] == 3 and part["report"] is None  # 2 seeds at 0.25, 1 at 1.0
    made = sorted((out / "cells").rglob("*.json"))
    assert {f.relative_to(out / "cells").parts[0] for f in made} == {"none"} and len(made) == 3
    assert not (out / "pretrained" / "synthetic-bpmri").exists()
    assert not (out / "report.md").exists()
    stamps = {f: f.stat().st_mtime_ns for f in made}

    r = CliRunner().invoke(coordinator_app, base)
    assert r.exit_code == 0, r.output
    assert "resumed from step 3 of 9" in r.stderr
    assert (out / "report.md").is_file() and len(list((out / "cells").rglob("*.json"))) == 9
    assert {f: f.stat().st_mtime_ns for f in made} == stamps  # kept, not run again

    r = CliRunner().invoke(coordinator_app, [*base, "--condition", "nonee"])
    assert r.exit_code == 3 and "no condition 'nonee'" in r.stderr and "Traceback" not in r.output
    fresh = tmp_path / "fresh"  # a misspelt condition is refused before the folder is made
    r = CliRunner().invoke(coordinator_app, [*base[:-1], str(fresh), "--condition", "nonee"])
    assert r.exit_code == 3 and not fresh.exists()


def test_a_study_with_results_refuses_a_config_that_trains_its_cells_another_way(stores, tmp_path):
    """Finished cells are reused by condition, fraction and seed: a later run whose config
    would train them differently is refused (one line, exit 3), not reported beside them."""
    p = write_config(tmp_path / "study.toml", stores)
    out = tmp_path / "out"
    study_run.run_study(load_study_config(p), out, max_cells=2, only=["none"])
    p.write_text(p.read_text().replace("steps = 6", "steps = 12"))
    r = CliRunner().invoke(coordinator_app, ["study", "--config", str(p), "--out", str(out)])
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert "finetune differ" in r.stderr and "new output folder" in r.stderr
    assert len(list((out / "cells").rglob("*.json"))) == 2  # nothing trained the new way
    # A wider grid or another condition does not touch the finished cells.
    p.write_text(
        p.read_text().replace("steps = 12", "steps = 6").replace("[0.25, 1.0]", "[0.25, 0.5, 1.0]")
        + '\n[conditions.none-again]\nkind = "none"\n'
    )
    r = CliRunner().invoke(coordinator_app, ["study", "--config", str(p), "--out", str(out)])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('kind = "none"', 'kind = "magic"'), "unknown condition kind"),
        (lambda t: t.replace("[0.25, 1.0]", "[0.25, 1.5]"), "fractions must lie in"),
        (lambda t: t.replace("test = 0.2, ", ""), "split is missing 'test'"),
        (lambda t: t.replace("[study]", "[stud]"), "needs a [study] table"),
        (lambda t: t + "\n[conditions.x]\nkind = 'weights'\n", "needs weights"),
        (lambda t: t.replace('profile = "tiny"', 'profile = "tiny'), "not valid TOML"),
        (
            lambda t: t.replace("[study]", '[study]\nnetwork = "small-cnn-poool"'),
            "unknown network 'small-cnn-poool'",
        ),
    ],
)
def test_bad_config_gives_clear_error(stores, tmp_path, edit, message):
    p = write_config(tmp_path / "s.toml", stores)
    p.write_text(edit(p.read_text()))
    with pytest.raises(InputError, match=re.escape(message)):
        load_study_config(p)
    r = CliRunner().invoke(coordinator_app, ["study", "--config", str(p)])
    assert r.exit_code == 3 and "Traceback" not in r.output


def test_weights_that_do_not_fit_are_refused(stores, tmp_path):
    from shared.weights import save_weights

    save_weights(
        tmp_path / "w", {}, {"network": "small-cnn", "in_channels": 3, "grid_size": [32, 32, 16]}
    )
    p = write_config(tmp_path / "s.toml", stores, t2_kind="weights")
    p.write_text(
        p.read_text().replace(
            f'cases = ["{stores["synthetic"]}"]\nsequences',
            f'weights = "{tmp_path / "w"}"\nsequences',
        )
    )
    cfg = load_study_config(p)
    with pytest.raises(InputError, match="do not fit this study"):
        study_run.run_study(cfg, tmp_path / "out")


# --------------------------------------------------------------------------- federated condition


def write_fed_study(path: Path, stores, condition: str) -> Path:
    """The study of ``write_config`` at fraction 1 only (one seed there): random init against
    a federated condition."""
    text = write_config(path, stores, fractions="[1.0]").read_text()
    base = text.split("[conditions.synthetic-bpmri]")[0]
    path.write_text(base + f'[conditions.fed-synthetic]\nkind = "federated"\n{condition}\n')
    return path


def _fed_toml(tmp_path: Path, edit=lambda t: t) -> Path:
    from tests.federation_support import write_fed_toml

    ws = {k: tmp_path / k for k in ("aurora", "borealis", "target")}
    p = write_fed_toml(tmp_path / "fed.toml", ws, tmp_path / "fed-out")
    p.write_text(edit(p.read_text()))
    return p


def test_federated_condition_parses_with_the_federations_settings(stores, tmp_path):
    _fed_toml(tmp_path)
    cfg = load_study_config(write_fed_study(tmp_path / "s.toml", stores, 'federation = "fed.toml"'))
    cond = cfg.conditions[1]
    assert (cond.kind, cond.federation) == ("federated", (tmp_path / "fed.toml").resolve())
    assert cond.sequences == ("t2w", "hbv", "adc")


@pytest.mark.parametrize(
    ("condition", "edit", "message"),
    [
        ("", None, "missing required key 'federation'"),
        ('federation = "nowhere.toml"', None, "does not exist"),
        ("federation = 3", None, "federation must be str"),
        ('federation = "fed.toml"', lambda t: t.replace("simulation", "cloud", 1), "mode must be"),
        (
            'federation = "fed.toml"',
            lambda t: t.replace("rounds = 1\nlocal-steps", "rounds = 0\nlocal-steps", 1),
            "no pretraining rounds",
        ),
        ('federation = "fed.toml"', lambda t: t.replace('"tiny"', '"cpu"'), "grid"),
        ('federation = "fed.toml"\nsequences = ["t2w"]', None, "differ from the federation's"),
    ],
)
def test_bad_federated_condition_gives_clear_error(stores, tmp_path, condition, edit, message):
    _fed_toml(tmp_path, edit or (lambda t: t))
    p = write_fed_study(tmp_path / "s.toml", stores, condition)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_study_config(p)
    assert info.value.message.startswith("[conditions.fed-synthetic]")
    assert "\n" not in info.value.message
    r = CliRunner().invoke(coordinator_app, ["study", "--config", str(p)])
    assert r.exit_code == 3 and "Traceback" not in r.output


@pytest.mark.slow
def test_study_with_a_federated_condition_runs_the_federations_pretraining(
    stores, tmp_path, monkeypatch
):
    """The study runs the federation (Flower Simulation Engine, 2 sites + 1 target node) with
    its adaptation skipped, starts the condition's cells from OUT/pretrained, and reuses both
    on a rerun."""
    import torch

    from tests.federation_support import make_consortium, write_fed_toml

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    fed_out = tmp_path / "fed-out"
    ws = make_consortium(tmp_path / "consortium")
    write_fed_toml(tmp_path / "fed.toml", ws, fed_out, pretrain_rounds=1, adapt_rounds=2)
    cfg = load_study_config(write_fed_study(tmp_path / "s.toml", stores, 'federation = "fed.toml"'))
    out, logs = tmp_path / "out", []
    results = study_run.run_study(cfg, out, log=logs.append)

    state = json.loads((fed_out / "state.json").read_text())
    assert state["phases"] == ["pretrain"]  # the adaptation phase was skipped
    meta = json.loads((fed_out / "pretrained" / "config.json").read_text())
    assert (meta["network"], meta["in_channels"], meta["grid_size"]) == (
        cfg.network,
        3,
        [24, 24, 12],
    )
    assert any("running the federation's pretraining phase" in m for m in logs)
    assert sorted(r["condition"] for r in results) == ["fed-synthetic", "none"]
    fed_state = load_weights(fed_out / "pretrained")[0]
    start = study_run.pretrained_state(cfg, cfg.conditions[1], out, (24, 24, 12), logs.append)
    assert start is not None and all(torch.equal(start[k], v) for k, v in fed_state.items())

    def no_second_run(*args, **kwargs):
        raise AssertionError("the federation ran again")

    monkeypatch.setattr("coordinator.federation.runner.run_fed_toml", no_second_run)
    assert study_run.run_study(cfg, out) == results


def test_cells_in_parallel_workers_match_the_sequential_run(stores, tmp_path):
    """Two worker processes give each cell the scores the sequential run gives it (one torch
    thread each way, as in this suite), and a parallel run resumes like a sequential one."""
    cfg = load_study_config(write_config(tmp_path / "study.toml", stores))
    seq = study_run.run_study(cfg, tmp_path / "seq", max_cells=3)
    par = study_run.run_study(cfg, tmp_path / "par", max_cells=3, workers=2)
    key = lambda r: (r["condition"], r["fraction"], r["seed"])  # noqa: E731
    assert [key(r) for r in par] == [key(r) for r in seq]
    for a, b in zip(seq, par, strict=True):
        assert a["test_ids"] == b["test_ids"] and a["best_step"] == b["best_step"]
        np.testing.assert_allclose(a["test_scores"], b["test_scores"], atol=1e-5)
    seen = []
    rest = study_run.run_study(
        cfg, tmp_path / "par", workers=2, progress=lambda c, i, n: seen.append((i, n))
    )
    n_cells = 3 * (2 + 1)
    assert len(rest) == n_cells and [key(r) for r in rest[:3]] == [key(r) for r in seq]
    assert seen == [(i, n_cells) for i in range(1, n_cells + 1)]
    assert len(list((tmp_path / "par" / "cells").rglob("*.json"))) == n_cells


def test_a_failing_cell_in_a_worker_keeps_the_finished_ones_and_raises(stores, tmp_path):
    """A cell that fails in a worker (weights that do not fit the network) stops new cells
    from starting; the cell already running beside it is finished and recorded; then the
    worker's own error is raised."""
    cfg = load_study_config(write_config(tmp_path / "study.toml", stores))
    data, split = study_run._load_external(cfg, tmp_path / "out")
    states = {c.name: None for c in cfg.conditions} | {"synthetic-bpmri": {"bogus": np.zeros(1)}}
    cells = [study_run.Cell("synthetic-bpmri", 1.0, 0)] + [
        study_run.Cell("none", 1.0, s) for s in range(3)
    ]
    jobs = {n: (c, tuple(split.train)) for n, c in enumerate(cells)}
    recorded: list[int] = []
    with pytest.raises(RuntimeError, match="bogus"):
        study_run._run_parallel(
            cfg, data, split, states, jobs, 2, lambda n, res: recorded.append(n)
        )
    assert recorded == [1]  # cells 2 and 3 never started


def test_a_killed_worker_is_reported_as_a_machine_fault_and_keeps_finished_cells(stores, tmp_path):
    """A worker killed mid-study (the kernel's OOM killer, an operator) ends the study with
    one line and the internal exit code, not as bad input; the cells finished before stay."""
    import multiprocessing
    import signal

    cfg = load_study_config(write_config(tmp_path / "study.toml", stores))
    data, split = study_run._load_external(cfg, tmp_path / "out")
    states = {c.name: None for c in cfg.conditions}
    jobs = {n: (study_run.Cell("none", 1.0, n), tuple(split.train)) for n in range(4)}
    recorded: list[int] = []

    def record(n: int, res: dict) -> None:
        recorded.append(n)
        for child in multiprocessing.active_children():  # the pool's workers
            os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(ToolkitError, match="worker process died") as err:
        study_run._run_parallel(cfg, data, split, states, jobs, 2, record)
    assert not isinstance(err.value, InputError) and err.value.exit_code == EXIT_INTERNAL
    assert 1 <= len(recorded) <= 2  # cells that finished together with the first are kept


def test_a_pool_found_broken_at_submit_is_the_same_machine_fault(monkeypatch):
    """The other way a dead worker shows: the next cell's submit finds the pool broken."""
    import concurrent.futures
    from concurrent.futures.process import BrokenProcessPool

    class BrokenPool:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> BrokenPool:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def submit(self, *args: object) -> None:
            raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", BrokenPool)
    jobs = {0: (study_run.Cell("none", 1.0, 0), (0, 1))}
    with pytest.raises(ToolkitError, match="worker process died") as err:
        study_run._run_parallel(None, None, None, {}, jobs, 1, lambda n, res: None)  # type: ignore[arg-type]
    assert err.value.exit_code == EXIT_INTERNAL
    assert isinstance(err.value.__cause__, BrokenProcessPool)


def test_workers_are_capped_by_available_memory(monkeypatch):
    """Each worker copies the case tensors: no more of them than half the free memory holds,
    said in the log; never fewer than one, and never more than asked for."""
    gib = 2**30
    logs: list[str] = []
    monkeypatch.setattr(study_run, "available_memory_bytes", lambda: 16 * gib)
    per = 3 * gib + study_run.WORKER_OVERHEAD_BYTES
    assert study_run.affordable_workers(8, 3 * gib, logs.append) == int(8 * gib // per) == 2
    assert "2 cell(s) at a time, not 8" in logs[-1] and "3.0 GiB copy" in logs[-1]
    assert study_run.affordable_workers(8, 40 * gib, logs.append) == 1
    logs.clear()
    assert study_run.affordable_workers(2, 10 * 2**20, logs.append) == 2 and not logs
    monkeypatch.setattr(study_run, "available_memory_bytes", lambda: None)
    assert study_run.affordable_workers(4, 40 * gib, logs.append) == 4


def test_attainable_seed_level_p_matches_scipy_and_is_reported() -> None:
    """The floor the report states is what SciPy's exact Wilcoxon gives when every seed agrees."""
    from scipy.stats import wilcoxon

    from coordinator.study.report import _attainable_notes, min_holm_wilcoxon_p

    for seeds in (3, 8, 10):
        d = np.arange(1, seeds + 1) / 100.0  # every seed favours A, distinct magnitudes
        assert min_holm_wilcoxon_p(seeds, 1) == pytest.approx(wilcoxon(d).pvalue, abs=1e-12)
    assert min_holm_wilcoxon_p(8, 10) == pytest.approx(10 * 2 / 256)
    rows = [{"fraction": 0.0625, "seeds": 8} for _ in range(10)]
    notes = "\n".join(_attainable_notes(rows))
    assert "0.0781" in notes and "9 seeds" in notes  # 10 * 2 / 2**9 = 0.039
    assert _attainable_notes([{"fraction": 1.0, "seeds": 10} for _ in range(10)]) == []


def test_default_seeds_let_five_conditions_pass_holm_at_small_fractions(stores, tmp_path):
    """With the issue's 5 conditions (10 pairs), the default seed count must leave room for a
    seed-level difference to be significant; 8 seeds would not (floor 0.078)."""
    from coordinator.study.report import min_holm_wilcoxon_p

    p = write_config(tmp_path / "s.toml", stores)
    p.write_text(p.read_text().replace("seeds = 2\nseeds_large = 1\n", ""))
    cfg = load_study_config(p)
    assert cfg.seeds >= 8 and cfg.seeds_large >= 3
    assert min_holm_wilcoxon_p(cfg.seeds, 10) < 0.05


def test_default_eval_interval_follows_the_configured_length(stores, tmp_path):
    """Validation every steps // 12 of the configured run (not of the profile's default), so a
    longer fine-tuning is not stopped by the default patience after the profile's length."""
    text = write_config(tmp_path / "s.toml", stores).read_text()
    p = tmp_path / "long.toml"
    p.write_text(text.replace("steps = 6\neval_every = 3", "steps = 240"))
    cfg = load_study_config(p)
    assert (cfg.finetune.steps, cfg.finetune.eval_every) == (240, 20)
    assert cfg.pretrain.eval_every == 4  # set explicitly: kept
