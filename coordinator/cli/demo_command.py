"""``coordinator demo [--quick] [--workspace DIR]``: the whole consortium on phantom data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json

if TYPE_CHECKING:
    from coordinator.demo.plan import DemoPlan


@handle_errors
def demo(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="tiny profile, about 3 minutes on 2 cores (default: cpu, about 18 on an AMX "
            "CPU, over an hour on an AVX2-only one).",
        ),
    ] = False,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Demo folder (default: demo-quick or demo-full)."),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=0,
            help="Independent lanes run at once: each hospital's steps and the external "
            "institution's, as on their own machines, sharing the cores (0: all of them; 1: "
            "one step at a time).",
        ),
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Build a phantom consortium (two source hospitals of different vendors and one
    external institution) and run everything: each site agent's train, generate and screened,
    signed export; the coordinator's trust and import; federated pretraining and source-free
    adaptation in Flower's simulation engine; the study grid and its report. Each step runs
    the real command in its own process (logs in WORKSPACE/logs); rerunning the same command
    continues after the last finished step. Phantom data checks the machinery, not clinical
    truth."""
    from coordinator.demo.plan import PLANS
    from shared.workspace_lock import workspace_lock

    plan = PLANS["quick" if quick else "full"]
    ws = workspace or Path(f"demo-{plan.name}")
    with workspace_lock(ws):  # its sites and coordinator are separate workspaces, own locks
        _run_demo(plan, ws, json_out, jobs)


def _run_demo(plan: DemoPlan, ws: Path, json_out: bool, jobs: int = 0) -> None:
    """Every unfinished step of ``plan`` in ``ws``, then the checks and the summary."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from coordinator.demo.run import Demo
    from coordinator.demo.summary import check_outputs, render_time_line, where, write_summary

    d = Demo(plan, ws)
    steps = d.steps()
    weight = {s.name: plan.expected_seconds.get(s.kind, 5.0) for s in steps}
    prog = Progress(
        TextColumn("[bold]{task.description:<34}"),
        BarColumn(),
        TextColumn("{task.fields[step]}/{task.fields[n]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=json_out,
    )
    with prog:
        task = prog.add_task("demo", total=sum(weight.values()), step=0, n=len(steps))
        running: list[str] = []
        finished = [0]

        def show() -> None:
            desc = ", ".join(running) if running else "checks"
            if len(desc) > 34:  # lanes side by side: the first and how many more
                desc = f"{running[0]} +{len(running) - 1} more"
            prog.update(task, step=finished[0], description=desc)

        def on_start(step) -> None:
            running.append(step.name)
            show()

        def on_step(step, skipped: bool, seconds: float) -> None:
            if step.name in running:
                running.remove(step.name)
            finished[0] += 1
            prog.update(task, advance=weight[step.name])
            show()
            if not skipped and not json_out:
                prog.console.print(f"  {step.name} done in {seconds:.0f} s", highlight=False)

        try:
            d.run(on_step, on_start, jobs=jobs)
        except BaseException:  # a failed step or Ctrl-C: a rerun's total still counts this time
            d.state.record_time(d.state.elapsed())
            raise
    checks = check_outputs(d)
    record = write_summary(d, checks, d.state.elapsed())
    if json_out:
        print_json(record)
        return
    out.print(
        f"demo ({plan.name}) complete. {render_time_line(record)} Every bundle and audit "
        "log verified. Phantom data: a machinery check, not clinical truth."
    )
    for k, v in where(d).items():
        out.print(f"  {k}: {v}", markup=False, highlight=False)
