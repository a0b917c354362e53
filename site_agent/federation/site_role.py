"""``role=site``: a hospital's node trains the classifier on its own cases for a few steps.

It trains on ``WORKSPACE/cases/synthetic`` (or ``cases/real`` only if the site's policy lists
``real``), returns classifier weights and numeric metrics only, optionally clips its update
(policy ``dp-clip-norm``), and appends every reply and refusal to the signed, hash-chained
``WORKSPACE/audit/audit.jsonl`` (the export log), so `site-agent audit verify` covers
federation too. Case ids and paths never leave the node.

Every reply carries the log's head (ConfigRecord ``audit-head``: entries so far and the last
one's hash), and each reply's own entry is also noted in ``WORKSPACE/federation/replies.jsonl``:
records outside the log that a wiped or shortened log no longer matches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.bundle.anchor import AUDIT_HEAD_RECORD
from shared.errors import InputError
from shared.federation.node import NodeIdentity
from shared.federation.policy import PolicyRefusal, check_request, load_policy
from shared.federation.records import (
    ARRAYS,
    CONFIG,
    LAYOUT,
    METRICS,
    MSG_DESCRIBE,
    MSG_EVALUATE,
    MSG_TRAIN,
    NODE,
    NUM_EXAMPLES,
    ROLE_SITE,
    pack_state,
    request_state,
)

CASE_STORES = {"synthetic": Path("cases") / "synthetic", "real": Path("cases") / "real"}


def _passphrase(node: NodeIdentity) -> str:
    from site_agent.export.keys import PASSPHRASE_ENV

    policy = load_policy(node.workspace, ROLE_SITE)
    if policy.audit_passphrase_file:
        path = Path(policy.audit_passphrase_file).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read audit-passphrase-file {path}: {exc}") from None
    value = os.environ.get(PASSPHRASE_ENV)
    if not value:
        raise InputError(
            f"the site key passphrase is needed for the audit log: set {PASSPHRASE_ENV} for "
            "the SuperNode or audit-passphrase-file in the federation policy"
        )
    return value


def open_audit(node: NodeIdentity) -> Callable[[str, dict[str, Any]], None]:
    """The site's signed audit log; fails (so the node answers nothing) without its key."""
    from site_agent.export import audit
    from site_agent.export.keys import load_signer

    signer = load_signer(node.workspace, _passphrase(node))

    def record(event: str, details: dict[str, Any]) -> None:
        entry = audit.append(node.workspace, signer, event, details | {"role": ROLE_SITE})
        if event == "federation-reply":
            _journal_reply(node.workspace, entry)

    return record


def _journal_reply(workspace: Path, entry: dict[str, Any]) -> None:
    """Note the reply's own audit entry (position and hash) outside the log."""
    import json

    from shared.bundle.anchor import AUDIT_HEAD_FIELD
    from site_agent.export import audit

    path = Path(workspace) / audit.REPLIES
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"time": entry["time"], AUDIT_HEAD_FIELD: audit.entry_head(entry).to_json()}
    with open(path, "a") as fh:  # append-only, like the log it anchors
        fh.write(json.dumps(line, sort_keys=True) + "\n")


def _head_record(workspace: Path):
    """The ConfigRecord that tells the server how far this site's audit log has come."""
    from flwr.app import ConfigRecord

    from site_agent.export import audit

    return ConfigRecord(audit.current_head(workspace).to_json())


def _load(node: NodeIdentity, data: str, sequences: list[str]):
    """The store's case tensors, decoded once and then read from ``WORKSPACE/work/federation``
    while the store's content is unchanged (every message is a fresh process)."""
    from shared.case_format import list_cases
    from shared.classifier.pretrain import select_channels
    from shared.federation.case_cache import cached_case_tensors

    folders = list_cases(node.workspace / CASE_STORES[data])
    if not folders:
        raise InputError(f"no {data} cases in this site's workspace")
    return select_channels(cached_case_tensors(node.workspace, data, folders), sequences)


def handle(kind: str, msg, context, node: NodeIdentity):
    """Return (RecordDict, audit details) or raise ``PolicyRefusal`` / ``InputError``."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    policy = load_policy(node.workspace, ROLE_SITE)
    if kind == MSG_DESCRIBE:
        counts = {
            d: len(list((node.workspace / p).glob("*/case.json")))
            for d, p in CASE_STORES.items()
            if d in policy.allowed_data
        }
        info = {"role": ROLE_SITE, "site": str(node.options.get("site", node.workspace.name))}
        info |= policy.summary()
        content = RecordDict(
            {
                NODE: ConfigRecord(info),
                METRICS: MetricRecord(
                    {NUM_EXAMPLES: int(sum(counts.values()))}
                    | {f"cases-{k}": v for k, v in counts.items()}
                ),
                AUDIT_HEAD_RECORD: _head_record(node.workspace),
            }
        )
        return content, {"returned": "description", "cases": counts}
    if kind == MSG_EVALUATE:
        raise PolicyRefusal("a site node does not evaluate (the target node does)")
    if kind != MSG_TRAIN:
        raise PolicyRefusal(f"message type {msg.metadata.message_type!r} is not served by a site")
    # torch (and MONAI) only for training: a describe answers without them (the ClientApp
    # starts anew for every message on a deployed node).
    from shared.federation.local import (
        arrays_digest,
        request_train_config,
        requested_sequences,
        train_local,
    )

    config = dict(msg.content.config_records.get(CONFIG, {}))
    req = check_request(policy, config, default_data="synthetic")
    sequences = requested_sequences(config)
    data = _load(node, req["data"], sequences)
    cfg = request_train_config(config, req["local-steps"], len(sequences))
    global_state = request_state(msg.content)
    res = train_local(global_state, data, cfg, policy.dp_clip_norm)
    state = res.state
    if node.options.get("test-fault") == "nan":  # test hook, set by the node itself only
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first] = state[first].clone().fill_(float("nan"))
    record, layout = pack_state(state, order=global_state)
    metrics = {
        NUM_EXAMPLES: len(data),
        "train-loss": res.loss,
        "local-steps": res.steps,
        "update-norm": res.update_norm,
        "clipped": int(res.clipped),
    }
    digest, nbytes = arrays_digest({k: v.numpy() for k, v in state.items()})
    content = RecordDict(
        {
            ARRAYS: record,
            LAYOUT: layout,
            METRICS: MetricRecord(metrics),
            AUDIT_HEAD_RECORD: _head_record(node.workspace),
        }
    )
    details = {
        "returned": ["classifier-weights", "metrics"],
        "data": req["data"],
        "cases": len(data),
        "weights-sha256": digest,
        "weights-bytes": nbytes,
        "metrics": metrics,
        "dp-clip-norm": policy.dp_clip_norm,
    }
    return content, details
