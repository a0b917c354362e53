"""Progress a service manager can read: plain timestamped lines when stderr is not a terminal,
at a bounded rate, and "resumed STAGE from step N" after an interruption, in both modes."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from shared.progress_log import ProgressLog, format_duration

STAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_are_timestamped_and_bounded():
    buf, clock = io.StringIO(), FakeClock()
    log = ProgressLog(stream=buf, interval=30.0, clock=clock)
    for step in range(1, 1001):  # 1000 steps at 10 steps/s: 100 s in all
        clock.t = step / 10
        log.update("autoencoder", step, 1000, loss=0.5 / step)
    lines = buf.getvalue().splitlines()
    assert all(re.match(STAMP, ln) for ln in lines), lines
    # started + one per tenth (the 30 s interval never comes first at this pace) + nothing more
    assert len(lines) == 11, lines
    assert lines[0].endswith("autoencoder: started, 1000 steps")
    assert "step 100/1000 (10%) loss 0.005 10.00 steps/s ETA 1m30s" in lines[1]
    assert "step 1000/1000 (100%)" in lines[-1] and "done in 1m40s" in lines[-1]


def test_slow_stage_logs_every_interval():
    buf, clock = io.StringIO(), FakeClock()
    log = ProgressLog(stream=buf, interval=30.0, clock=clock)
    for step in range(1, 41):  # 40 of 1000 steps, one per 10 s: no tenth is crossed
        clock.t = 10.0 * step
        log.update("diffusion", step, 1000, loss=1.0)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 + 13, lines  # started, then one line per 30 s
    assert "ETA 2h" in lines[-1]


def test_resumed_stage_says_so():
    buf, clock = io.StringIO(), FakeClock()
    log = ProgressLog(stream=buf, clock=clock)
    log.update("autoencoder", 300, 1000, None, resumed=True)
    clock.t = 10.0
    log.update("autoencoder", 400, 1000, 0.1)
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("autoencoder: resumed from step 300 of 1000")
    assert "10.00 steps/s" in lines[1]  # the rate counts this run's steps only


def test_steps_finished_together_give_no_rate_until_a_second_has_passed():
    """Parallel workers finish several steps at once right after the start: the rate over a
    few milliseconds (and its ETA of 0 s) would be nonsense, so the first line has neither."""
    buf, clock = io.StringIO(), FakeClock()
    log = ProgressLog(stream=buf, clock=clock)
    log.update("phantom aurora", 0, 20)
    clock.t = 0.01
    log.update("phantom aurora", 2, 20)
    clock.t = 4.0
    log.update("phantom aurora", 4, 20)
    lines = buf.getvalue().splitlines()
    assert lines[1].endswith("phantom aurora: step 2/20 (10%)"), lines
    assert lines[2].endswith("step 4/20 (20%) 1.00 steps/s ETA 16s"), lines


def test_format_duration():
    assert [format_duration(s) for s in (5, 90, 3 * 3600 + 120)] == ["5s", "1m30s", "3h02m"]


def _feed(cb) -> None:
    cb("autoencoder", 300, 1000, None)  # what run_training sends when it resumes
    cb("autoencoder", 301, 1000, 0.25)
    cb("latents", 1, 8, None)  # encoding: loss is always None, never a resume


def test_plain_training_progress_names_the_resume(capsys):
    from site_agent.cli.generative_commands import stage_progress

    with stage_progress(True, terminal=False) as cb:
        _feed(cb)
    err = capsys.readouterr().err
    assert re.search(STAMP + r"autoencoder: resumed from step 300 of 1000$", err, re.M), err
    assert "encoding latents: started, 8 steps" in err
    assert "resumed encoding" not in err


def test_terminal_training_progress_names_the_resume(monkeypatch):
    from site_agent.cli import generative_commands

    buf = io.StringIO()
    monkeypatch.setattr(
        generative_commands, "err", Console(file=buf, force_terminal=True, width=120)
    )
    with generative_commands.stage_progress(True, terminal=True) as cb:
        _feed(cb)
    assert "resumed autoencoder from step 300 of 1000" in buf.getvalue()


def test_progress_bar_is_plain_lines_without_a_terminal(capsys):
    from shared.cli_support import progress_bar

    with progress_bar("ingesting studies", 4) as advance:
        for _ in range(4):
            advance(1)
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("ingesting studies: started, 4 steps")
    assert "step 4/4 (100%)" in err[-1]


@pytest.mark.slow
def test_killed_training_logs_where_it_was_and_resumes(tmp_path, capsys):
    """A real (tiny) autoencoder run under a service manager: killed after step 3, the log
    shows its steps; the rerun says where it resumed."""
    from site_agent.cli.generative_commands import stage_progress
    from site_agent.generative import autoencoder as ae
    from site_agent.generative.data import load_training_set
    from tests.test_generative import make_workspace, small_profile

    prof = small_profile()
    data = load_training_set(make_workspace(tmp_path / "ws", n=4, n_pos=2) / "cases" / "real")

    class Killed(Exception):
        pass

    def killed_at(cb, step_to_die: int):
        def wrapped(stage, step, total, loss):
            cb(stage, step, total, loss)
            if step == step_to_die:
                raise Killed

        return wrapped

    with pytest.raises(Killed), stage_progress(True, terminal=False) as cb:
        ae.train_autoencoder(data, prof.autoencoder, tmp_path / "run", 3, killed_at(cb, 3))
    first = capsys.readouterr().err
    assert "autoencoder: started" in first and "autoencoder: step" in first, first
    with stage_progress(True, terminal=False) as cb:
        ae.train_autoencoder(data, prof.autoencoder, tmp_path / "run", 3, cb)
    again = capsys.readouterr().err
    assert re.search(r"autoencoder: resumed from step 2 of \d+", again), again
