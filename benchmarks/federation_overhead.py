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
evaluate message per role (imports, torch, compute).

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
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("seconds", "train-seconds", "train-compute-max", "eval-seconds", "eval-compute-max")
BYTES = ("array-bytes-down", "array-bytes-up", "wire-bytes-down", "wire-bytes-up")
MESSAGES = (
    ("site", "query.describe"),
    ("site", "train"),
    ("target", "query.describe"),
    ("target", "train"),
    ("target", "evaluate"),
)


# --------------------------------------------------------------------------- federation runs


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


def run_deployment(ws: dict[str, Path], work: Path, rounds: tuple[int, int]) -> dict[str, Any]:
    from coordinator.federation.config import load_fed_toml
    from coordinator.federation.runner import run_fed_toml
    from tests.federation_support import Deployment

    out = work / "out-deployment"
    with Deployment(work / "deployment") as dep:
        t0 = time.monotonic()
        dep.start_superlink()
        for name, role in (("aurora", "site"), ("borealis", "site"), ("target", "target")):
            dep.make_key(name)
            dep.start_node(name, role, ws[name])
        dep.wait_online(3)
        ready = time.monotonic() - t0
        cfg = dep.fed_toml(work / "dep.toml", out, rounds, min_sites=2, round_timeout=300)
        outcome = run_fed_toml(load_fed_toml(cfg), timeout=1800)
    return {
        "processes-ready-seconds": round(ready, 2),
        "run-seconds": outcome.seconds,
        "rows": _rows(out, "deployment"),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median per phase of every timed and byte column."""
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_phase[row["phase"]].append(row)
    return {
        phase: {
            k: statistics.median(float(r[k]) for r in rs if r.get(k) is not None)
            for k in ("overhead-seconds", *TIMED, *BYTES)
            if any(r.get(k) is not None for r in rs)
        }
        for phase, rs in by_phase.items()
    }


# --------------------------------------------------------------------------- start-up

MESSAGE_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import shared.federation.client_app as ca
t1 = time.perf_counter()
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 11, 7, 1
role, ws, kind, arrays = sys.argv[1:5]
config = {"server-round": 1, "local-steps": 2, "batch-size": 4, "fraction": 0.5,
          "split": "0.5,0.25,0.25,0"}
content = {"config": ConfigRecord(config)}
if kind != "query.describe":
    with np.load(arrays) as z:
        content["arrays"] = ArrayRecord({k: Array(z[k]) for k in z.files})
msg = Message(RecordDict(content), dst_node_id=7, message_type=kind)
msg.metadata.__dict__["_src_node_id"] = 1
ctx = Context(run_id=11, node_id=7, node_config={"role": role, "workspace": ws},
              state=RecordDict(), run_config={})
t2 = time.perf_counter()
reply = ca.app(msg, ctx)
t3 = time.perf_counter()
assert not reply.has_error(), reply.error.reason
compute = reply.content.metric_records["metrics"].get("compute-seconds")
print(json.dumps({"import-client-app": t1 - t0, "handler": t3 - t2, "compute": compute,
                  "torch-loaded": "torch" in sys.modules}))
"""


def _env(flwr_home: Path) -> dict[str, str]:
    from coordinator.federation.runner import flwr_env

    env = flwr_env(flwr_home)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _timed_python(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    cmd = [sys.executable, *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if res.returncode:
        raise RuntimeError(f"{cmd[:3]} failed: {(res.stdout + res.stderr)[-1500:]}")
    return time.perf_counter() - t0, res.stdout + res.stderr


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


def startup(ws: dict[str, Path], work: Path, repeats: int) -> dict[str, Any]:
    """Fresh-interpreter costs: Python, the ClientApp module, and one message per role."""
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
        "messages": [],
    }
    for role, kind in MESSAGES:
        node_ws = ws["target" if role == "target" else "aurora"]
        runs = []
        for _ in range(repeats):
            wall, out = _timed_python(
                ["-c", MESSAGE_PROBE, role, str(node_ws), kind, str(arrays)], env
            )
            runs.append(json.loads(out.strip().splitlines()[-1]) | {"process": wall})
        timings = {
            k: statistics.median(float(r[k] or 0.0) for r in runs)
            for k in ("process", "import-client-app", "handler", "compute")
        }
        res["messages"].append(
            {"role": role, "kind": kind, "torch-loaded": runs[0]["torch-loaded"]} | timings
        )
    return res


# --------------------------------------------------------------------------- report


def _figure(name: str, value: float, unit: str) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit}


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    figs: list[dict[str, Any]] = []
    for mode, run in result["runs"].items():
        for phase, s in run["summary"].items():
            label = f"{mode}, {phase} round"
            figs += [
                _figure(
                    f"{label}: overhead (wall − slowest node compute), median",
                    round(s["overhead-seconds"], 2),
                    "s",
                ),
                _figure(f"{label}: wall time, median", round(s["seconds"], 2), "s"),
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
    st = result["startup"]
    figs.append(_figure("fresh Python interpreter", round(st["python-seconds"], 3), "s"))
    figs.append(
        _figure(
            "fresh interpreter importing the ClientApp module",
            round(st["client-app-import-seconds"], 3),
            "s",
        )
    )
    for m in st["messages"]:
        name = f"{m['role']} {m['kind']} message in a fresh process"
        figs.append(_figure(name, round(m["process"], 3), "s"))
    return figs


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
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
    result["startup"] = startup(ws, work, args.repeats)
    for mode in args.modes:
        print(f"{mode}: {rounds[0]} + {rounds[1]} rounds ...", flush=True)
        run = (run_simulation if mode == "simulation" else run_deployment)(ws, work, rounds)
        run["summary"] = summarise(run["rows"])
        result["runs"][mode] = run
    result["machine"]["load-average-after"] = os.getloadavg()
    result["figures"] = figures(result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain", type=int, default=2, help="pretraining rounds (2 sites)")
    ap.add_argument("--adapt", type=int, default=1, help="adaptation rounds (target node)")
    modes = ["simulation", "deployment"]
    ap.add_argument("--modes", nargs="+", default=modes, choices=modes)
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process start-up repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
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
