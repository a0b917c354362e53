"""``coordinator federate --config fed.toml``: federated pretraining over the sites, then
source-free adaptation on the target node(s), in simulation or against a deployed SuperLink."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json


def echo_line(text: str) -> None:
    """A line of the federation's log, verbatim: Flower and node messages are data, and a
    bracket in them is not a style tag."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


@handle_errors
def federate(
    config: Annotated[Path, typer.Option("--config", help="Federation config (TOML).")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Give up (and stop the run) after this many s.")
    ] = 6 * 3600.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Run the federation described by CONFIG: phase 1 FedAvg pretraining over the site nodes,
    phase 2 adaptation on the target node(s), evaluation every round. Every round is
    checkpointed in the config's output folder; rerunning the same command continues after
    the last completed round. Writes final/ (safetensors), pretrained/ (the model when the
    pretraining phase ends), metrics.csv and metrics.png. Success means Flower recorded the
    run as finished:completed."""
    from contextlib import ExitStack

    from coordinator.federation.config import load_fed_toml
    from coordinator.federation.runner import run_fed_toml
    from shared.workspace_lock import workspace_lock

    fed = load_fed_toml(config)
    fed.check_sim_nodes()  # before any folder is made or process started
    with ExitStack() as held:
        # One writer per folder: the output folder and, in simulation, every node's workspace
        # (the nodes append to their audit logs); the nodes themselves run in child processes.
        held.enter_context(workspace_lock(Path(fed.run_config.out_dir)))
        for ws in sorted({str(n["workspace"]) for n in fed.sim_nodes} - {fed.run_config.out_dir}):
            held.enter_context(workspace_lock(Path(ws), create=False))
        outcome = run_fed_toml(fed, echo=None if json_out else echo_line, timeout=timeout)
    o = Path(fed.run_config.out_dir)
    result = {
        "run-id": outcome.run_id,
        "status": outcome.status,
        "seconds": outcome.seconds,
        "out": str(o),
        "final": str(o / "final"),
        "metrics": str(o / "metrics.csv"),
        "plot": str(o / "metrics.png"),
        "pretrained": str(fed.pretrained_dir) if fed.pretrained_dir.is_dir() else None,
    }
    if json_out:
        print_json(result)
    elif not (o / "final").is_dir():
        out.print(
            f"federation stopped as configured after a checkpointed round "
            f"({outcome.seconds:.0f} s); "
            f"rerun the same command to continue. Metrics so far: {o / 'metrics.csv'}",
            markup=False,
        )
    else:
        out.print(
            f"federation {outcome.status} in {outcome.seconds:.0f} s: final model {o / 'final'}, "
            f"metrics {o / 'metrics.csv'}, plot {o / 'metrics.png'}",
            markup=False,
        )
