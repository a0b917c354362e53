"""Flower's object pulls, retried sooner (used by the deploy launchers).

A message's objects (its arrays) are pulled after the message itself; a pull that comes before
they have all arrived waits Flower 1.42's 1 s, then 2 s (up to 10 s) before asking again.
``retry_sooner`` rebinds one of Flower's pull functions to retry after ``PULL_BACKOFF``.
"""

from __future__ import annotations

import functools
from types import ModuleType

PULL_BACKOFF = (0.05, 0.5)  # first and longest retry pause, s (Flower: 1 and 10)


def retry_sooner(module: ModuleType, name: str) -> None:
    """Rebind ``module.name`` (a Flower function with ``initial_backoff`` and ``backoff_cap``
    keywords) to retry after ``PULL_BACKOFF``; patching twice wraps Flower's function once."""
    fn = getattr(module, name)
    setattr(
        module,
        name,
        functools.partial(
            getattr(fn, "func", fn), initial_backoff=PULL_BACKOFF[0], backoff_cap=PULL_BACKOFF[1]
        ),
    )
