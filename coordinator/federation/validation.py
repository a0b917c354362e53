"""Check every reply before it is aggregated.

A reply is rejected (and logged with its reason) if it is an error, lacks the ``arrays`` or
``metrics`` record or a positive finite ``num-examples``, has packed weights that do not fit
their ``layout``, other tensor names (or order), shapes or dtypes than the global model, holds
NaN or Inf, or if its update norm (distance from the global model) exceeds ``norm_factor``
times the median of the *other* replies' update norms, or if the site's audit-log head it
carries (ConfigRecord ``audit-head``) went backwards or moved to another hash at a position
seen before in this run: the site's log was cut back or rebuilt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.bundle.anchor import AUDIT_HEAD_RECORD, AuditHead
from shared.errors import IntegrityError
from shared.federation.records import (
    ARRAYS,
    LAYOUT,
    METRICS,
    NUM_EXAMPLES,
    unpack_state,
    update_norm,
)


@dataclass(frozen=True)
class Rejection:
    node_id: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"node-id": self.node_id, "reason": self.reason}


def _check_one(msg, reference: dict[str, np.ndarray]) -> tuple[str | None, float]:
    if msg.has_error():
        return f"error reply (code {msg.error.code}): {msg.error.reason}", math.nan
    content = msg.content
    if set(content.array_records) != {ARRAYS} or set(content.metric_records) != {METRICS}:
        return (
            f"reply must hold exactly '{ARRAYS}' and '{METRICS}' records, not "
            f"{sorted(content.array_records)} / {sorted(content.metric_records)}"
        ), math.nan
    n = content.metric_records[METRICS].get(NUM_EXAMPLES)
    if not isinstance(n, int | float) or not math.isfinite(n) or n <= 0:
        return f"'{NUM_EXAMPLES}' must be a positive number, not {n!r}", math.nan
    try:
        arrays = unpack_state(content.array_records[ARRAYS], content.config_records.get(LAYOUT))
    except ValueError as exc:
        return f"weights unreadable: {exc}", math.nan
    if list(arrays) != list(reference):
        if set(arrays) == set(reference):  # FedAvg averages packed arrays: order matters
            return "tensor order differs from the global model's", math.nan
        missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
        return f"tensor names differ (missing {missing[:3]}, unexpected {extra[:3]})", math.nan
    for k, ref in reference.items():
        a = arrays[k]
        if a.shape != ref.shape:
            return f"tensor {k} has shape {a.shape}, expected {ref.shape}", math.nan
        if a.dtype != ref.dtype:
            return f"tensor {k} has dtype {a.dtype}, expected {ref.dtype}", math.nan
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            return f"tensor {k} holds NaN or Inf", math.nan
    return None, update_norm(arrays, reference)


def audit_head_problem(node: int, raw: Any, seen: dict[int, tuple[int, str]]) -> str | None:
    """Why the audit head ``raw`` a node sent cannot follow the last one it sent (kept in
    ``seen``, updated when it fits); None for a node that sends none (a target node)."""
    if raw is None:
        return None
    try:
        head = AuditHead.parse(dict(raw), "audit head")
    except (IntegrityError, TypeError, ValueError) as exc:
        return f"unreadable audit head ({exc})"
    last = seen.get(node)
    if last is not None and head.seq < last[0]:
        return (
            f"the site's audit log went backwards: {head.seq} entries after {last[0]} in an "
            "earlier reply (truncated or wiped)"
        )
    if last is not None and head.seq == last[0] and head.hash != last[1]:
        return f"the site's audit log has another hash at entry {head.seq} (rewritten)"
    seen[node] = (head.seq, head.hash)
    return None


def validate_replies(
    replies: list,
    reference: dict[str, np.ndarray],
    norm_factor: float,
    heads: dict[int, tuple[int, str]] | None = None,
) -> tuple[list, list[Rejection], dict[int, float]]:
    """Split train replies into (accepted, rejected); also return each accepted update norm.
    ``heads`` (node -> last audit head seen) carries the audit-head check across rounds."""
    candidates: list[tuple[Any, float]] = []
    rejected: list[Rejection] = []
    heads = {} if heads is None else heads
    for msg in replies:
        reason, norm = _check_one(msg, reference)
        if reason is None:
            node = int(msg.metadata.src_node_id)
            reason = audit_head_problem(
                node, msg.content.config_records.get(AUDIT_HEAD_RECORD), heads
            )
        if reason:
            rejected.append(Rejection(int(msg.metadata.src_node_id), reason))
        else:
            candidates.append((msg, norm))
    accepted = []
    norms: dict[int, float] = {}
    for i, (msg, norm) in enumerate(candidates):
        others = [n for j, (_, n) in enumerate(candidates) if j != i]
        med = float(np.median(others)) if others else 0.0
        if others and med > 0 and norm > norm_factor * med:
            rejected.append(
                Rejection(
                    int(msg.metadata.src_node_id),
                    f"update norm {norm:.4g} is more than {norm_factor:g} x the others' median "
                    f"{med:.4g}",
                )
            )
        else:
            accepted.append(msg)
            norms[int(msg.metadata.src_node_id)] = norm
    return accepted, rejected, norms
