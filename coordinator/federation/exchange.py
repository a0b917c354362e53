"""One bounded request/reply exchange with a set of nodes, and what it cost.

Flower's ``grid.send_and_receive`` returns whatever arrived before its timeout but cannot say
which node a SuperLink-generated reply stands for (a node that stopped sending heartbeats is
answered by the SuperLink itself, from node id 1). Here every reply is matched to its request
by message id, so each node ends up either with its own reply or in ``missing`` with the
reason: offline before the round, unavailable (the SuperLink gave up on it), or silent until
the timeout. The wait never exceeds ``timeout``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Flower error codes (flwr.common.constant.ErrorCode) the SuperLink, not the node, answers with.
NODE_UNAVAILABLE = 5
# Replies are pulled after 0.1 s, then ever less often up to four times a second (Flower's own
# loop sleeps 3 s between pulls, which adds up to 3 s to every exchange; a 1 s ceiling still
# added 0.5 s on average). A pull is one small request to the SuperLink.
POLL_FIRST, POLL_MAX = 0.1, 0.25
# A node pushes its reply message before the reply's objects (its arrays), so a pull that sees
# the message first finds them missing and Flower's object pull waits 1 s, then 2 s, before
# asking again. Retried here after 0.05 s, doubling up to 0.5 s (a pull is one small request).
PULL_BACKOFF = (0.05, 0.5)


def quick_reply_pulls() -> bool:
    """Make the deployed grid's object pulls retry after ``PULL_BACKOFF`` instead of Flower's
    1 s / 10 s (this ServerApp process only); False where this Flower has no such grid."""
    import functools

    try:
        from flwr.superlink.grid import http_grid
    except ImportError:
        return False
    pull = getattr(http_grid, "pull_objects", None)
    if pull is None:
        return False
    http_grid.pull_objects = functools.partial(  # type: ignore[attr-defined]
        getattr(pull, "func", pull), initial_backoff=PULL_BACKOFF[0], backoff_cap=PULL_BACKOFF[1]
    )
    return True


@dataclass
class Exchange:
    replies: list  # the nodes' own replies (errors from a node's ClientApp included)
    missing: dict[int, str] = field(default_factory=dict)  # node id -> why no reply came
    seconds: float = 0.0
    array_bytes_down: int = 0  # ArrayRecord payloads sent to nodes
    array_bytes_up: int = 0  # ArrayRecord payloads in the replies
    wire_bytes_down: int = 0  # Flower's serialized message objects sent (per node)
    wire_bytes_up: int = 0  # ... and received

    def compute_max(self) -> float | None:
        """The slowest node's own compute seconds (as it reports them), if any reported."""
        return self._max("compute-seconds")

    def startup_max(self) -> float | None:
        """The longest ClientApp start-up a node reports (process start, imports) before its
        compute began, if any reported."""
        return self._max("startup-seconds")

    def _max(self, key: str) -> float | None:
        vals = [_reported(m, key) for m in self.replies]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None


def _reported(msg, key: str) -> float | None:
    """A number a node put in its reply's metrics."""
    if msg.has_error():
        return None
    met = msg.content.metric_records.get("metrics", {})
    v = met.get(key)
    return float(v) if isinstance(v, int | float) else None


def array_bytes(msg) -> int:
    """Bytes of the array payloads a message carries (what the model costs on the wire)."""
    if msg.has_error() or not msg.has_content():
        return 0
    return sum(len(a.data) for rec in msg.content.array_records.values() for a in rec.values())


def wire_bytes(msg) -> int:
    """Bytes of every serialized Flower object of a message (the message, its records, arrays
    and array chunks): what one node pushes or pulls, without HTTP/TLS framing."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(o.deflate()) for o in get_all_nested_objects(msg).values())


def exchange(
    grid,
    msgs: list,
    timeout: float,
    offline: dict[int, str] | None = None,
    timeout_name: str = "round-timeout",
) -> Exchange:
    """Send ``msgs`` and collect replies until each node answered or ``timeout`` passed.

    ``offline`` lists nodes left out before sending (recorded as missing, never waited for);
    ``timeout_name`` is the setting named when a node stays silent.
    """
    t0 = time.monotonic()
    ex = Exchange(replies=[], missing=dict(offline or {}))
    if not msgs:
        return ex
    sizes = {id(m.content): (array_bytes(m), wire_bytes(m)) for m in msgs}
    pushed = set(grid.push_messages(msgs))
    dst: dict[str, int] = {}
    for m in msgs:
        node = int(m.metadata.dst_node_id)
        if m.metadata.message_id in pushed:
            dst[m.metadata.message_id] = node
            ex.array_bytes_down += sizes[id(m.content)][0]
            ex.wire_bytes_down += sizes[id(m.content)][1]
        else:
            ex.missing[node] = "the request could not be sent"
    pending = set(dst)
    deadline, pause = t0 + timeout, POLL_FIRST
    while pending:
        for reply in grid.pull_messages(pending):
            mid = reply.metadata.reply_to_message_id
            if mid in pending:
                pending.discard(mid)
                _collect(ex, dst[mid], reply)
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, POLL_MAX)
    for mid in pending:
        ex.missing[dst[mid]] = f"no reply within {timeout_name} {timeout:g} s"
    ex.seconds = time.monotonic() - t0
    return ex


def _collect(ex: Exchange, node: int, reply: Any) -> None:
    if reply.has_error() and int(reply.metadata.src_node_id) != node:
        if reply.error.code == NODE_UNAVAILABLE:
            ex.missing[node] = "node unavailable (it disconnected or stopped sending heartbeats)"
        else:
            ex.missing[node] = f"no reply: {reply.error.reason}"
        return
    ex.replies.append(reply)
    ex.array_bytes_up += array_bytes(reply)
    ex.wire_bytes_up += wire_bytes(reply)
