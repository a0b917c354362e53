"""The federation's rounds, driven through a Flower ``Grid``.

1. Discovery: wait (bounded) for nodes to connect, ask each for its role (``query.describe``).
2. Phase 1, ``pretrain-rounds`` rounds: the global classifier goes to every site node, which
   trains a few local steps on its synthetic cases; valid replies are averaged (FedAvg,
   weighted by ``num-examples``).
3. Phase 2, ``adapt-rounds`` rounds: source-free adaptation, the same on the target node(s)
   (fine-tuning on their external fraction; several targets are averaged).
4. The target node(s) score every round's global model on their held-out split. That
   evaluation rides with the next round's requests instead of costing an exchange of its own:
   in the pretraining phase the target nodes get an evaluate request beside the sites' train
   requests (all carry the same global model); in the adaptation phase their train request
   asks them to score the received model before training on it (``evaluate-received``). Only
   the last round's model is scored in an exchange of its own. Each round's model and metrics
   are checkpointed (its test scores are added when they arrive); a rerun continues after the
   last round, scoring it first if its scores had not arrived. When phase 1 ends its global
   model is also written to ``OUT/pretrained/`` (the study's ``kind = "federated"`` condition
   starts from it).

Every wait is bounded: ``node-wait-timeout`` for nodes to connect, ``round-timeout`` for each
exchange of a round. A node that disconnects mid-round is recorded as missing for that round
(``metrics.csv`` column ``missing-nodes``, ``rejections.jsonl``): offline before the round, given
up by the SuperLink (no heartbeat), or silent until ``round-timeout``. The round goes on with
the others when they meet its minimum (``min-sites`` / ``min-targets``); otherwise the run stops
with a one-line message naming what arrived, what was missing or rejected and why
(checkpoints so far are kept for resume). Each row also records the round's cost: wall time,
the slowest node's own compute time (the nodes report it; nodes of one exchange work side by
side), the overhead beyond it, and the bytes of the arrays and of Flower's serialized messages
in both directions. The last round's row includes the exchange that scores its model.
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
    K_EVALUATE_RECEIVED,
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
    NUM_EXAMPLES,
    RECEIVED,
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


def _weighted(metrics: list[dict[str, Any]], key: str) -> float | None:
    """``key`` averaged over ``metrics`` (one dict per reply), weighted by ``num-examples``;
    non-finite or missing values are left out."""
    vals, ws = [], []
    for met in metrics:
        v, w = met.get(key), met.get(NUM_EXAMPLES, 0)
        if isinstance(v, int | float) and np.isfinite(v) and w:
            vals.append(float(v))
            ws.append(float(w))
    return float(np.average(vals, weights=ws)) if vals else None


def _metrics(replies: list, prefix: str = "") -> list[dict[str, Any]]:
    """Each non-error reply's metrics whose keys start with ``prefix``, without it (the
    ``received-*`` scores of a target's train reply read like an evaluate reply's)."""
    out = []
    for m in replies:
        if not m.has_error():
            met = m.content.metric_records.get(METRICS, {})
            out.append({k.removeprefix(prefix): v for k, v in met.items() if k.startswith(prefix)})
    return out


SCORES = ("test-auc", "test-ap", "test-loss")


def _pooled(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluators' scores averaged, weighted by their test-split sizes."""
    scores = [s for s in scores if SCORES[0] in s]
    return {"evaluators": len(scores)} | {k: _weighted(scores, k) for k in SCORES}


def _reached(grid, nodes: list[int]) -> tuple[list[int], dict[int, str]]:
    """The nodes still connected, and why the others are left out of this exchange."""
    online = set(grid.get_node_ids())
    gone = {n: "offline before the round (no heartbeat)" for n in nodes if n not in online}
    return [n for n in nodes if n in online], gone


def _from(ex: Exchange, nodes: list[int]) -> Exchange:
    """The part of ``ex`` that ``nodes`` answered (or missed); time and bytes are the whole's."""
    keep = set(nodes)
    part = Exchange(
        replies=[m for m in ex.replies if int(m.metadata.src_node_id) in keep],
        missing={n: why for n, why in ex.missing.items() if n in keep},
    )
    part.seconds = ex.seconds
    return part


def _costs(
    ex: Exchange,
    trainers: list[int],
    scorers: list[int],
    scoring: Exchange | None,
    seconds: float,
) -> dict[str, Any]:
    """Round wall time, the slowest node's compute and start-up, what is left over (the
    federation's overhead: nodes of one exchange work side by side, so the slowest one's
    compute counts) and the bytes moved in both directions. ``scorers`` scored the previous
    model beside the training; ``scoring`` is the exchange of its own that scores the last
    round's model."""
    train, beside = _from(ex, trainers), _from(ex, scorers)
    compute = [ex.compute_max()] + ([scoring.compute_max()] if scoring else [])
    exchanges = [ex] + ([scoring] if scoring else [])
    return {
        "seconds": round(seconds, 3),
        "train-seconds": round(ex.seconds, 3),
        "train-compute-max": train.compute_max(),
        "train-startup-max": train.startup_max(),
        # evaluate requests beside the train requests (the previous model's), or the last
        # round's scoring exchange
        "eval-seconds": round(scoring.seconds, 3) if scoring else None,
        "eval-compute-max": (scoring or beside).compute_max(),
        "eval-startup-max": (scoring or beside).startup_max(),
        "overhead-seconds": round(seconds - sum(c or 0.0 for c in compute), 3),
        "array-bytes-down": sum(x.array_bytes_down for x in exchanges),
        "array-bytes-up": sum(x.array_bytes_up for x in exchanges),
        "wire-bytes-down": sum(x.wire_bytes_down for x in exchanges),
        "wire-bytes-up": sum(x.wire_bytes_up for x in exchanges),
    }


