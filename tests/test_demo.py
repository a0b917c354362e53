"""`coordinator demo`: the quick consortium end to end, checked from outside the demo.

The end-to-end test is what CI relies on to show that the whole system works: every bundle is
verified again here with the site's own public key file, every audit log with `site-agent audit
verify`, and the study's and federation's metrics are read from their CSV files.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.demo.configs import CONDITIONS, write_fed_toml, write_study_toml
from coordinator.demo.plan import QUICK
from coordinator.demo.run import Demo, Step
from coordinator.demo.steps import DemoState, Runner, StepFailed
from coordinator.demo.summary import render_time_line
from coordinator.federation.config import load_fed_toml
from coordinator.study.config import load_study_config
from shared.bundle.format import verify_bundle
from shared.bundle.signing import fingerprint, load_public_key
from shared.errors import InputError

BIN = Path(sys.executable).parent


def _cli(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # A safety bound only: the quick demo takes about 9 minutes on 2 idle AVX2 cores and took
    # 30 on a machine that shared them with a 2-core job; a busy CI machine must not fail it.
    return subprocess.run(
        [str(BIN / name), *args], capture_output=True, text=True, cwd=cwd, timeout=3600
    )


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_its_outputs_check_out(tmp_path: Path) -> None:
    ws = tmp_path / "demo"
    proc = _cli("coordinator", "demo", "--quick", "--workspace", str(ws), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    assert rec["plan"]["name"] == "quick"
    assert (ws / "DEMO.md").read_text().startswith("# Consortium demo (quick")

    # Every bundle verifies against its site's own public key file (not the demo's trust store).
    bundles = [o["bundle"] for o in rec["outputs"].values() if "bundle" in o]
    assert len(bundles) == 2 + 2  # two synthetic exports, real and reconstructed weights
    for b in bundles:
        site = "aurora" if "/aurora/" in b else "borealis"
        key = load_public_key(ws / "sites" / site / "keys" / "site-key.pub")
        vb = verify_bundle(Path(b), {fingerprint(key): key}, key_description=site)
        assert vb.manifest["site"] == site

    # Every audit log verifies; the federation appended the site nodes' replies to it.
    for site in ("aurora", "borealis"):
        sw = ws / "sites" / site
        p = _cli("site-agent", "audit", "verify", "-w", str(sw), "--json")
        assert p.returncode == 0, p.stderr
        events = [json.loads(ln)["event"] for ln in (sw / "audit" / "audit.jsonl").open()]
        assert any(e.startswith("export") for e in events), events
        assert any("federation" in e or "flower" in e for e in events), events

    # The study: every cell present, metrics finite and in [0, 1], report and plot written.
    study = ws / "coordinator" / "study"
    for name in ("report.md", "study.png", "comparisons.csv", "predictions.csv"):
        assert (study / name).stat().st_size > 0, name
    summary = rec["checks"]["study"]["summary"]
    assert {r["condition"] for r in summary} == set(CONDITIONS)
    assert {r["fraction"] for r in summary} == set(QUICK.study_fractions)
    for r in summary:
        assert 0.0 <= r["auc_mean"] <= 1.0 and 0.0 <= r["ap_mean"] <= 1.0
    with open(study / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    assert {p["condition"] for p in preds} == set(CONDITIONS)

    # The federation: every round recorded with a finite AUC, and a final model.
    fed = ws / "coordinator" / "fed-out"
    with open(fed / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["phase"] for r in rows] == ["pretrain"] * QUICK.fed_pretrain_rounds + [
        "adapt"
    ] * QUICK.fed_adapt_rounds
    assert all(math.isfinite(float(r["test-auc"])) for r in rows)
    assert (fed / "final" / "model.safetensors").is_file()

    # The study-grid benchmark runs on the demo's coordinator workspace (smallest seed counts).
    grid_cmd = [
        sys.executable, "-m", "benchmarks.study_grid", "--workspace", str(ws / "coordinator"),
        "--seeds", "1", "--seeds-large", "1", "--work", str(tmp_path / "sg"),
        "--out", str(tmp_path / "sg"),
    ]  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    bench = subprocess.run(grid_cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert bench.returncode == 0, bench.stderr[-2000:]
    # A timing must not resume an earlier study's cells: the same work folder is refused.
    again = subprocess.run(grid_cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert again.returncode == 3, again.stderr[-2000:]
    assert "holds an earlier study" in again.stderr and "Traceback" not in again.stderr
    grid = json.loads((tmp_path / "sg" / "study_grid.json").read_text())
    assert grid["cells"] == 5 * 5 and sum(grid["parts_s"].values()) <= grid["total_s"] + 1.0
    assert set(grid["pretraining_s"]) == {
        "none", "real-source", "reconstructed-source", "synthetic-bpmri", "synthetic-t2w"
    }  # fmt: skip

    # Every step's CPU is on record (the lanes overlap, so wall times alone hide the cost).
    assert set(rec["step_cpu_seconds"]) == set(rec["step_seconds"])
    assert rec["step_cpu_seconds"]["study"] > 1.0
    assert "CPU seconds" in (ws / "DEMO.md").read_text()

    # Each site ran its fidelity report (with the worth-exporting diagnostics) before export.
    logs = ws / "logs"
    for site in ("aurora", "borealis"):
        assert {f"generate-{site}", f"fidelity-{site}"} <= set(rec["step_seconds"])
        # run in this order (each log is last written when its command ends)
        ends = [
            (logs / f"{step}-{site}.log").stat().st_mtime
            for step in ("generate", "fidelity", "export-synthetic")
        ]
        assert ends == sorted(ends), ends
        report = ws / "sites" / site / "reports" / "fidelity"
        assert rec["outputs"][f"fidelity-{site}"]["report"] == str(report / "fidelity.md")
        diag = json.loads((report / "fidelity.json").read_text())["diagnostics"]
        assert "error" not in diag, diag
        assert diag["label_fidelity"]["n_synthetic"] == QUICK.generated_cases
        assert 0.0 <= diag["label_fidelity"]["auc_synthetic"] <= 1.0
        assert "## Is this synthetic set worth exporting?" in (report / "fidelity.md").read_text()
    assert "worth exporting?" in (ws / "DEMO.md").read_text()

    # Every path the summary names exists (issue 11, defect 7: it named fidelity reports that
    # the demo never wrote).
    on_disk = json.loads((ws / "demo-summary.json").read_text())
    listed = _paths_in(on_disk)
    assert str(ws / "sites" / "aurora" / "reports" / "fidelity" / "fidelity.md") in listed
    assert len(listed) > 10
    missing = [p for p in listed if not Path(p).exists()]
    assert not missing, missing

    # A rerun continues after the last finished step: here, nothing is left to redo.
    state = json.loads((ws / "demo-state.json").read_text())
    again = _cli("coordinator", "demo", "--quick", "--workspace", str(ws), "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((ws / "demo-state.json").read_text())["done"] == state["done"]
    rerun = json.loads(again.stdout)  # its total counts both invocations
    assert rerun["invocations"] == 2
    assert rerun["total_seconds"] == pytest.approx(rec["seconds"] + rerun["seconds"], abs=0.11)
    assert "Run in 2 invocations" in (ws / "DEMO.md").read_text()


def _paths_in(value: object) -> list[str]:
    """Every absolute path named in a JSON value (entries listing several are joined by ", ")."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    if isinstance(value, str):
        return [p for p in value.split(", ") if p.startswith("/")]
    return []


