"""The study grid at the ``cpu`` profile: does the paper's experiment fit 30 minutes on 2 cores?

On a coordinator workspace where ``coordinator demo`` has run (imported bundles from the phantom
sites and the ingested external institution), writes a study config with the issue's grid —
5 conditions (none, real-source, reconstructed-source, synthetic-bpmri, synthetic-t2w) × the
fractions 1/16, 1/8, 1/4, 1/2, 1, with 8 paired seeds at 1/16 and 1/8 and 3 above — runs it
with the study's own code, and reports the total time and where it goes: loading the external
cases, pretraining each condition (once, shared by all seeds), the fine-tuning cells (per cell:
fine-tune, pick the threshold on validation, score the test split) and the statistics and
report. Peer: the 30-minute budget of issue 5 (a throwaway probe fitted a comparable grid in
about 26 minutes with a 431 k-parameter CNN). Phantom data: the AUCs check the machinery.

Run: ``python -m benchmarks.study_grid --workspace demo-full/coordinator [--out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.host import cpus_line
from shared.atomic import atomic_write_json, atomic_write_text
from shared.errors import InputError, ToolkitError

BUDGET_MIN = 30.0
FRACTIONS = (0.0625, 0.125, 0.25, 0.5, 1.0)


def _imports(coord: Path) -> dict[str, str]:
    """The demo's import folders (step name -> folder), from ``demo-state.json`` next to the
    coordinator workspace."""
    state = coord.resolve().parent / "demo-state.json"
    if not state.is_file():
        raise InputError(
            f"{coord} is not the coordinator workspace of a `coordinator demo` run (no {state})",
            hint="run `coordinator demo` first, then pass WORKSPACE/coordinator",
        )
    data = json.loads(state.read_text())
    imports = data.get("outputs", {}).get("import", {}).get("imports")
    if not imports:
        raise InputError(f"the demo in {state.parent} has not imported its bundles yet")
    return {"profile": data["plan"]["profile"], "source": data["plan"]["sites"][0]["name"]} | {
        k: v for k, v in imports.items()
    }


def write_config(coord: Path, work: Path, seeds: int, seeds_large: int) -> Path:
    imp = _imports(coord)
    src = imp["source"]

    def q(p: Path) -> str:
        return json.dumps(str(p.resolve()))

    weights = {k: Path(imp[f"export-weights-{k}-{src}"]) / "weights" / "classifier"
               for k in ("real", "reconstructed")}  # fmt: skip
    synthetic = Path(imp[f"export-synthetic-{src}"]) / "cases"
    text = f"""# benchmarks.study_grid: the issue-5 grid on the demo's phantom consortium.
[study]
profile = "{imp["profile"]}"
external = {q(coord / "cases" / "external")}
fractions = {list(FRACTIONS)}
seeds = {seeds}
seeds_large = {seeds_large}
small_fraction_max = 0.125

