"""The federation's rounds, driven through a Flower ``Grid``.

1. Discovery: wait (bounded) for nodes to connect, ask each for its role (``query.describe``).
2. Phase 1, ``pretrain-rounds`` rounds: the global classifier goes to every site node, which
   trains a few local steps on its synthetic cases; valid replies are averaged (FedAvg,
   weighted by ``num-examples``).
3. Phase 2, ``adapt-rounds`` rounds: source-free adaptation, the same on the target node(s)
   (fine-tuning on their external fraction; several targets are averaged).
4. After every round the target node(s) evaluate the new global model on their held-out split;
   the round's model and metrics are checkpointed; a rerun continues after the last one.

Every wait is bounded: ``node-wait-timeout`` for nodes to connect, ``round-timeout`` for a
round's replies. A round with fewer valid replies than its minimum stops the run with a message
naming what arrived, what was rejected and why (checkpoints so far are kept for resume).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.federation.checkpoints import CheckpointStore
from coordinator.federation.config import FederationConfig
from coordinator.federation.validation import validate_replies
from shared.errors import InputError, ToolkitError
from shared.federation.records import (
    ARRAYS,
    CONFIG,
    K_BATCH,
    K_DATA,
    K_FRACTION,
    K_LR,
    K_NETWORK,
    K_PHASE,
    K_RETURNS,
    K_ROUND,
    K_SEED,
    K_SEQUENCES,
    K_SPLIT,
    K_STEPS,
    METRICS,
    MSG_DESCRIBE,
    MSG_EVALUATE,
    MSG_TRAIN,
    NODE,
    ROLE_SITE,
    ROLE_TARGET,
    split_list,
)

LOG = logging.getLogger("coordinator.federation")


class FederationError(ToolkitError):
    """A round could not complete (too few valid replies, no nodes, a timeout)."""

    exit_code = 6


@dataclass
class NodeInfo:
    node_id: int
    role: str
    site: str
    cases: int


def _say(log: Callable[[str], None] | None, text: str) -> None:
    LOG.info(text)
    if log:
        log(text)


def initial_state(cfg: FederationConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The starting global model (seeded random init or ``initial-weights``) and its config."""
    import torch

    from shared.classifier.networks import build_classifier
    from shared.profiles import get_profile
    from shared.weights import load_weights

    seqs = split_list(cfg.sequences)
    grid = tuple(get_profile(cfg.profile).grid.size)
    model_cfg = {
        "network": cfg.network,
        "in_channels": len(seqs),
        "sequences": seqs,
        "grid_size": list(grid),
        "profile": cfg.profile,
        "federated": True,
    }
    if cfg.initial_weights:
        state, wcfg = load_weights(Path(cfg.initial_weights))
        if wcfg.get("network") != cfg.network or wcfg.get("in_channels") != len(seqs):
            raise InputError(
                f"initial weights {cfg.initial_weights} are a "
                f"{wcfg.get('network')} with {wcfg.get('in_channels')} channels"
            )
        return state, model_cfg | {"initial-weights": cfg.initial_weights}
    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg.network, len(seqs), grid)  # type: ignore[arg-type]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model_cfg


def wait_for_nodes(grid, cfg: FederationConfig, needed: int, log=None) -> list[int]:
    deadline = time.monotonic() + cfg.node_wait_timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= needed:
            return ids
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(ids)} node(s) connected after {cfg.node_wait_timeout:g} s, "
                f"{needed} needed",
                hint="check that every SuperNode runs and reaches the SuperLink",
            )
        time.sleep(1.0)


def discover(grid, cfg: FederationConfig, log=None) -> list[NodeInfo]:
    from flwr.app import ConfigRecord, Message, RecordDict

    needed = max(cfg.expected_nodes, cfg.min_sites * (cfg.pretrain_rounds > 0) + cfg.min_targets)
    ids = wait_for_nodes(grid, cfg, max(needed, 1), log)
    msgs = [
        Message(
            RecordDict({CONFIG: ConfigRecord({K_ROUND: 0})}),
            dst_node_id=n,
            message_type=MSG_DESCRIBE,
        )
        for n in ids
    ]
    replies = list(grid.send_and_receive(msgs, timeout=cfg.round_timeout))
    nodes = []
    for m in replies:
        src = int(m.metadata.src_node_id)
        if m.has_error():
            _say(log, f"node {src} did not describe itself: {m.error.reason}")
            continue
        info = m.content.config_records.get(NODE, {})
        met = m.content.metric_records.get(METRICS, {})
        nodes.append(
            NodeInfo(
                src,
                str(info.get("role", "")),
                str(info.get("site", "")),
                int(met.get("num-examples", 0)),
            )
        )
    for n in nodes:
        _say(log, f"node {n.node_id}: role {n.role}, {n.site}, {n.cases} case(s)")
    return nodes


def _request(cfg: FederationConfig, phase: str, r: int) -> dict[str, Any]:
    common = {
        K_ROUND: r,
        K_PHASE: phase,
        K_SEED: cfg.seed,
        K_NETWORK: cfg.network,
        K_SEQUENCES: cfg.sequences,
        K_RETURNS: cfg.returns,
    }
    if phase == "pretrain":
        return common | {
            K_DATA: cfg.pretrain_data,
            K_STEPS: cfg.pretrain_steps,
            K_LR: cfg.pretrain_lr,
            K_BATCH: cfg.pretrain_batch,
        }
    return common | {
        K_DATA: "external",
        K_STEPS: cfg.adapt_steps,
        K_LR: cfg.adapt_lr,
        K_BATCH: cfg.adapt_batch,
        K_FRACTION: cfg.adapt_fraction,
        K_SPLIT: cfg.split,
    }


