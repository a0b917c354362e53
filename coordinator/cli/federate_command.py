"""``coordinator federate --config fed.toml``: federated pretraining over the sites, then
source-free adaptation on the target node(s), in simulation or against a deployed SuperLink."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json


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
    from coordinator.federation.config import load_fed_toml
    from coordinator.federation.runner import run_fed_toml

    fed = load_fed_toml(config)
    outcome = run_fed_toml(
        fed, echo=None if json_out else (lambda s: err.print(s, highlight=False)), timeout=timeout
    )
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
            f"rerun the same command to continue. Metrics so far: {o / 'metrics.csv'}"
        )
    else:
        out.print(
            f"federation {outcome.status} in {outcome.seconds:.0f} s: final model {o / 'final'}, "
            f"metrics {o / 'metrics.csv'}, plot {o / 'metrics.png'}"
        )
