"""What the federation costs beyond the nodes' own work: per-round overhead, bytes per round,
and the ClientApp's start-up (it starts anew for every message on a deployed node).

Three nodes on tiny phantom-free workspaces (2 sites with 10 synthetic cases each, 1 target
node with 24 external cases; ``tests/federation_support.py``), ``--pretrain`` + ``--adapt``
rounds (2 local steps each), run twice:

- **simulation**: Flower's Simulation Engine behind a private ``flower-superlink --simulation``
  (``coordinator federate``'s own path);
- **deployment**: a real SuperLink with TLS, SuperNode authentication and a state database and
  three ``flower-supernode`` processes on loopback (``deploy/*.sh``).

Per round, from the ServerApp's own ``metrics.csv`` row: wall time; the slowest node's compute
seconds in each exchange (train, then evaluation on the target), as the nodes report them in
their reply metrics (reading cases, training or scoring; ClientApp start-up excluded);
**overhead = wall time − the sum of those two maxima** (messaging, ClientApp start-up, polling,
validation, FedAvg); bytes of the ArrayRecord payloads sent and received, and of every Flower
object serialized for them (messages, records, arrays, chunks: what Flower pushes and pulls,
without HTTP/TLS framing). Start-up, in fresh interpreters: Python alone, importing the
ClientApp module (and which packages that import costs), and a whole describe / train /
evaluate message per role (imports, torch, compute); the same messages again in children
forked from a warm parent that preloaded what ``deploy/warm_superexec.py`` preloads (how a
deployed node starts them now; the deployment mode runs that path end to end).

Writes ``OUT/federation_overhead.json`` atomically (``figures`` for ``python -m benchmarks``,
plus every row). Run: ``python -m benchmarks.federation_overhead [--pretrain 2] [--adapt 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.host import cpu_model
from coordinator.federation.checkpoints import METRIC_COLUMNS
from shared.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
TIMED = tuple(  # per-round wall, exchange, compute and start-up seconds of metrics.csv
    c for c in METRIC_COLUMNS if c.endswith(("seconds", "-max")) and c != "overhead-seconds"
)
BYTES = ("array-bytes-down", "array-bytes-up", "wire-bytes-down", "wire-bytes-up")
MESSAGES = (
    ("site", "query.describe"),
    ("site", "train"),
    ("target", "query.describe"),
    ("target", "train"),
    ("target", "evaluate"),
)


# --------------------------------------------------------------------------- federation runs


OVERHEAD_TARGET = 3.0  # issue 15: a deployed round's overhead, seconds


def _rows(out: Path, mode: str) -> list[dict[str, Any]]:
    keys = ("round", "phase", "trainers", "accepted", "overhead-seconds", *TIMED, *BYTES)
    state = json.loads((out / "state.json").read_text())
    return [{"mode": mode} | {k: row.get(k) for k in keys} for row in state["rows"]]


def run_simulation(ws: dict[str, Path], work: Path, rounds: tuple[int, int]) -> dict[str, Any]:
    from coordinator.federation.config import load_fed_toml
    from coordinator.federation.runner import run_fed_toml
    from tests.federation_support import write_fed_toml

    out = work / "out-simulation"
    cfg = write_fed_toml(
        work / "sim.toml", ws, out, pretrain_rounds=rounds[0], adapt_rounds=rounds[1]
    )
    outcome = run_fed_toml(load_fed_toml(cfg), timeout=1800)
    return {"run-seconds": outcome.seconds, "rows": _rows(out, "simulation")}


def run_deployment(
    ws: dict[str, Path], work: Path, rounds: tuple[int, int], threads: int | None = None
) -> dict[str, Any]:
    from coordinator.federation.config import load_fed_toml
    from coordinator.federation.runner import run_fed_toml
    from tests.federation_support import Deployment

    tag = f"-{threads}-threads" if threads else ""
    out = work / f"out-deployment{tag}"
    with Deployment(work / f"deployment{tag}") as dep:
        t0 = time.monotonic()
        dep.start_superlink()
        for name, role in (("aurora", "site"), ("borealis", "site"), ("target", "target")):
            dep.make_key(name)
            dep.start_node(name, role, ws[name], threads=threads)
        dep.wait_online(3)
        ready = time.monotonic() - t0
        cfg = dep.fed_toml(work / f"dep{tag}.toml", out, rounds, min_sites=2, round_timeout=300)
        outcome = run_fed_toml(load_fed_toml(cfg), timeout=1800)
    return {
        "processes-ready-seconds": round(ready, 2),
        "run-seconds": outcome.seconds,
        "node-threads": threads or "all cores",
        "rows": _rows(out, "deployment"),
    }


def baseline_deployment(ref: str, work: Path, rounds: tuple[int, int]) -> dict[str, Any]:
    """The deployed run of the tree at ``ref``, by that tree's own benchmark (its start-up
    part with one repeat is discarded)."""
    tree = baseline_tree(ref, work)
    out = work / "baseline-results"
    cmd = [sys.executable, "-m", "benchmarks.federation_overhead", "--modes", "deployment"]
    cmd += ["--pretrain", str(rounds[0]), "--adapt", str(rounds[1]), "--repeats", "1"]
    cmd += ["--out", str(out), "--work", str(work / "baseline-work")]
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(cmd, cwd=tree, env=env, check=True, timeout=3600)
    run = json.loads((out / "federation_overhead.json").read_text())["runs"]["deployment"]
    return {"ref": ref} | run


LAST = "last"  # the run's last round: it also pays the exchange that scores its model


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median per phase of every timed and byte column. The run's last round, which also
    pays for the exchange that scores its model (every other round's model is scored in the
    next round's exchange), is summarised on its own (``LAST``)."""
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, row in enumerate(rows):
        closing = i == len(rows) - 1 and row.get("eval-seconds") is not None
        by_phase[LAST if closing and len(rows) > 1 else row["phase"]].append(row)
    return {
        phase: {
            k: statistics.median(float(r[k]) for r in rs if r.get(k) is not None)
            for k in ("overhead-seconds", *TIMED, *BYTES)
            if any(r.get(k) is not None for r in rs)
        }
        for phase, rs in by_phase.items()
    }