def test_demo_workspace_of_another_plan_is_refused_in_one_line(tmp_path: Path) -> None:
    DemoState(tmp_path, QUICK.record()).finish("phantom-aurora", 1.0)
    proc = _cli("coordinator", "demo", "--workspace", str(tmp_path))  # full plan
    assert proc.returncode == 3
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and "other settings" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_workspace_that_is_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    proc = _cli("coordinator", "demo", "--quick", "--workspace", str(f))
    assert proc.returncode == 3, proc.stderr
    assert "not a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_failed_step_names_its_exit_code_and_log(tmp_path: Path) -> None:
    runner = Runner(tmp_path, {})
    cmd = [
        sys.executable,
        "-c",
        "import sys; print('no such DICOM folder', file=sys.stderr); sys.exit(3)",
    ]
    with pytest.raises(StepFailed) as info:
        runner.run("ingest-external", cmd)
    assert info.value.exit_code == 3
    assert "no such DICOM folder" in info.value.message
    assert str(tmp_path / "logs" / "ingest-external.log") in str(info.value)


def test_a_step_is_charged_the_cpu_of_its_own_processes(tmp_path: Path) -> None:
    """wait4's usage covers the command and the children it waited for, and only this
    thread's commands: a busy step in another lane is not charged to this one."""
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < {}: pass')"
    in_child = (
        "import subprocess, sys; "
        f"subprocess.run([sys.executable, '-c', {burn.format(0.6)!r}], check=True)"
    )
    runner = Runner(tmp_path, {})
    other = threading.Thread(
        target=runner.run, args=("other", [sys.executable, "-c", burn.format(1.5)])
    )
    other.start()
    runner.take_cpu()
    runner.run("mine", [sys.executable, "-c", in_child])
    mine = runner.take_cpu()
    other.join()
    assert 0.6 <= mine < 1.4, mine
    assert runner.take_cpu() == 0.0  # taken: the next step starts from zero
    assert "CPU" in (tmp_path / "logs" / "mine.log").read_text()