Request = tuple[list[int], str, dict[str, Any]]  # nodes, message type, config


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

    def send(self, packed: tuple[Any, Any], requests: list[Request]) -> Exchange:
        """One bounded exchange: each request (nodes, message type, config) goes to those of
        its nodes that are still connected, all with ``packed``, the global model as
        ``pack_state`` returns it."""
        from flwr.app import ConfigRecord, Message, RecordDict

        arrays, layout = packed
        msgs, offline = [], {}
        for nodes, kind, config in requests:
            reached, gone = _reached(self.grid, nodes)
            offline |= gone
            content = RecordDict({ARRAYS: arrays, LAYOUT: layout, CONFIG: ConfigRecord(config)})
            msgs += [Message(content, dst_node_id=n, message_type=kind) for n in reached]
        return exchange(self.grid, msgs, self.cfg.round_timeout, offline)

    def run_round(
        self, r: int, phase: str, state: dict[str, Any], score: int | None, last: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train on the phase's nodes, check and average their replies (every rejection and
        missing reply is logged). ``score`` names the round whose model ``state`` is, if its
        test scores are still to come: the target node(s) score it in the same exchange. The
        ``last`` round's new model is scored at once, in an exchange of its own. Returns (new
        state, metrics row); round ``score``'s scores go to its checkpoint at once. Raises
        ``FederationError`` when fewer valid replies than the minimum arrive."""
        cfg, t0 = self.cfg, time.monotonic()
        trainers = self.sites if phase == "pretrain" else self.targets
        minimum = cfg.min_sites if phase == "pretrain" else cfg.min_targets
        packed = pack_state(state)
        reference = unpack_state(*packed)
        train_cfg = _request(cfg, phase, r)
        requests: list[Request] = [(trainers, MSG_TRAIN, train_cfg)]
        scorers: list[int] = []
        if score is not None and self.targets:
            scorers = [n for n in self.targets if n not in trainers]
            if scorers:
                requests.append((scorers, MSG_EVALUATE, _request(cfg, "adapt", score)))
            if len(scorers) < len(self.targets):  # target trainers score what they receive
                train_cfg[K_EVALUATE_RECEIVED] = True
        ex = self.send(packed, requests)
        train = _from(ex, trainers)
        accepted, rejected, _ = validate_replies(
            train.replies, reference, cfg.norm_factor, self.audit_heads
        )
        rej = [x.to_json() | {"node": self.name(x.node_id)} for x in rejected] + [
            {"node-id": n, "node": self.name(n), "reason": why, "missing": True}
            for n, why in sorted(train.missing.items())
        ]
        self.store.append_rejections(r, rej)
        for x in rej:
            _say(self.log, f"round {r}: no usable reply from {x['node']}: {x['reason']}")
        if score is not None and self.targets:
            scored = self._scored(score, _from(ex, scorers), train.replies)
            self.store.score_round(score, scored)  # kept even if this round fails below
            _say(self.log, f"round {score}'s model scored: {_describe_row(scored)}")
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
            "missing": len(train.missing),
            "missing-nodes": "; ".join(self.name(n) for n in sorted(train.missing)),
            "train-loss": _weighted(_metrics(accepted), "train-loss"),
        }
        closing = None
        if last and self.targets:
            closing = self.send(new, [(self.targets, MSG_EVALUATE, _request(cfg, "adapt", r))])
            row |= self._scored(r, closing, [])
        row |= _costs(ex, trainers, scorers, closing, time.monotonic() - t0)
        return unpack_torch(*new), row

    def _scored(self, r: int, evaluated: Exchange, trained: list) -> dict[str, Any]:
        """Round ``r``'s model's pooled test scores: from the evaluate replies of
        ``evaluated`` and the ``received-*`` scores of target train replies ``trained``."""
        for n, why in evaluated.missing.items():
            _say(self.log, f"round {r}: no evaluation from {self.name(n)}: {why}")
        for m in evaluated.replies:
            if m.has_error():
                node = self.name(int(m.metadata.src_node_id))
                _say(self.log, f"round {r}: evaluation failed on {node}: {m.error.reason}")
        targets = set(self.targets)
        own = [m for m in trained if int(m.metadata.src_node_id) in targets]
        return _pooled(_metrics(evaluated.replies) + _metrics(own, RECEIVED))


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
    # a resumed run first scores the last checkpointed model if its scores had not arrived
    rows = store.rows()
    pending = start - 1 if rows and "evaluators" not in rows[-1] else None
    for r in range(start, cfg.total_rounds + 1):
        phase = phases[r - 1]
        last = r == cfg.total_rounds or bool(cfg.stop_after_round and r >= cfg.stop_after_round)
        state, row = fed.run_round(r, phase, state, pending, last)
        pending = r
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