# --------------------------------------------------------------------------- start-up


def _env(flwr_home: Path, tree: Path = ROOT) -> dict[str, str]:
    from coordinator.federation.runner import flwr_env

    env = flwr_env(flwr_home)
    env["PYTHONPATH"] = str(tree)
    return env


def _timed_python(args: list[str], env: dict[str, str], tree: Path = ROOT) -> tuple[float, str]:
    """Wall seconds of a fresh interpreter running ``args`` in source tree ``tree``."""
    t0 = time.perf_counter()
    cmd = [sys.executable, *args]
    res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    if res.returncode:
        raise RuntimeError(f"{cmd[:3]} failed: {(res.stdout + res.stderr)[-1500:]}")
    return time.perf_counter() - t0, res.stdout + res.stderr


# A warm parent as deploy/warm_superexec.py keeps one: it preloads the same libraries, then
# forks one child per request, which runs the probe and exits. Requests and answers are JSON
# lines on stdin/stdout; the wall time runs from just before fork() to the child's exit.
_ZYGOTE = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import warm_superexec
warm_superexec.preload()
sys.path.pop(0)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            sys.argv = ["-c", *req["args"]]
            exec(compile(req["probe"], "<probe>", "exec"), {"__name__": "__main__"})
            sys.stdout.flush()
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"wall": time.perf_counter() - t0, "status": status}), flush=True)
"""


class WarmForks:
    """Runs a probe in a child forked from a warm parent (as a deployed node now does)."""

    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.work = work
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, str(ROOT / "deploy")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, args: list[str]) -> tuple[float, str]:
        from tests.federation_support import MESSAGE_PROBE

        out = self.work / "warm-probe.out"
        assert self.proc.stdin and self.proc.stdout
        req = {"probe": MESSAGE_PROBE, "args": args, "out": str(out)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ans = json.loads(self.proc.stdout.readline())
        if ans["status"]:
            raise RuntimeError(f"warm probe failed: {out.read_text()[-1500:]}")
        return ans["wall"], out.read_text()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def import_breakdown(env: dict[str, str]) -> dict[str, Any]:
    """``-X importtime`` of the ClientApp module: cumulative ms per top-level package."""
    _, text = _timed_python(["-X", "importtime", "-c", "import shared.federation.client_app"], env)
    self_us: dict[str, int] = defaultdict(int)
    modules = 0
    for line in text.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or "self" in fields[0]:
            continue
        modules += 1
        self_us[fields[2].strip().split(".")[0]] += int(fields[0])
    top = sorted(self_us.items(), key=lambda kv: -kv[1])
    return {
        "modules": modules,
        "ms-by-package": {k: round(v / 1000, 1) for k, v in top[:10]},
        "imports-torch": "torch" in self_us,
    }


Runner = Callable[[list[str]], tuple[float, str]]


def message_startup(
    ws: dict[str, Path], arrays: Path, runners: dict[str, Runner], repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """One whole message per (role, kind) in its own process, as a deployed node runs each,
    for every way of starting it in ``runners`` (name -> runner: a fresh interpreter of a
    source tree, or a fork of a warm parent), taking turns so that a change in the machine's
    load falls on all of them alike.

    ``startup`` = the process's wall time - the node's own ``compute-seconds`` (interpreter,
    imports, policy and audit set-up, reply): what the message pays before and around its
    work. The first process of each kind finds no case cache (``cold``); the ``repeats``
    after it find the cache the first one wrote (their medians are reported).
    """
    keys = ("process", "startup", "import-client-app", "handler", "compute")
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    for role, kind in MESSAGES:
        node_ws = ws["target" if role == "target" else "aurora"]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
        for name, run_probe in runners.items():  # each way starts without a case cache
            shutil.rmtree(node_ws / "work" / "federation", ignore_errors=True)
            wall, out = run_probe([role, str(node_ws), kind, str(arrays)])
            run = json.loads(out.strip().splitlines()[-1]) | {"process": wall}
            run["startup"] = wall - float(run["compute"] or 0.0)
            runs[name].append(run)
        for _ in range(repeats):
            for name, run_probe in runners.items():
                wall, out = run_probe([role, str(node_ws), kind, str(arrays)])
                run = json.loads(out.strip().splitlines()[-1]) | {"process": wall}
                run["startup"] = wall - float(run["compute"] or 0.0)
                runs[name].append(run)
        for name, rs in runs.items():
            timings = {k: statistics.median(float(r[k] or 0.0) for r in rs[1:]) for k in keys}
            rows[name].append(
                {"role": role, "kind": kind, "loaded": rs[-1].get("loaded", [])}
                | timings
                | {"cold": {k: round(float(rs[0][k] or 0.0), 4) for k in keys}}
            )
    return rows


def baseline_tree(ref: str, work: Path) -> Path:
    """The source tree at git ``ref`` (``git archive``; the working tree is not touched)."""
    tree = work / f"baseline-{ref.replace('/', '_')}"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def startup(
    ws: dict[str, Path], work: Path, repeats: int, baseline: str | None = None
) -> dict[str, Any]:
    """Fresh-interpreter costs: Python, the ClientApp module, and one message per role and
    kind, for this tree and (``baseline``) the tree at a git ref, measured in the same run."""
    import numpy as np

    from coordinator.federation.config import FederationConfig
    from coordinator.federation.rounds import initial_state

    env = _env(work / "flwr-home-startup")
    arrays = work / "global.npz"
    state, _ = initial_state(FederationConfig(out_dir=str(work / "unused")))
    np.savez(arrays, **{k: v.numpy() for k, v in state.items()})

    def median_wall(args: list[str]) -> float:
        return statistics.median(_timed_python(args, env)[0] for _ in range(repeats))

    res: dict[str, Any] = {
        "python-seconds": median_wall(["-c", "pass"]),
        "client-app-import-seconds": median_wall(["-c", "import shared.federation.client_app"]),
        "flwr-import-seconds": median_wall(["-c", "import flwr.app, flwr.clientapp"]),
        "torch-import-seconds": median_wall(["-c", "import torch"]),
        "imports": import_breakdown(env),
    }
    from tests.federation_support import MESSAGE_PROBE

    def fresh(tree: Path, tree_env: dict[str, str]) -> Runner:
        return lambda args: _timed_python(["-c", MESSAGE_PROBE, *args], tree_env, tree)

    warm = WarmForks(_env(work / "flwr-home-warm"), work)
    runners: dict[str, Runner] = {"this": fresh(ROOT, env), "warm": warm.run}
    if baseline:
        tree = baseline_tree(baseline, work)
        runners["baseline"] = fresh(tree, _env(work / "flwr-home-baseline", tree))
    try:
        rows = message_startup(ws, arrays, runners, repeats)
    finally:
        warm.close()
    res["messages"] = rows["this"]
    res["warm-messages"] = rows["warm"]
    if baseline:
        res["baseline"] = {"ref": baseline, "messages": rows["baseline"]}
    return res


# --------------------------------------------------------------------------- report


def _figure(name: str, value: float, unit: str) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit}


def _run_figures(
    label: str, s: dict[str, float], simulated: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """A round kind's figures; a deployed one (``simulated``: the same round kind in the
    Simulation Engine, same run, or {} without one) gets issue 15's target and that peer."""
    overhead = _figure(
        f"{label}: overhead (wall − slowest node compute), median",
        round(s["overhead-seconds"], 2),
        "s",
    )
    if simulated is not None:
        overhead |= {
            "target": f"≤ {OVERHEAD_TARGET:g} s",
            "met": overhead["value"] <= OVERHEAD_TARGET,
        }
        if simulated:
            peer = round(simulated["overhead-seconds"], 2)
            overhead |= {
                "peer": "Flower Simulation Engine, same round kind, same run",
                "peer_value": peer,
                "ratio": round(peer / overhead["value"], 2) if overhead["value"] > 0 else None,
            }
    figs = [overhead, _figure(f"{label}: wall time, median", round(s["seconds"], 2), "s")]
    for key, what in (("train-startup-max", "train"), ("eval-startup-max", "evaluate")):
        if key in s:  # as the nodes report it (a tree before startup-seconds has none)
            figs.append(
                _figure(f"{label}: {what} message start-up (slowest node), median", s[key], "s")
            )
    return figs


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    figs: list[dict[str, Any]] = []
    simulated = result["runs"].get("simulation", {}).get("summary", {})
    for mode, run in result["runs"].items():
        for phase, s in run["summary"].items():
            label = f"{mode}, {phase} round"
            if phase == LAST:
                label = f"{mode}, last round (+ the exchange that scores its model)"
            peer = simulated.get(phase, {}) if mode.startswith("deployment") else None
            figs += _run_figures(label, s, peer)
            figs += [
                _figure(
                    f"{label}: array bytes sent + received",
                    int(s["array-bytes-down"] + s["array-bytes-up"]),
                    "bytes",
                ),
                _figure(
                    f"{label}: Flower serialized bytes sent + received",
                    int(s["wire-bytes-down"] + s["wire-bytes-up"]),
                    "bytes",
                ),
            ]
    base = result.get("baseline-deployment")
    if base:
        for phase, s in base["summary"].items():
            figs += _run_figures(f"deployment at {base['ref']} (before), {phase} round", s)
    st = result["startup"]
    figs.append(_figure("fresh Python interpreter", round(st["python-seconds"], 3), "s"))
    figs.append(
        _figure(
            "fresh interpreter importing the ClientApp module",
            round(st["client-app-import-seconds"], 3),
            "s",
        )
    )
    for m in st.get("warm-messages", []):
        name = f"{m['role']} {m['kind']} message forked from a warm parent"
        figs.append(_figure(f"{name}: start-up (wall − compute)", round(m["startup"], 3), "s"))
    before = {(m["role"], m["kind"]): m for m in st.get("baseline", {}).get("messages", [])}
    for m in st["messages"]:
        name = f"{m['role']} {m['kind']} message in a fresh process"
        figs.append(_figure(name, round(m["process"], 3), "s"))
        figs.append(_figure(f"{name}: start-up (wall − compute)", round(m["startup"], 3), "s"))
        if m["kind"] != "query.describe":
            figs.append(
                _figure(
                    f"{name}: start-up with no case cache yet",
                    round(m["cold"]["startup"], 3),
                    "s",
                )
            )
        old = before.get((m["role"], m["kind"]))
        if old:
            ref = st["baseline"]["ref"]
            figs.append(
                _figure(f"{name}: start-up at {ref} (before)", round(old["startup"], 3), "s")
            )
            figs.append(
                _figure(
                    f"{name}: start-up, before / after (same run)",
                    round(old["startup"] / m["startup"], 2),
                    "×",
                )
            )
    return figs


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load-average": os.getloadavg(),
        "gpu": False,
    }


