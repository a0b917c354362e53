"""Flower's ``flower-supernode``, with its fixed poll sleeps capped.

Flower 1.42's SuperNode asks the SuperLink for work every 3 s while idle and looks for its
ClientApp's reply every 0.5 s: fixed ``time.sleep`` calls in
``flwr.supernode.start_client_internal``, with no setting. Each exchange of a round (train,
then evaluation) waits on average half of each, about 1.75 s, before and after the node's own
work. This entry point runs Flower's own SuperNode unchanged except that those sleeps last at
most ``SUPERNODE_POLL_SECONDS`` (0.25 s by default): one small request to the SuperLink per
poll, over the node's existing TLS connection, with the same node authentication. Likewise the
pull of a message's objects (its arrays) from the SuperLink retries after 0.05 s instead of
Flower's 1 s (doubling up to 0.5 s instead of 10 s) when it asks before they have all arrived.

Arguments are ``flower-supernode``'s. Started by ``deploy/supernode.sh`` (its
``--stock-flower`` flag runs Flower's own binary instead).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from flower_retries import retry_sooner  # deploy/, beside this script

POLL_ENV = "SUPERNODE_POLL_SECONDS"
DEFAULT_POLL = 0.25
# Flower's sleeps shorter than this wait on the node's own state (in memory), not on the
# SuperLink: they are cut to LOCAL_WAIT.
LOCAL_BELOW = 1.0
LOCAL_WAIT = 0.02


class _CappedSleep:
    """``time`` for one module: ``sleep`` lasts at most ``cap`` seconds (``LOCAL_WAIT`` for
    Flower's in-memory waits, those under ``LOCAL_BELOW``); the rest is time's."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, LOCAL_WAIT if seconds < LOCAL_BELOW else self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def poll_seconds() -> float:
    raw = os.environ.get(POLL_ENV, str(DEFAULT_POLL))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.01 <= value <= 3.0:
        raise SystemExit(f"error: ${POLL_ENV} must be 0.01-3 seconds, not {raw!r}")
    return value


def patch(cap: float) -> None:
    """Cap the SuperNode loop's sleeps (the module must still be Flower's as read here)."""
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time:
        raise SystemExit(
            "error: this Flower's SuperNode loop is not the one supernode_fast_poll.py knows; "
            "run deploy/supernode.sh --stock-flower"
        )
    loop.time = _CappedSleep(cap)  # type: ignore[assignment]
    retry_sooner(loop, "pull_objects")


def main() -> int:
    patch(poll_seconds())
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