def test_an_interrupted_step_lets_its_command_clean_up(tmp_path: Path) -> None:
    """Ctrl-C reaches the demo and its step's command alike; the command (e.g. the federation
    stopping its Flower servers) gets time to finish its cleanup before anything is killed."""
    child = (
        "import os, pathlib, time\n"
        f"pathlib.Path({str(tmp_path / 'pid')!r}).write_text(str(os.getpid()))\n"
        "try:\n"
        "    time.sleep(60)\n"
        "finally:\n"
        "    time.sleep(0.5)  # stopping its servers\n"
        f"    pathlib.Path({str(tmp_path / 'cleaned')!r}).write_text('yes')\n"
    )
    demo = (
        "import os, pathlib, signal, sys, threading, time\n"
        "from coordinator.demo.steps import Runner\n"
        f"pid = pathlib.Path({str(tmp_path / 'pid')!r})\n"
        "def ctrl_c():  # what a terminal does: SIGINT to the demo and to its command\n"
        "    while not pid.is_file():\n"
        "        time.sleep(0.05)\n"
        "    time.sleep(0.2)\n"
        "    os.kill(int(pid.read_text()), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "threading.Thread(target=ctrl_c, daemon=True).start()\n"
        "try:\n"
        f"    cmd = [sys.executable, '-c', {child!r}]\n"
        f"    Runner(pathlib.Path({str(tmp_path)!r}), {{}}).run('fed', cmd)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    proc = subprocess.run([sys.executable, "-c", demo], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert (tmp_path / "cleaned").read_text() == "yes"


def test_unreadable_state_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "demo-state.json").write_text("{not json")
    with pytest.raises(InputError):
        DemoState(tmp_path, QUICK.record())


@pytest.mark.parametrize(
    ("edit", "damage"),
    [
        (lambda st: [st], "not a JSON object"),
        (lambda st: st | {"done": []}, "'done' is not an object"),
        (lambda st: st | {"invocations": "garbage"}, "'invocations' is not a list"),
        (lambda st: st | {"invocations": [{"seconds": "1"}]}, "'invocations' is not a list"),
    ],
)
def test_a_damaged_state_is_an_input_error_naming_what(tmp_path: Path, edit, damage) -> None:
    state = {"plan": json.loads(json.dumps(QUICK.record())), "done": {}, "outputs": {}}
    (tmp_path / "demo-state.json").write_text(json.dumps(edit(state)))
    with pytest.raises(InputError, match=damage):
        DemoState(tmp_path, QUICK.record())


def test_written_configs_load_with_the_real_parsers(tmp_path: Path) -> None:
    coord = tmp_path / "coordinator"
    coord.mkdir()
    sites = {s.name: tmp_path / "sites" / s.name for s in QUICK.sites}
    fed = load_fed_toml(write_fed_toml(QUICK, coord, sites))
    assert [n["role"] for n in fed.sim_nodes] == ["site", "site", "target"]
    assert fed.sim_nodes[0]["workspace"] == str(sites["aurora"].resolve())
    assert fed.run_config.pretrain_rounds == QUICK.fed_pretrain_rounds
    imp = coord / "imports" / "aurora"
    fed_toml = coord / "fed.toml"
    cfg = load_study_config(
        write_study_toml(
            QUICK, coord, "aurora", imp / "r", imp / "c", [imp / "s", coord / "b" / "s"], fed_toml
        )
    )
    assert tuple(c.name for c in cfg.conditions) == CONDITIONS
    by = {c.name: c for c in cfg.conditions}
    assert by["synthetic-t2w"].sequences == ("t2w",)
    # the synthetic conditions pool every site's cases (issue 12's best setting)
    pooled = ((imp / "s").resolve(), (coord / "b" / "s").resolve())
    assert tuple(by["synthetic-bpmri"].cases) == pooled == tuple(by["synthetic-t2w"].cases)
    assert by["real-source"].weights == (imp / "r").resolve()
    assert cfg.fractions == QUICK.study_fractions
    assert by["federated-synthetic"].kind == "federated"


