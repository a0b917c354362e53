"""How long ``coordinator demo`` takes end to end, and whether its quick study shows learning.

Issue 15's demo figures, measured the way a newcomer meets them: the real command in a fresh
workspace (``coordinator demo [--quick] -w DIR --json``), wall time from start to exit, the
per-step seconds the demo records, and the load average at start (a busy machine is slower;
the figure says what it was). The quick demo's from-scratch condition (``none``) on all of
the external training data is the "does the first table show learning?" figure.

Phantom data: the AUC checks the machinery, not clinical truth.

Run: ``python -m benchmarks.demo_time [--plans quick full] [--out DIR] [--keep]``
(quick: about 5 minutes on 2 idle cores; full: about half an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.host import cpus_line
from shared.atomic import atomic_write_json

# issue 15 point 4
TARGET_SECONDS = {"quick": 150.0, "full": 15 * 60.0}
QUICK_FROM_SCRATCH_AUC = 0.75
PHANTOM_NOTE = "Phantom data: the AUC checks the machinery, not clinical truth."


class DemoFailed(RuntimeError):
    """The demo itself exited non-zero: a failed measurement, not bad input."""


def _coordinator() -> list[str]:
    script = Path(sys.executable).parent / "coordinator"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "coordinator.cli.main"]


def run_demo(plan: str, workspace: Path, log: Path) -> dict[str, Any]:
    """Run the demo in a fresh ``workspace``; its summary plus the measured wall time."""
    if workspace.exists():
        shutil.rmtree(workspace)  # a leftover state file would make the demo resume, not run
    quick = ["--quick"] if plan == "quick" else []
    cmd = [*_coordinator(), "demo", *quick, "-w", str(workspace), "--json"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = (log.read_text().strip().splitlines() or [""])[-1]
        raise DemoFailed(f"coordinator demo ({plan}) exited {rc}: {tail} (log: {log})")
    summary = json.loads((workspace / "demo-summary.json").read_text())
    return {
        "plan": plan,
        "command": ["coordinator", *cmd[len(_coordinator()) :]],
        "wall_seconds": round(wall, 1),
        "demo_seconds": summary["seconds"],
        "load_average_at_start": round(load, 2),
        "step_seconds": summary["step_seconds"],
        "study": summary["checks"]["study"]["summary"],
    }


def from_scratch_auc(study: list[dict[str, Any]]) -> float | None:
    """Mean test AUC of the ``none`` condition at the largest fraction (all external training
    data), or None when the study has no such row."""
    rows = [r for r in study if r["condition"] == "none"]
    if not rows:
        return None
    return float(max(rows, key=lambda r: r["fraction"])["auc_mean"])


def figures(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        target = TARGET_SECONDS[r["plan"]]
        out.append(
            {
                "name": f"coordinator demo{' --quick' if r['plan'] == 'quick' else ''} wall time "
                f"(load {r['load_average_at_start']:g} at start)",
                "value": r["wall_seconds"],
                "unit": "s",
                "target": f"≤ {target:g} s",
                "met": r["wall_seconds"] <= target,
            }
        )
        auc = from_scratch_auc(r["study"])
        if r["plan"] == "quick" and auc is not None:
            out.append(
                {
                    "name": "quick demo: from-scratch test AUC on all external training data "
                    "(phantom)",
                    "value": round(auc, 3),
                    "unit": "AUC",
                    "target": f"≥ {QUICK_FROM_SCRATCH_AUC}",
                    "met": auc >= QUICK_FROM_SCRATCH_AUC,
                }
            )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plans", nargs="+", choices=sorted(TARGET_SECONDS), default=["quick"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--work", type=Path, default=None, help="demo workspaces (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the demo workspaces")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="demo_time-"))
    runs = []
    try:
        for plan in args.plans:
            print(f"{time.strftime('%H:%M:%S')} coordinator demo ({plan}) ...", flush=True)
            run = run_demo(plan, work / f"demo-{plan}", args.out / f"demo-{plan}.log")
            print(f"{time.strftime('%H:%M:%S')} done in {run['wall_seconds']} s", flush=True)
            runs.append(run)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rec = {
        "benchmark": "demo_time",
        "date": time.strftime("%Y-%m-%d"),
        "machine": cpus_line(),
        "note": PHANTOM_NOTE,
        "runs": runs,
        "figures": figures(runs),
    }
    atomic_write_json(args.out / "demo_time.json", rec)
    print(json.dumps({"figures": rec["figures"]}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except DemoFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
