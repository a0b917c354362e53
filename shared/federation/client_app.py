"""The one ClientApp every SuperNode runs; it takes its role from the node config.

``role=site`` (a hospital) is served by ``site_agent.federation.site_role``, ``role=target``
(the coordinator's data node) by ``coordinator.federation.target_role``; each module is only
imported on a node of that role, so a hospital never loads coordinator code. Every message is
checked against the node's own policy (``WORKSPACE/federation/policy.toml``) before any data is
read, and every reply and every refusal is appended to the node's audit log; a node that cannot
write its audit log answers nothing but an error.

Flower starts this module anew for each message: imports stay light until a handler runs
(torch and MONAI are imported only for train and evaluate requests, before the node's compute
clock starts). Every reply's ``metrics`` record carries ``compute-seconds``: the node's own
work on the request (reading its cases, training or evaluating), so the coordinator
can tell the federation's overhead from local compute.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from shared.errors import ToolkitError
from shared.federation.node import resolve_node
from shared.federation.policy import PolicyRefusal
from shared.federation.records import (
    K_PHASE,
    K_ROUND,
    METRICS,
    MSG_DESCRIBE,
    MSG_EVALUATE,
    MSG_TRAIN,
)

ROLE_MODULES = {
    "site": "site_agent.federation.site_role",
    "target": "coordinator.federation.target_role",
}
# Error codes in error replies (Flower reserves small numbers for its own).
CODE_POLICY_REFUSED = 4030
CODE_NODE_ERROR = 4000
CODE_NO_AUDIT = 4031

KNOWN_TYPES = (MSG_TRAIN, MSG_EVALUATE, MSG_DESCRIBE)
COMPUTE_SECONDS = "compute-seconds"

# Test-only fault hook, off unless the SuperNode's own environment names a marker file: a train
# request then writes the file and stalls, so a fault test can kill the node while a round is
# in flight (tests/test_federation_deploy.py). Nothing a server sends can switch it on.
TEST_STALL_ENV = "PROSTATE_FL_TEST_STALL_TRAIN"
TEST_STALL_SECONDS = 120.0


class PolicyClientApp(ClientApp):
    """A ClientApp that answers every message type it does not serve with an audited
    refusal (Flower's own answer would be an unaudited error)."""

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type not in KNOWN_TYPES:
            return handle("unexpected", message, context)
        return super().__call__(message, context)


app = PolicyClientApp()


def _request_summary(msg: Message, context: Context) -> dict[str, Any]:
    cfg = msg.content.config_records.get("config") if msg.has_content() else None
    return {
        "run-id": int(context.run_id),
        "message-type": msg.metadata.message_type,
        "server-round": int(cfg.get(K_ROUND, 0)) if cfg else 0,
        "phase": str(cfg.get(K_PHASE, "")) if cfg else "",
        "request": {k: v for k, v in (cfg or {}).items() if isinstance(v, int | float | str)},
    }


def _jsonable(obj: Any) -> Any:
    """Audit entries are strict JSON: non-finite floats become null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _test_stall(kind: str) -> None:
    marker = os.environ.get(TEST_STALL_ENV, "")
    if kind == MSG_TRAIN and marker:
        Path(marker).write_text(f"{os.getpid()}\n")
        time.sleep(TEST_STALL_SECONDS)


def _timed(role, kind: str, msg: Message, context: Context, node) -> tuple[Any, dict[str, Any]]:
    """Run the role's handler; add its duration to the reply's metrics as compute-seconds."""
    if kind in (MSG_TRAIN, MSG_EVALUATE):
        from shared.federation.local import preload

        preload()
    t0 = time.perf_counter()
    content, details = role.handle(kind, msg, context, node)
    metrics = content.metric_records.get(METRICS)
    if metrics is not None:
        metrics[COMPUTE_SECONDS] = round(time.perf_counter() - t0, 4)
    return content, details


def handle(kind: str, msg: Message, context: Context) -> Message:
    """Resolve the node, check the policy, run the role's handler, audit, reply."""
    try:
        node = resolve_node(dict(context.node_config), dict(context.run_config))
        role = importlib.import_module(ROLE_MODULES[node.role])
        raw_audit = role.open_audit(node)
    except Exception as exc:  # nothing can be audited: refuse without touching data
        print(f"federation node refused {kind}: {exc}", file=sys.stderr)
        return Message(
            error=Error(code=CODE_NO_AUDIT, reason=f"node not usable: {exc}"), reply_to=msg
        )

    def audit(event: str, details: dict[str, Any]) -> None:
        raw_audit(event, _jsonable(details | {"node-id": int(context.node_id)}))

    summary = _request_summary(msg, context)
    try:
        _test_stall(kind)
        content, details = _timed(role, kind, msg, context, node)
    except PolicyRefusal as exc:
        audit("federation-refused", summary | {"reason": exc.message})
        return Message(
            error=Error(code=CODE_POLICY_REFUSED, reason=f"refused by site policy: {exc}"),
            reply_to=msg,
        )
    except ToolkitError as exc:
        audit("federation-error", summary | {"reason": exc.message})
        return Message(error=Error(code=CODE_NODE_ERROR, reason=str(exc)), reply_to=msg)
    except Exception as exc:
        traceback.print_exc()
        audit("federation-error", summary | {"reason": f"{type(exc).__name__}: {exc}"})
        return Message(
            error=Error(code=CODE_NODE_ERROR, reason=f"{type(exc).__name__}: {exc}"),
            reply_to=msg,
        )
    audit("federation-reply", summary | details)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle(MSG_TRAIN, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handle(MSG_EVALUATE, msg, context)


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    return handle(MSG_DESCRIBE, msg, context)