[conditions.none]
kind = "none"
[conditions.real-source]
kind = "weights"
weights = {q(weights["real"])}
[conditions.reconstructed-source]
kind = "weights"
weights = {q(weights["reconstructed"])}
[conditions.synthetic-bpmri]
kind = "pretrain"
cases = [{q(synthetic)}]
[conditions.synthetic-t2w]
kind = "pretrain"
cases = [{q(synthetic)}]
sequences = ["t2w"]
"""
    path = work / "study.toml"
    atomic_write_text(path, text)
    return path


def run(config: Path, out: Path) -> dict[str, Any]:
    """Run the grid with a clock around each part; returns the timing record."""
    from coordinator.study import run as study_run
    from coordinator.study.config import load_study_config
    from coordinator.study.report import write_outputs

    cfg = load_study_config(config)
    t_pre: dict[str, float] = {}
    original = study_run.pretrained_state

    def timed_pretrained(cfg_, cond, out_, grid, log):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        state = original(cfg_, cond, out_, grid, log)
        t_pre[cond.name] = round(time.perf_counter() - t0, 2)
        return state

    study_run.pretrained_state = timed_pretrained  # measure each condition's pretraining
    t0 = time.perf_counter()
    try:
        results = study_run.run_study(cfg, out)
    finally:
        study_run.pretrained_state = original
    t_grid = time.perf_counter() - t0
    t1 = time.perf_counter()
    write_outputs(results, out, phantom=True)
    t_stats = time.perf_counter() - t1
    cell_s = [float(r["seconds"]) for r in results]
    by_cond: dict[str, list[float]] = defaultdict(list)
    by_frac: dict[float, list[float]] = defaultdict(list)
    for r in results:
        by_cond[r["condition"]].append(float(r["seconds"]))
        by_frac[float(r["fraction"])].append(float(r["seconds"]))
    total = t_grid + t_stats
    pre_total = sum(t_pre.values())
    return {
        "cells": len(results),
        "total_s": round(total, 1),
        "parts_s": {
            "pretraining (once per condition)": round(pre_total, 1),
            "fine-tuning cells": round(sum(cell_s), 1),
            "loading cases, splits, bookkeeping": round(t_grid - pre_total - sum(cell_s), 1),
            "statistics and report": round(t_stats, 1),
        },
        "pretraining_s": t_pre,
        "cell_s": {
            "mean": round(statistics.fmean(cell_s), 2),
            "median": round(statistics.median(cell_s), 2),
            "max": round(max(cell_s), 2),
        },
        "cell_mean_s_by_condition": {k: round(statistics.fmean(v), 2) for k, v in by_cond.items()},
        "cell_mean_s_by_fraction": {
            str(k): round(statistics.fmean(v), 2) for k, v in sorted(by_frac.items())
        },
        "steps": {"pretrain": cfg.pretrain.steps, "finetune": cfg.finetune.steps},
        "network": cfg.network,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True, help="the demo's coordinator folder")
    ap.add_argument("--seeds", type=int, default=8, help="paired seeds at 1/16 and 1/8")
    ap.add_argument("--seeds-large", type=int, default=3, help="paired seeds above 1/8")
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for the study config and outputs (default: a fresh temporary folder, "
        "removed afterwards); it must not hold an earlier study",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        # A study resumes where its folder left off: timed on an earlier one's cells, the grid
        # would "finish" in seconds (a stale folder from another workspace fails outright).
        if (work / "study").exists() and any((work / "study").iterdir()):
            raise InputError(
                f"{work / 'study'} holds an earlier study: a timing needs a fresh folder",
                hint="pass another --work, or none for a temporary one",
            )
        work.mkdir(parents=True, exist_ok=True)
        config = write_config(args.workspace, work, args.seeds, args.seeds_large)
        rec = run(config, work / "study")
    minutes = rec["total_s"] / 60
    record = {
        "benchmark": "study_grid",
        "date": time.strftime("%Y-%m-%d"),
        "machine": cpus_line(),
        "grid": {
            "conditions": 5,
            "fractions": list(FRACTIONS),
            "seeds": [args.seeds, args.seeds_large],
        },
        "external_cases": len(list((args.workspace / "cases" / "external").iterdir())),
        **rec,
        "figures": [
            {
                "name": f"study grid wall time ({rec['cells']} cells, {rec['network']})",
                "value": round(minutes, 1),
                "unit": "min",
                "peer": "issue-5 budget",
                "peer_value": BUDGET_MIN,
                "ratio": round(BUDGET_MIN / minutes, 2),
                "target": "<= 30 min",
                "met": minutes <= BUDGET_MIN,
            },
            {"name": "mean s per fine-tuning cell", "value": rec["cell_s"]["mean"], "unit": "s"},
        ],
        "note": "phantom data: the AUCs in the study output check the machinery",
    }
    atomic_write_json(args.out / "study_grid.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    try:
        main()
    except ToolkitError as exc:  # bad input, a killed study worker, ...
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
