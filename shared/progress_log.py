"""Progress as plain timestamped lines, for when nobody watches a terminal.

Under a service manager (systemd, cron, ``nohup ... > log``) stderr is a journal or a file: a
redrawn progress bar writes nothing readable there until it finishes, so a killed run leaves
an empty log. ``ProgressLog`` writes one line when a stage starts (or resumes), then at most
one every ``interval`` seconds or each further tenth of the stage, and one when it ends::

    2026-03-01T10:02:11+01:00 autoencoder: resumed from step 300 of 1000
    2026-03-01T10:02:41+01:00 autoencoder: step 420/1000 (42%) loss 0.0187 4.00 steps/s ETA 2m25s

Each line is flushed, so ``journalctl -u ...`` or ``tail -f`` shows where a run is.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

DEFAULT_INTERVAL_S = 30.0
MIN_RATE_SECONDS = 1.0


def format_duration(seconds: float) -> str:
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class _Stage:
    start_step: int
    start_time: float
    last_time: float
    last_tenth: int
    done: bool = False


@dataclass
class ProgressLog:
    """Plain progress lines on ``stream`` (stderr by default), rate-limited per stage."""

    stream: TextIO | None = None
    interval: float = DEFAULT_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    stages: dict[str, _Stage] = field(default_factory=dict)

    def line(self, text: str) -> None:
        stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        out = self.stream or sys.stderr
        out.write(f"{stamp} {text}\n")
        out.flush()

    def update(
        self,
        stage: str,
        step: int,
        total: int | None,
        loss: float | None = None,
        *,
        resumed: bool = False,
    ) -> None:
        """Record that ``stage`` reached ``step`` of ``total``; ``resumed`` marks the first call
        of a stage that continues from a checkpoint at ``step``."""
        now = self.clock()
        st = self.stages.get(stage)
        if st is None:
            # The rate counts from this first call: its steps (done before it, or before the
            # run that was resumed) took an unknown time.
            st = self.stages[stage] = _Stage(step, now, now, _tenth(step, total))
            if resumed:
                of = f" of {total}" if total else ""
                self.line(f"{stage}: resumed from step {step}{of}")
                return
            self.line(f"{stage}: started" + (f", {total} steps" if total else ""))
        if st.done:
            return
        finished = total is not None and step >= total
        tenth = _tenth(step, total)
        if not finished and tenth <= st.last_tenth and now - st.last_time < self.interval:
            return
        st.last_time, st.last_tenth, st.done = now, max(tenth, st.last_tenth), finished
        self.line(f"{stage}: {self._describe(st, step, total, loss, now)}")

    def _describe(
        self, st: _Stage, step: int, total: int | None, loss: float | None, now: float
    ) -> str:
        parts = [f"step {step}/{total} ({100 * step // total}%)" if total else f"step {step}"]
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        elapsed = now - st.start_time
        # Under a second of timing (steps that finished together, in parallel workers) gives
        # no rate worth printing, let alone an ETA.
        rate = (step - st.start_step) / elapsed if elapsed >= MIN_RATE_SECONDS else 0.0
        if rate > 0:
            parts.append(f"{rate:.2f} steps/s" if rate < 100 else f"{rate:.0f} steps/s")
            if total and step < total:
                parts.append(f"ETA {format_duration((total - step) / rate)}")
        if total and step >= total:
            parts.append(f"done in {format_duration(elapsed)}")
        return " ".join(parts)


def _tenth(step: int, total: int | None) -> int:
    return 10 * step // total if total else 0