def test_lanes_are_independent_chains_and_cover_every_step(tmp_path: Path) -> None:
    demo = Demo(QUICK, tmp_path / "ws")
    lanes = demo.lanes()
    names = [[st.name for st in lane] for lane in lanes]
    flat = [n for lane in names for n in lane]
    assert len(flat) == len(set(flat))  # no step in two lanes
    tail = [st.name for st in demo.coordinator_steps()]
    assert [st.name for st in demo.steps()] == flat + tail
    assert tail == ["trust", "import", "federate", "study-ready", "study"]
    assert [st.name for st in demo.coordinator_steps() if st.with_previous] == ["study-ready"]
    assert names[-1] == ["phantom-external", "ingest-external"]
    for site, lane in zip(QUICK.sites, names, strict=False):
        # a hospital's chain, in the order a site works: data, model, review, export, audit
        order = [f"{k}-{site.name}" for k in ("phantom", "train", "generate", "fidelity")]
        order += [f"export-synthetic-{site.name}", f"audit-{site.name}"]
        assert [n for n in lane if n in order] == order
        assert all(n.endswith(site.name) for n in lane)


def _fake_demo(tmp_path: Path, fail: str | None = None) -> tuple[Demo, list[tuple]]:
    """The quick plan's demo with its lanes replaced by steps that record when they ran (and
    the OMP_NUM_THREADS their command would get); ``fail`` names a step that fails."""
    demo = Demo(QUICK, tmp_path / "ws")
    events: list[tuple] = []

    def act(name: str):
        return _recorder(demo, events, name, fail)

    lanes = [[Step(f"{k}-{i}", "keys", act(f"{k}-{i}")) for i in range(2)] for k in "abc"]
    demo.lanes = lambda: lanes  # type: ignore[method-assign]
    demo.coordinator_steps = lambda: [Step("tail", "trust", act("tail"))]  # type: ignore[method-assign]
    return demo, events


def _recorder(demo: Demo, events: list[tuple], name: str, fail: str | None = None):
    """A step's action that records (name, start, end, its command's thread share)."""

    def run() -> dict:
        t0 = time.monotonic()
        threads = demo._threads()  # as a command started now would get them
        if name == fail:
            time.sleep(0.1)  # the other lanes are in their first step by now
            raise StepFailed(f"demo step {name} failed (exit 3): bad input", exit_code=3)
        time.sleep(0.3)
        events.append((name, t0, time.monotonic(), threads))
        return {"ran": name}

    return run


