"""Who this node is: its role and workspace, from the SuperNode's node config.

Deployed: ``flower-supernode --node-config "role='site' workspace='/srv/site-ws'"``. In
simulation (no ``role`` in the node config, a ``partition-id`` injected by Flower) the run
config's ``sim-nodes`` JSON list maps partition ids to ``{"role", "workspace", ...}``. A node
config that names a role always wins, so a server cannot redirect a deployed node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import InputError
from shared.federation.records import ROLES

SIM_NODES_KEY = "sim-nodes"
# Options a node (never the server, except through sim-nodes in simulation) may set.
NODE_OPTIONS = ("site", "test-fault", "threads")
MAX_THREADS = 1024


@dataclass(frozen=True)
class NodeIdentity:
    role: str
    workspace: Path
    options: dict[str, Any] = field(default_factory=dict)
    simulated: bool = False


def resolve_node(node_config: dict[str, Any], run_config: dict[str, Any]) -> NodeIdentity:
    entry: dict[str, Any]
    simulated = False
    if "role" in node_config:
        entry = dict(node_config)
    elif "partition-id" in node_config and run_config.get(SIM_NODES_KEY):
        try:
            nodes = json.loads(str(run_config[SIM_NODES_KEY]))
            entry = dict(nodes[int(node_config["partition-id"])])
        except (ValueError, IndexError, TypeError, KeyError) as exc:
            raise InputError(f"simulation node map has no usable entry: {exc}") from None
        simulated = True
    else:
        raise InputError(
            "this SuperNode has no role: start it with "
            "--node-config \"role='site' workspace='/path/to/site-ws'\""
        )
    role = str(entry.get("role", ""))
    if role not in ROLES:
        raise InputError(f"node role must be one of {ROLES}, not {role!r}")
    ws = entry.get("workspace")
    if not ws:
        raise InputError("node config needs workspace='/path/to/workspace'")
    options = {k: entry[k] for k in NODE_OPTIONS if k in entry}
    if "threads" in options:  # the machine's admin caps the node's compute threads
        options["threads"] = _threads(options["threads"])
    folder = Path(str(ws)).expanduser().resolve()
    if not folder.is_dir():  # never create a workspace at a mistyped path
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"this node's workspace {folder} {what}")
    return NodeIdentity(role, folder, options, simulated)


def _threads(value: Any) -> int:
    """A node's ``threads`` option: a whole number of compute threads, 1 to ``MAX_THREADS``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_THREADS
    if not ok:
        raise InputError(
            f"node option threads must be a whole number from 1 to {MAX_THREADS}, not {value!r}"
        )
    return int(value)
