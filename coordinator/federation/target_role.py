"""``role=target``: the coordinator's data node adapts the model to its external data.

Train requests fine-tune the global model for a few steps on a label-stratified fraction of the
external training split (the study's split and nested fractions, same seeds); evaluate requests
score the global model on the held-out test split, and so does a train request that asks for it
(``evaluate-received``: the received model's scores come back as ``received-*`` metrics).
Source data is never read here. Replies and refusals go to
``WORKSPACE/federation/journal.jsonl`` (one JSON line each).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import InputError
from shared.federation.node import NodeIdentity
from shared.federation.policy import PolicyRefusal, check_request, load_policy
from shared.federation.records import (
    ARRAYS,
    CONFIG,
    K_EVALUATE_RECEIVED,
    K_FRACTION,
    K_SPLIT,
    LAYOUT,
    METRICS,
    MSG_DESCRIBE,
    MSG_EVALUATE,
    MSG_TRAIN,
    NODE,
    NUM_EXAMPLES,
    RECEIVED,
    ROLE_TARGET,
    pack_state,
    request_state,
)

EXTERNAL = Path("cases") / "external"
JOURNAL = Path("federation") / "journal.jsonl"


def open_audit(node: NodeIdentity) -> Callable[[str, dict[str, Any]], None]:
    path = node.workspace / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)

    def record(event: str, details: dict[str, Any]) -> None:
        line = json.dumps(
            {
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "event": event,
                "details": details | {"role": ROLE_TARGET},
            },
            sort_keys=True,
        )
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line + "\n")
            fcntl.flock(fh, fcntl.LOCK_UN)

    return record


def _parse_split(value: Any) -> tuple[dict[str, float], int]:
    parts = [p.strip() for p in str(value or "0.6,0.15,0.25,0").split(",")]
    try:
        tr, va, te = (float(p) for p in parts[:3])
        seed = int(parts[3]) if len(parts) > 3 else 0
    except ValueError:
        raise InputError(f"split must be 'train,val,test,seed', not {value!r}") from None
    return {"train": tr, "val": va, "test": te}, seed


def _data(node: NodeIdentity, config: dict[str, Any], sequences: list[str]):
    from coordinator.study.splits import stratified_split
    from shared.case_format import list_cases
    from shared.classifier.pretrain import select_channels
    from shared.federation.case_cache import cached_case_tensors

    folders = list_cases(node.workspace / EXTERNAL)
    if not folders:
        raise InputError(f"no external cases in {node.workspace / EXTERNAL}")
    # decoded once, then read from WORKSPACE/work/federation while the store is unchanged
    data = select_channels(cached_case_tensors(node.workspace, "external", folders), sequences)
    fractions, split_seed = _parse_split(config.get(K_SPLIT))
    split = stratified_split(data.y.astype(int).tolist(), fractions, split_seed)
    return data, split, split_seed


def handle(kind: str, msg, context, node: NodeIdentity):
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    policy = load_policy(node.workspace, ROLE_TARGET)
    if kind == MSG_DESCRIBE:  # answered without torch: a fresh process per message
        n = len(list((node.workspace / EXTERNAL).glob("*/case.json")))
        info = {"role": ROLE_TARGET, "site": str(node.options.get("site", "target"))}
        content = RecordDict(
            {
                NODE: ConfigRecord(info | policy.summary()),
                METRICS: MetricRecord({NUM_EXAMPLES: n, "cases-external": n}),
            }
        )
        return content, {"returned": "description", "cases": n}
    if kind not in (MSG_TRAIN, MSG_EVALUATE):
        raise PolicyRefusal(f"message type {msg.metadata.message_type!r} is not served")
    return _work(kind, msg, node, policy)


def _work(kind: str, msg, node: NodeIdentity, policy):
    """Train or evaluate request: check it against the policy, then fine-tune or score."""
    from flwr.app import MetricRecord, RecordDict

    from coordinator.study.splits import fraction_subsets
    from shared.federation.local import (
        arrays_digest,
        request_train_config,
        requested_sequences,
        train_local,
    )

    config = dict(msg.content.config_records.get(CONFIG, {}))
    steps_cfg = config if kind == MSG_TRAIN else config | {"local-steps": 1}
    req = check_request(policy, steps_cfg, default_data="external")
    sequences = requested_sequences(config)
    data, split, _split_seed = _data(node, config, sequences)
    global_state = request_state(msg.content)
    network = str(config.get("network", "small-cnn"))
    if kind == MSG_EVALUATE:
        metrics = _score(global_state, data.subset(split.test), network)
        content = RecordDict({METRICS: MetricRecord(metrics)})
        return content, {"returned": ["metrics"], "data": "external", "metrics": metrics}
    # the previous round's global model, scored before this round trains on it
    received = (
        {RECEIVED + k: v for k, v in _score(global_state, data.subset(split.test), network).items()}
        if config.get(K_EVALUATE_RECEIVED)
        else {}
    )
    fraction = float(config.get(K_FRACTION, 1.0))
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must lie in (0, 1], not {fraction}")
    seed = int(config.get("seed", 0))
    subset = fraction_subsets(data.y.astype(int).tolist(), split.train, [fraction], seed)[fraction]
    train = data.subset(subset)
    cfg = request_train_config(config, req["local-steps"], len(sequences))
    res = train_local(global_state, train, cfg, policy.dp_clip_norm)
    metrics = {
        NUM_EXAMPLES: len(train),
        "train-loss": res.loss,
        "local-steps": res.steps,
        "update-norm": res.update_norm,
        "clipped": int(res.clipped),
    } | received
    digest, nbytes = arrays_digest({k: v.numpy() for k, v in res.state.items()})
    arrays, layout = pack_state(res.state, order=global_state)
    content = RecordDict({ARRAYS: arrays, LAYOUT: layout, METRICS: MetricRecord(metrics)})
    return content, {
        "returned": ["classifier-weights", "metrics"],
        "data": "external",
        "fraction": fraction,
        "cases": len(train),
        "weights-sha256": digest,
        "weights-bytes": nbytes,
        "metrics": metrics,
    }


def _score(state, test, network: str) -> dict[str, float | int]:
    """The held-out split's scores of ``state`` (``num-examples`` is the split's size)."""
    from shared.federation.local import evaluate_local

    m = evaluate_local(state, test, network)
    auc, ap, loss = m["auc"], m["ap"], m["loss"]
    return {NUM_EXAMPLES: len(test), "test-auc": auc, "test-ap": ap, "test-loss": loss}