def test_lanes_run_side_by_side_sharing_the_cores_then_the_coordinator(tmp_path: Path) -> None:
    demo, events = _fake_demo(tmp_path)
    started, finished = [], []
    demo.run(lambda st, skipped, s: finished.append(st.name), lambda st: started.append(st.name))
    span = {name: (t0, t1) for name, t0, t1, _ in events}
    assert set(finished) == set(started) == set(span) and len(span) == 7
    first = [span[f"{k}-0"] for k in "abc"]
    assert max(t0 for t0, _ in first) < min(t1 for _, t1 in first)  # the lanes overlapped
    for k in "abc":  # each lane in its order
        assert span[f"{k}-0"][1] <= span[f"{k}-1"][0]
    assert span["tail"][0] >= max(t1 for n, (_, t1) in span.items() if n != "tail")
    cores = len(os.sched_getaffinity(0))
    shares = {name: threads for name, _, _, threads in events}
    assert shares["a-0"] == max(1, cores // 3) and shares["tail"] == cores
    # one lane at a time: no overlap, and every step may use every core
    demo2, events2 = _fake_demo(tmp_path / "one")
    demo2.run(lambda *a: None, jobs=1)
    spans = sorted((t0, t1) for _, t0, t1, _ in events2)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert {threads for *_, threads in events2} == {cores}


def test_a_coordinator_step_with_the_previous_runs_beside_it(tmp_path: Path) -> None:
    """The study's first part runs while the federation does, each with half the cores;
    the step after them waits for both."""
    demo, events = _fake_demo(tmp_path)
    tail = [("fed", False), ("ready", True), ("rest", False)]
    steps = {n: Step(n, "trust", _recorder(demo, events, n), with_previous=w) for n, w in tail}
    demo.coordinator_steps = lambda: list(steps.values())  # type: ignore[method-assign]
    demo.run(lambda *a: None)
    span = {name: (t0, t1, threads) for name, t0, t1, threads in events}
    assert span["ready"][0] < span["fed"][1] and span["fed"][0] < span["ready"][1]
    assert span["rest"][0] >= max(span["fed"][1], span["ready"][1])
    cores = len(os.sched_getaffinity(0))
    assert span["fed"][2] == span["ready"][2] == max(1, cores // 2)
    assert span["rest"][2] == cores


def test_a_failed_lane_stops_the_others_after_their_step_and_a_rerun_continues(
    tmp_path: Path,
) -> None:
    demo, events = _fake_demo(tmp_path, fail="a-0")
    with pytest.raises(StepFailed) as info:
        demo.run(lambda *a: None)
    assert info.value.exit_code == 3
    ran = {e[0] for e in events}
    assert ran <= {"b-0", "c-0"}  # the others finished the step they were in, no more
    assert set(demo.state.data["done"]) == ran  # and it is recorded
    again, events2 = _fake_demo(tmp_path)  # the same workspace, the failure fixed
    first = json.loads((tmp_path / "ws" / "demo-state.json").read_text())["invocations"]
    assert len(first) == 1 and first[0]["seconds"] >= 0.2  # the failed invocation's time
    again.run(lambda *a: None)
    every = {f"{k}-{i}" for k in "abc" for i in range(2)} | {"tail"}
    assert {e[0] for e in events2} == every - ran
    # The summary's total covers both invocations, not only the one that finished the demo.
    times = again.state.close_invocation(2.5)
    assert times == {"total": round(first[0]["seconds"] + 2.5, 1), "invocations": 2}
    line = render_time_line({"invocations": 2, "total_seconds": times["total"], "seconds": 2.5})
    assert (
        line == f"Run in 2 invocations ({times['total']:.0f} s in all; the last, which "
        "finished it, 2 s)."
    )


def test_a_failed_invocations_time_is_kept_for_the_reruns_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No step finished before the failure, yet the invocation's time is in the state."""
    import coordinator.demo.run as demo_run
    from coordinator.cli.demo_command import _run_demo

    def fake(plan, ws: Path) -> Demo:
        demo = Demo(plan, ws)

        def boom() -> None:
            time.sleep(0.2)
            raise StepFailed("demo step x failed (exit 3): bad input", exit_code=3)

        demo.lanes = lambda: [[Step("x", "keys", boom)]]  # type: ignore[method-assign]
        demo.coordinator_steps = lambda: []  # type: ignore[method-assign]
        return demo

    monkeypatch.setattr(demo_run, "Demo", fake)
    with pytest.raises(StepFailed):
        _run_demo(QUICK, tmp_path / "ws", json_out=True)
    state = json.loads((tmp_path / "ws" / "demo-state.json").read_text())
    assert state["done"] == {} and len(state["invocations"]) == 1
    assert state["invocations"][0]["seconds"] >= 0.2


def test_a_state_from_before_invocations_were_timed_says_the_total_is_unknown(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    plan = QUICK.record()
    old = {"plan": plan, "done": {"keys-aurora": 0.3}, "outputs": {}}
    (ws / "demo-state.json").write_text(json.dumps(old))
    state = DemoState(ws, plan)
    assert state.close_invocation(40.0) == {"total": None, "invocations": 2}
    line = render_time_line({"invocations": 2, "total_seconds": None, "seconds": 40.0})
    assert "earlier ones' time unknown" in line and "40 s" in line
    assert render_time_line({"invocations": 1, "total_seconds": 9.0, "seconds": 9.0}) == (
        "Total time 9 s."
    )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to share")
def test_a_lane_command_starts_with_its_share_of_the_cores(tmp_path: Path) -> None:
    show = "import json, os; print(json.dumps(os.environ.get('OMP_NUM_THREADS')))"
    cmd = [sys.executable, "-c", show]
    assert Runner(tmp_path, {}, lambda: 1).run("share", cmd, want_json=True) == "1"
    cores = len(os.sched_getaffinity(0))
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    alone = Runner(tmp_path, {}, lambda: cores)
    alone.env = env
    assert alone.run("alone", cmd, want_json=True) is None  # every core: left to the tool


def test_new_eta_weights_do_not_strand_a_half_finished_demo(tmp_path: Path) -> None:
    DemoState(tmp_path, QUICK.record()).finish("phantom-aurora", 1.0)
    retimed = dataclasses.replace(QUICK, expected_seconds={"train": 1.0})
    assert DemoState(tmp_path, retimed.record()).done("phantom-aurora")
    with pytest.raises(InputError, match="other settings"):  # what it does still must match
        DemoState(tmp_path, dataclasses.replace(QUICK, study_seeds=9).record())