def _weighted(replies: list, key: str) -> float | None:
    vals, ws = [], []
    for m in replies:
        met = m.content.metric_records.get(METRICS, {})
        v, w = met.get(key), met.get("num-examples", 0)
        if isinstance(v, int | float) and np.isfinite(v) and w:
            vals.append(float(v))
            ws.append(float(w))
    return float(np.average(vals, weights=ws)) if vals else None


def run_federation(grid, cfg: FederationConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run (or continue) the federation; return a summary with output paths."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.serverapp.strategy import FedAvg

    store = CheckpointStore(Path(cfg.out_dir))
    phases = [cfg.phase_of(r) for r in range(1, cfg.total_rounds + 1)]
    fp = cfg.fingerprint()
    state, model_cfg = initial_state(cfg)
    resumed = store.resume(fp, phases)
    start = 1
    if resumed:
        last, state = resumed
        start = last + 1
        _say(log, f"resuming after round {last} of {cfg.total_rounds}")
    if start > cfg.total_rounds:
        paths = store.write_final(state, model_cfg)
        return {"rounds": cfg.total_rounds, "resumed-from": start - 1, "ran": 0} | paths
    nodes = discover(grid, cfg, log)
    sites = [n.node_id for n in nodes if n.role == ROLE_SITE]
    targets = [n.node_id for n in nodes if n.role == ROLE_TARGET]
    if cfg.pretrain_rounds >= start and len(sites) < cfg.min_sites:
        raise FederationError(f"{len(sites)} site node(s) answered, {cfg.min_sites} needed")
    if len(targets) < cfg.min_targets and (cfg.adapt_rounds > 0):
        raise FederationError(f"{len(targets)} target node(s) answered, {cfg.min_targets} needed")
    strategy = FedAvg(weighted_by_key="num-examples")
    ran = 0
    for r in range(start, cfg.total_rounds + 1):
        t0 = time.monotonic()
        phase = phases[r - 1]
        trainers = sites if phase == "pretrain" else targets
        minimum = cfg.min_sites if phase == "pretrain" else cfg.min_targets
        arrays = ArrayRecord(state)
        reference = {k: v.numpy() for k, v in arrays.items()}
        content = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(_request(cfg, phase, r))})
        msgs = [Message(content, dst_node_id=n, message_type=MSG_TRAIN) for n in trainers]
        replies = list(grid.send_and_receive(msgs, timeout=cfg.round_timeout))
        answered = {int(m.metadata.src_node_id) for m in replies}
        missing = sorted(set(trainers) - answered)
        accepted, rejected, _ = validate_replies(replies, reference, cfg.norm_factor)
        rej = [x.to_json() for x in rejected] + [
            {"node-id": n, "reason": f"no reply within round-timeout {cfg.round_timeout:g} s"}
            for n in missing
        ]
        store.append_rejections(r, rej)
        for x in rej:
            _say(log, f"round {r}: rejected node {x['node-id']}: {x['reason']}")
        if len(accepted) < minimum:
            raise FederationError(
                f"round {r} ({phase}): {len(accepted)} valid repl(ies) of {len(trainers)} "
                f"node(s), {minimum} needed; rejected: "
                + ("; ".join(f"node {x['node-id']}: {x['reason']}" for x in rej) or "none"),
                hint="checkpoints up to the previous round are kept; rerun to continue",
            )
        new_arrays, _ = strategy.aggregate_train(r, accepted)
        assert new_arrays is not None
        state = new_arrays.to_torch_state_dict()
        row: dict[str, Any] = {
            "round": r,
            "phase": phase,
            "trainers": len(trainers),
            "accepted": len(accepted),
            "rejected": len(rejected),
            "missing": len(missing),
            "train-loss": _weighted(accepted, "train-loss"),
        }
        if targets:
            ev_content = RecordDict(
                {ARRAYS: new_arrays, CONFIG: ConfigRecord(_request(cfg, "adapt", r))}
            )
            ev = [Message(ev_content, dst_node_id=n, message_type=MSG_EVALUATE) for n in targets]
            ev_replies = list(grid.send_and_receive(ev, timeout=cfg.round_timeout))
            ok = [m for m in ev_replies if not m.has_error()]
            for m in ev_replies:
                if m.has_error():
                    _say(
                        log,
                        f"round {r}: evaluation failed on node "
                        f"{m.metadata.src_node_id}: {m.error.reason}",
                    )
            row |= {k: _weighted(ok, k) for k in ("test-auc", "test-ap", "test-loss")}
            row["evaluators"] = len(ok)
        row["seconds"] = round(time.monotonic() - t0, 2)
        store.save_round(r, phase, state, row, model_cfg, fp)
        ran += 1
        _say(
            log,
            f"round {r}/{cfg.total_rounds} ({phase}) done: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in row.items()
                if k not in ("round", "phase")
            ),
        )
        if cfg.stop_after_round and r >= cfg.stop_after_round and r < cfg.total_rounds:
            _say(log, f"stopping after round {r} as configured (rerun to continue)")
            return {"rounds": r, "resumed-from": start - 1, "ran": ran, "stopped": True}
    paths = store.write_final(state, model_cfg)
    return {"rounds": cfg.total_rounds, "resumed-from": start - 1, "ran": ran} | paths
