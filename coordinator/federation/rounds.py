"""The federation's rounds, driven through a Flower ``Grid``.

1. Discovery: wait (bounded) for nodes to connect, ask each for its role (``query.describe``).
2. Phase 1, ``pretrain-rounds`` rounds: the global classifier goes to every site node, which
   trains a few local steps on its synthetic cases; valid replies are averaged (FedAvg,
   weighted by ``num-examples``).
3. Phase 2, ``adapt-rounds`` rounds: source-free adaptation, the same on the target node(s)
   (fine-tuning on their external fraction; several targets are averaged).
4. After every round the target node(s) evaluate the new global model on their held-out split;
   the round's model and metrics are checkpointed; a rerun continues after the last one. When
   phase 1 ends its global model is also written to ``OUT/pretrained/`` (the study's
   ``kind = "federated"`` condition starts from it).

Every wait is bounded: ``node-wait-timeout`` for nodes to connect, ``round-timeout`` for each
exchange of a round. A node that disconnects mid-round is recorded as missing for that round
(``metrics.csv`` column ``missing-nodes``, ``rejections.jsonl``): offline before the round, given
up by the SuperLink (no heartbeat), or silent until ``round-timeout``. The round goes on with
the others when they meet its minimum (``min-sites`` / ``min-targets``); otherwise the run stops
with a one-line message naming what arrived, what was missing or rejected and why
(checkpoints so far are kept for resume). Each row also records the round's cost: wall time,
the slowest node's own compute time per exchange (the nodes report it), the overhead between
them, and the bytes of the arrays and of Flower's serialized messages in both directions.
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
from coordinator.federation.exchange import Exchange, exchange
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
    LAYOUT,
    METRICS,
    MSG_DESCRIBE,
    MSG_EVALUATE,
    MSG_TRAIN,
    NODE,
    ROLE_SITE,
    ROLE_TARGET,
    pack_state,
    split_list,
    unpack_state,
    unpack_torch,
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
    # Describing is part of joining: bounded like the wait for nodes, not like a round.
    ex = exchange(grid, msgs, cfg.node_wait_timeout, timeout_name="node-wait-timeout")
    for n, why in ex.missing.items():
        _say(log, f"node {n} did not describe itself: {why}")
    nodes = []
    for m in ex.replies:
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


def _reached(grid, nodes: list[int]) -> tuple[list[int], dict[int, str]]:
    """The nodes still connected, and why the others are left out of this exchange."""
    online = set(grid.get_node_ids())
    gone = {n: "offline before the round (no heartbeat)" for n in nodes if n not in online}
    return [n for n in nodes if n in online], gone


def _costs(train: Exchange, evaluation: Exchange | None, seconds: float) -> dict[str, Any]:
    """Round wall time, the slowest node's compute time per exchange, what is left over
    (the federation's overhead) and the bytes moved in both directions."""
    exchanges = [train] + ([evaluation] if evaluation else [])
    compute = [ex.compute_max() for ex in exchanges]
    return {
        "evaluators": sum(1 for m in evaluation.replies if not m.has_error())
        if evaluation
        else None,
        "seconds": round(seconds, 3),
        "train-seconds": round(train.seconds, 3),
        "train-compute-max": compute[0],
        "train-startup-max": train.startup_max(),
        "eval-seconds": round(evaluation.seconds, 3) if evaluation else None,
        "eval-compute-max": compute[1] if evaluation else None,
        "eval-startup-max": evaluation.startup_max() if evaluation else None,
        "overhead-seconds": round(seconds - sum(c or 0.0 for c in compute), 3),
        "array-bytes-down": sum(ex.array_bytes_down for ex in exchanges),
        "array-bytes-up": sum(ex.array_bytes_up for ex in exchanges),
        "wire-bytes-down": sum(ex.wire_bytes_down for ex in exchanges),
        "wire-bytes-up": sum(ex.wire_bytes_up for ex in exchanges),
    }


class Federation:
    """One run's rounds over the discovered nodes: who trains, what is sent, what is kept."""

    def __init__(
        self,
        grid,
        cfg: FederationConfig,
        nodes: list[NodeInfo],
        store: CheckpointStore,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from flwr.serverapp.strategy import FedAvg

        self.grid, self.cfg, self.store, self.log = grid, cfg, store, log
        self.sites = [n.node_id for n in nodes if n.role == ROLE_SITE]
        self.targets = [n.node_id for n in nodes if n.role == ROLE_TARGET]
        self.names = {n.node_id: n.site or n.role for n in nodes}
        self.strategy = FedAvg(weighted_by_key="num-examples")
        self.audit_heads: dict[int, tuple[int, str]] = {}  # each site's last audit-log head

    def name(self, node: int) -> str:
        return f"{self.names.get(node, 'node')} (node {node})"

    def send(
        self, packed: tuple[Any, Any], config: dict[str, Any], nodes: list[int], kind: str
    ) -> Exchange:
        """One bounded exchange with the nodes of ``nodes`` that are still connected;
        ``packed`` is the global model as ``pack_state`` returns it."""
        from flwr.app import ConfigRecord, Message, RecordDict

        reached, offline = _reached(self.grid, nodes)
        arrays, layout = packed
        content = RecordDict({ARRAYS: arrays, LAYOUT: layout, CONFIG: ConfigRecord(config)})
        msgs = [Message(content, dst_node_id=n, message_type=kind) for n in reached]
        return exchange(self.grid, msgs, self.cfg.round_timeout, offline)

    def run_round(
        self, r: int, phase: str, state: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train on the phase's nodes, check and average their replies (every rejection and
        missing reply is logged), evaluate on the target node(s). Returns (new state, metrics
        row); raises ``FederationError`` when fewer valid replies than the minimum arrive."""
        cfg, t0 = self.cfg, time.monotonic()
        trainers = self.sites if phase == "pretrain" else self.targets
        minimum = cfg.min_sites if phase == "pretrain" else cfg.min_targets
        packed = pack_state(state)
        reference = unpack_state(*packed)
        ex = self.send(packed, _request(cfg, phase, r), trainers, MSG_TRAIN)
        accepted, rejected, _ = validate_replies(
            ex.replies, reference, cfg.norm_factor, self.audit_heads
        )
        rej = [x.to_json() | {"node": self.name(x.node_id)} for x in rejected] + [
            {"node-id": n, "node": self.name(n), "reason": why, "missing": True}
            for n, why in sorted(ex.missing.items())
        ]
        self.store.append_rejections(r, rej)
        for x in rej:
            _say(self.log, f"round {r}: no usable reply from {x['node']}: {x['reason']}")
        if len(accepted) < minimum:
            raise FederationError(
                f"round {r} ({phase}): {len(accepted)} valid repl(ies) of {len(trainers)} "
                f"node(s), {minimum} needed; "
                + "; ".join(f"{x['node']}: {x['reason']}" for x in rej),
                hint="checkpoints up to the previous round are kept; rerun to continue",
            )
        # every accepted reply's layout is the request's (validation), so FedAvg over the
        # packed arrays is FedAvg over the tensors
        new_arrays, _ = self.strategy.aggregate_train(r, accepted)
        assert new_arrays is not None
        new = (new_arrays, packed[1])
        row: dict[str, Any] = {
            "round": r,
            "phase": phase,
            "trainers": len(trainers),
            "accepted": len(accepted),
            "rejected": len(rejected),
            "missing": len(ex.missing),
            "missing-nodes": "; ".join(self.name(n) for n in sorted(ex.missing)),
            "train-loss": _weighted(accepted, "train-loss"),
        }
        evaluation = self.evaluate(r, new)
        if evaluation:
            ok = [m for m in evaluation.replies if not m.has_error()]
            row |= {k: _weighted(ok, k) for k in ("test-auc", "test-ap", "test-loss")}
        row |= _costs(ex, evaluation, time.monotonic() - t0)
        return unpack_torch(*new), row

    def evaluate(self, r: int, packed: tuple[Any, Any]) -> Exchange | None:
        """Score the new global model on the target node(s)' held-out split."""
        if not self.targets:
            return None
        ex = self.send(packed, _request(self.cfg, "adapt", r), self.targets, MSG_EVALUATE)
        for n, why in ex.missing.items():
            _say(self.log, f"round {r}: no evaluation from {self.name(n)}: {why}")
        for m in ex.replies:
            if m.has_error():
                node = self.name(int(m.metadata.src_node_id))
                _say(self.log, f"round {r}: evaluation failed on {node}: {m.error.reason}")
        return ex


def _describe_row(row: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in row.items()
        if k not in ("round", "phase") and v not in (None, "")
    )


def run_federation(grid, cfg: FederationConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run (or continue) the federation; return a summary with output paths."""
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
        if 0 < cfg.pretrain_rounds <= last:  # phase 1 finished in an earlier run
            store.ensure_pretrained(cfg.pretrain_rounds, model_cfg)
    if start > cfg.total_rounds:
        paths = store.write_final(state, model_cfg)
        return {"rounds": cfg.total_rounds, "resumed-from": start - 1, "ran": 0} | paths
    nodes = discover(grid, cfg, log)
    fed = Federation(grid, cfg, nodes, store, log)
    if cfg.pretrain_rounds >= start and len(fed.sites) < cfg.min_sites:
        raise FederationError(f"{len(fed.sites)} site node(s) answered, {cfg.min_sites} needed")
    if len(fed.targets) < cfg.min_targets and (cfg.adapt_rounds > 0):
        raise FederationError(
            f"{len(fed.targets)} target node(s) answered, {cfg.min_targets} needed"
        )
    ran = 0
    for r in range(start, cfg.total_rounds + 1):
        phase = phases[r - 1]
        state, row = fed.run_round(r, phase, state)
        store.save_round(r, phase, state, row, model_cfg, fp)
        if r == cfg.pretrain_rounds:
            store.write_pretrained(state, model_cfg, r)
        ran += 1
        _say(log, f"round {r}/{cfg.total_rounds} ({phase}) done: {_describe_row(row)}")
        if cfg.stop_after_round and r >= cfg.stop_after_round and r < cfg.total_rounds:
            _say(log, f"stopping after round {r} as configured (rerun to continue)")
            return {"rounds": r, "resumed-from": start - 1, "ran": ran, "stopped": True}
    paths = store.write_final(state, model_cfg)
    return {"rounds": cfg.total_rounds, "resumed-from": start - 1, "ran": ran} | paths