def measure(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tests.federation_support import make_consortium

    ws = make_consortium(work / "ws")
    rounds = (args.pretrain, args.adapt)
    result: dict[str, Any] = {
        "machine": machine(),
        "rounds": {"pretrain": rounds[0], "adapt": rounds[1]},
        "runs": {},
    }
    print(f"start-up costs ({args.repeats} fresh processes each) ...", flush=True)
    result["startup"] = startup(ws, work, args.repeats, args.baseline)
    if args.baseline and "deployment" in args.modes:
        print(f"deployment at {args.baseline} (before) ...", flush=True)
        result["baseline-deployment"] = baseline_deployment(args.baseline, work, rounds)
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        mode: partial(run_simulation if mode == "simulation" else run_deployment, ws, work, rounds)
        for mode in args.modes
    }
    if args.node_threads and "deployment" in args.modes:
        n = args.node_threads
        runs[f"deployment, {n} thread(s) per node"] = partial(
            run_deployment, ws, work, rounds, threads=n
        )
    for key, start in runs.items():
        print(f"{key}: {rounds[0]} + {rounds[1]} rounds ...", flush=True)
        run = start()
        run["summary"] = summarise(run["rows"])
        result["runs"][key] = run
    result["machine"]["load-average-after"] = os.getloadavg()
    result["figures"] = figures(result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain", type=int, default=2, help="pretraining rounds (2 sites)")
    ap.add_argument("--adapt", type=int, default=2, help="adaptation rounds (target node)")
    modes = ["simulation", "deployment"]
    ap.add_argument("--modes", nargs="+", default=modes, choices=modes)
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process start-up repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    ap.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also measure the source tree at this git ref (message start-up, interleaved "
        "with this tree's, and a deployed run) in the same run, for before/after ratios",
    )
    ap.add_argument(
        "--node-threads",
        type=int,
        metavar="N",
        help="also run the deployment with each SuperNode's messages on N compute threads "
        "(supernode.sh --threads): the three nodes share this machine's cores, which three "
        "hospitals would not",
    )
    args = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    work = Path(args.work or tempfile.mkdtemp(prefix="fed-overhead-")).resolve()
    try:
        result = measure(work, args)
    finally:
        if args.work is None:  # a scratch folder of our own
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "federation_overhead.json", result)
    for f in result["figures"]:
        print(f"{f['name']}: {f['value']} {f['unit']}")


if __name__ == "__main__":
    main()
