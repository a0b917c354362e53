"""One workspace, one writer: the lock names its holder, a second writer is refused in one
line (exit 7), a killed holder leaves no lock behind, and a failed first command leaves no
workspace behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.errors import EXIT_BUSY, InputError, WorkspaceBusyError
from shared.workspace_lock import LOCK_FILE, read_holder, workspace_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from shared.workspace_lock import workspace_lock\n"
    "with workspace_lock(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/ws, as a second `site-agent train` would."""
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(ws)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield ws, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_writer_is_refused_naming_the_holder(holder):
    ws, proc = holder
    with pytest.raises(WorkspaceBusyError) as info, workspace_lock(ws):
        pass
    assert f"in use by pid {proc.pid} (-c {ws}) on " in info.value.message  # its argv
    assert info.value.exit_code == EXIT_BUSY
    h = read_holder(ws)
    assert h is not None and h.pid == proc.pid


def test_console_script_refuses_a_busy_workspace(holder):
    ws, proc = holder
    res = subprocess.run(
        [str(Path(sys.executable).parent / "site-agent"), "generate", "--n", "1", "-w", str(ws)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == EXIT_BUSY, res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"error: workspace {ws} is in use by pid {proc.pid}"), lines
    assert len(lines) == 2 and lines[1].startswith("hint:"), lines


def test_a_killed_holder_leaves_no_lock(holder):
    ws, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_holder(ws) is not None  # its record is still there: stale
    with workspace_lock(ws) as me:
        assert read_holder(ws) == me  # taken over, record replaced
    assert read_holder(ws) is None  # released: the file reads as free


def test_a_stale_record_without_a_lock_is_taken_over(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / LOCK_FILE).write_text(
        json.dumps({"pid": 999999, "command": "site-agent train", "host": "h", "started": "t"})
    )
    with workspace_lock(ws) as me:
        assert me.pid == os.getpid()


def test_a_failed_first_command_leaves_no_workspace(tmp_path):
    ws = tmp_path / "new" / "deeper" / "ws"
    with pytest.raises(InputError), workspace_lock(ws):
        raise InputError("bad input")
    assert not (tmp_path / "new").exists()
    with workspace_lock(ws):
        (ws / "cases").mkdir()
    assert (ws / "cases").is_dir()  # a successful one keeps what it made


def test_a_failed_command_keeps_what_it_wrote(tmp_path):
    ws = tmp_path / "ws"
    with pytest.raises(InputError), workspace_lock(ws):
        (ws / "secrets").mkdir()
        raise InputError("late failure")
    assert (ws / "secrets").is_dir()


def test_missing_or_file_workspaces_are_input_errors(tmp_path):
    with (
        pytest.raises(InputError, match="does not exist"),
        workspace_lock(tmp_path / "none", create=False),
    ):
        pass
    assert not (tmp_path / "none").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="is a file"), workspace_lock(tmp_path / "f"):
        pass


def test_the_lock_is_released_on_exit(tmp_path):
    ws = tmp_path / "ws"
    with workspace_lock(ws):
        pass
    t0 = time.perf_counter()
    with workspace_lock(ws):
        pass
    assert time.perf_counter() - t0 < 1


def test_a_file_system_without_flock_runs_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with workspace_lock(tmp_path / "ws") as me:
        assert me.pid == os.getpid()
