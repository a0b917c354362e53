"""The coordinator's ServerApp (Flower Message API): federated pretraining over the sites,
source-free adaptation on the target node(s), evaluation, checkpoints and resume.

Settings come from the run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridden
by ``coordinator federate`` or ``flwr run --run-config``); see ``coordinator.federation.config``.
"""

from __future__ import annotations

import json
import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from coordinator.federation.config import FederationConfig
    from coordinator.federation.exchange import quick_reply_pulls
    from coordinator.federation.rounds import run_federation

    quick_reply_pulls()
    logging.getLogger("coordinator.federation").setLevel(logging.INFO)
    cfg = FederationConfig.from_run_config(dict(context.run_config))
    summary = run_federation(grid, cfg, log=lambda s: print(f"[federation] {s}", flush=True))
    print("[federation] summary " + json.dumps(summary, default=str), flush=True)
