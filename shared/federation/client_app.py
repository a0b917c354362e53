"""The one ClientApp every SuperNode runs; it takes its role from the node config.

``role=site`` (a hospital) is served by ``site_agent.federation.site_role``, ``role=target``
(the coordinator's data node) by ``coordinator.federation.target_role``; each module is only
imported on a node of that role, so a hospital never loads coordinator code. Every message is
checked against the node's own policy (``WORKSPACE/federation/policy.toml``) before any data is
read, and every reply and every refusal is appended to the node's audit log; a node that cannot
write its audit log answers nothing but an error.

On a deployed node Flower starts a fresh process for each message (in simulation it reuses
them): imports stay light until a handler runs, and a message imports only what it uses
(torch for train and evaluate requests, before the node's compute clock starts; never MONAI
for the small CNN; nothing heavy for describe). Every reply's ``metrics`` record carries
``compute-seconds``, the node's own work on the request (reading its cases, training or
evaluating), and ``startup-seconds``, what the message cost before that work began (the
process's start, imports, policy and audit set-up; for a process that served a message before,
from this message's arrival), so the coordinator can tell the federation's overhead from local
compute and from start-up.
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
STARTUP_SECONDS = "startup-seconds"

# Test-only fault hook, off unless the SuperNode's own environment names a marker file: the
# first request of the kind named by TEST_STALL_KIND_ENV (default train) then writes the file
# and waits until the test deletes it (at most TEST_STALL_SECONDS), so a fault test can kill or
# restart a process while a round is in flight (tests/test_federation_deploy.py). Nothing a
# server sends can switch it on.
TEST_STALL_ENV = "PROSTATE_FL_TEST_STALL_TRAIN"
TEST_STALL_KIND_ENV = "PROSTATE_FL_TEST_STALL_KIND"
TEST_STALL_SECONDS = 120.0


class _Clock:
    """When the message being handled arrived, and whether this process served one before."""

    served = False
    arrived = 0.0

    @classmethod
    def startup(cls) -> float | None:
        """Seconds from the process's start (first message) or the message's arrival (a reused
        process) until now; None where the process start time cannot be read."""
        if cls.served:
            return time.monotonic() - cls.arrived
        return _process_age()


def _process_age() -> float | None:
    """This process's age in seconds (Linux: its start time in /proc against the boot clock)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PolicyClientApp(ClientApp):
    """A ClientApp that answers every message type it does not serve with an audited
    refusal (Flower's own answer would be an unaudited error)."""

    def __call__(self, message: Message, context: Context) -> Message:
        _Clock.arrived = time.monotonic()
        try:
            if message.metadata.message_type not in KNOWN_TYPES:
                return handle("unexpected", message, context)
            return super().__call__(message, context)
        finally:
            _Clock.served = True


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
    if not marker or kind != os.environ.get(TEST_STALL_KIND_ENV, MSG_TRAIN):
        return
    path, released = Path(marker), Path(marker + ".released")
    if released.exists():  # held once already: later requests run normally
        return
    path.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + TEST_STALL_SECONDS
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    released.touch()


def _timed(role, kind: str, msg: Message, context: Context, node) -> tuple[Any, dict[str, Any]]:
    """Run the role's handler; add its duration to the reply's metrics as compute-seconds, and
    what the message cost before it as startup-seconds."""
    if kind in (MSG_TRAIN, MSG_EVALUATE):
        from shared.federation.local import preload

        preload()
    if node.options.get("threads"):  # after preload: torch is loaded by then
        from shared.worker_threads import limit_threads

        limit_threads(node.options["threads"])
    startup = _Clock.startup()
    t0 = time.perf_counter()
    content, details = role.handle(kind, msg, context, node)
    metrics = content.metric_records.get(METRICS)
    if metrics is not None:
        metrics[COMPUTE_SECONDS] = round(time.perf_counter() - t0, 4)
        if startup is not None:
            metrics[STARTUP_SECONDS] = round(startup, 4)
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
