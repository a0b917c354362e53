"""``flwr_run`` against a stand-in ``flwr`` CLI: the run's log arrives whole, however long, and
the coordinator learns that the run ended from the end of its log stream."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from coordinator.federation import runner
from coordinator.federation.config import FederationConfig

# `flwr run` starts run 7; `flwr log 7 --stream` writes LINES lines (several pipe buffers)
# over about a second and then ends, as the SuperLink ends the stream of a finished run;
# `flwr ls` reports the run running until then, finished after, and counts its calls. Any
# other command (`flwr stop`, only sent on a timeout) does nothing and exits 0.
FAKE_FLWR = """#!{python}
import json, sys, time
from pathlib import Path
home = Path({home!r})
cmd = sys.argv[1]
if cmd == "run":
    print(json.dumps({{"success": True, "run-id": 7}}))
elif cmd == "log":
    for i in range({lines}):
        print(f"[federation] round {{i}}: " + "x" * 60, flush=i % 500 == 0)
        if i % 1000 == 0:
            time.sleep(0.2)
    sys.stdout.flush()
    (home / "stream-ended").touch()
elif cmd == "ls":
    with open(home / "ls-calls", "a") as f:
        f.write("1")
    done = (home / "stream-ended").exists()
    status = {status!r} if done else "running"
    print(json.dumps({{"success": True, "runs": [{{"run-id": 7, "status": status,
                                                 "status-details": "details"}}]}}))
"""


@pytest.mark.parametrize("final", ["finished:completed", "finished:failed"])
def test_the_whole_log_arrives_and_the_stream_end_tells_the_run_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final: str
) -> None:
    lines = 5000  # about 360 kB: a pipe nobody reads holds 64 kB
    fake = tmp_path / "flwr"
    fake.write_text(
        FAKE_FLWR.format(python=sys.executable, home=str(tmp_path), lines=lines, status=final)
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(runner, "flwr_bin", lambda name: str(fake))
    echoed: list[str] = []
    home = tmp_path / "flwr-home"
    home.mkdir()

    outcome = runner.flwr_run(
        home, "fedsim", FederationConfig(out_dir=str(tmp_path / "out")), timeout=120,
        echo=echoed.append,
    )  # fmt: skip

    assert (outcome.run_id, outcome.status, outcome.details) == (7, final, "details")
    got = [line for line in outcome.log.splitlines() if "[federation]" in line]
    assert len(got) == lines and got[-1].startswith(f"[federation] round {lines - 1}:")
    assert len(echoed) == lines
    # asked once, after the stream ended (polling every 2 s would have asked while it ran)
    assert (tmp_path / "ls-calls").read_text() == "1"
