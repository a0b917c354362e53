"""deploy/warm_superexec.py (ClientApp processes forked from a warm SuperExec) and
deploy/supernode_fast_poll.py (the SuperNode's poll sleeps capped).

The deployed path itself (SuperLink, SuperNodes, messages answered by forked ClientApps) runs in
tests/test_federation_deploy.py; these tests pin what the fork must keep: one process per
message, nothing of the toolkit imported before the FAB's copy, other task types left to
Flower's own executor, exit codes as ``flwr-clientapp`` gives them; and that the poll patch
shortens only sleeps, refuses a Flower it does not know and a bad setting.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
if str(DEPLOY) not in sys.path:  # the launchers import flower_retries from beside them
    sys.path.append(str(DEPLOY))


def _module(name: str = "warm_superexec"):
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _spec(task_type, token: str = "tok") -> SimpleNamespace:
    return SimpleNamespace(
        task_type=task_type,
        runtime_api_address="127.0.0.1:1",
        token=token,
        insecure=True,
        root_certificates_path=None,
        parent_pid=os.getpid(),
        runtime_dependency_install=False,
    )


def test_preload_imports_libraries_but_none_of_the_toolkit():
    """The child must import the ClientApp from the FAB, so the parent may not hold any module
    of this toolkit (a cached ``shared`` would shadow the FAB's copy)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import warm_superexec as w; "
        "took = w.preload(); "
        "ours = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('shared', 'site_agent', 'coordinator', 'benchmarks')); "
        "print(json.dumps({'took': took, 'ours': ours}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["ours"] == []
    assert {"torch", "numpy", "flwr.supernode.runtime.run_clientapp"} <= set(rec["took"])


def test_preload_skips_a_missing_library():
    w = _module()
    took = w.preload(("json", "no_such_library_here"))
    assert list(took) == ["json"]


def test_each_clientapp_task_runs_in_a_forked_child_of_its_own(tmp_path, monkeypatch):
    from flwr.supercore.constant import TaskType

    w = _module()
    seen = tmp_path / "seen"

    def fake_run_clientapp(**kwargs):  # stands in for Flower's, in the child
        with open(seen, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "token": kwargs["token"]}) + "\n")
        raise SystemExit(0)  # flwr_exit ends every ClientApp run this way

    import flwr.supernode.runtime.run_clientapp as flower_run

    monkeypatch.setattr(flower_run, "run_clientapp", fake_run_clientapp)
    ex = w.ForkExecutor()
    for token in ("a", "b"):
        assert ex.launch(_spec(TaskType.CLIENT_APP, token)).status.name == "ACCEPTED"
    deadline = time.monotonic() + 60
    while ex._children and time.monotonic() < deadline:
        ex.reconcile()
        time.sleep(0.05)
    assert not ex._children  # both children exited and were reaped
    rows = [json.loads(ln) for ln in seen.read_text().splitlines()]
    assert sorted(r["token"] for r in rows) == ["a", "b"]
    pids = {r["pid"] for r in rows}
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.parametrize(
    ("raised", "code"), [(SystemExit(0), 0), (SystemExit(1), 1), (RuntimeError("x"), 1)]
)
def test_the_child_exit_code_follows_the_clientapp_run(monkeypatch, raised, code):
    import flwr.supernode.runtime.run_clientapp as flower_run
    from flwr.supercore.constant import TaskType
    from flwr.supercore.exit import exit_handler

    w = _module()

    def run(**kwargs):
        raise raised

    monkeypatch.setattr(flower_run, "run_clientapp", run)
    monkeypatch.setattr(exit_handler, "registered_exit_handlers", [object()])
    assert w._run_clientapp(_spec(TaskType.CLIENT_APP)) == code
    assert exit_handler.registered_exit_handlers == []  # the parent's handlers are not run


def test_other_task_types_go_to_flowers_own_executor(monkeypatch):
    from flwr.supercore.constant import TaskType

    w = _module()
    ex = w.ForkExecutor()
    launched = []
    monkeypatch.setattr(ex._cold, "launch", lambda spec: launched.append(spec) or "cold")
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked a non-ClientApp task"))
    other = next(t for t in TaskType if t != TaskType.CLIENT_APP)
    assert ex.launch(_spec(other)) == "cold" and len(launched) == 1


def test_arguments_follow_flower_superexec():
    w = _module()
    a = w.parse_args(["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--parent-pid", "7"])
    assert (a.runtime_api_address, a.insecure, a.parent_pid) == ("127.0.0.1:9094", True, 7)
    with pytest.raises(SystemExit):
        w.parse_args(["--runtime-api-address", "x"])  # TLS or --insecure must be chosen


def test_supernode_poll_sleeps_are_capped_and_nothing_else_changes(monkeypatch):
    import time as real_time

    from flwr.supernode import start_client_internal as loop

    fp = _module("supernode_fast_poll")
    monkeypatch.setattr(loop, "time", real_time)  # restored after the test
    fp.patch(0.05)
    slept: list[float] = []
    monkeypatch.setattr(real_time, "sleep", slept.append)
    loop.time.sleep(3)  # Flower's idle poll of the SuperLink
    loop.time.sleep(0.5)  # Flower's wait for the ClientApp's reply, in the node's memory
    loop.time.sleep(0.001)  # shorter than the cap: as asked
    assert slept == [0.05, fp.LOCAL_WAIT, 0.001]
    assert loop.time.monotonic is real_time.monotonic  # the rest is time's own
    with pytest.raises(SystemExit, match="stock-flower"):
        fp.patch(0.05)  # a second patch: the loop's time is no longer the module it knows


@pytest.mark.parametrize(("raw", "ok"), [("0.25", True), ("0", False), ("fast", False)])
def test_supernode_poll_setting_is_checked(monkeypatch, raw, ok):
    fp = _module("supernode_fast_poll")
    monkeypatch.setenv(fp.POLL_ENV, raw)
    if ok:
        assert fp.poll_seconds() == float(raw)
    else:
        with pytest.raises(SystemExit, match=fp.POLL_ENV):
            fp.poll_seconds()


def test_object_pulls_retry_after_50_ms_in_every_process_of_a_round(monkeypatch):
    """A ClientApp, a SuperNode and the ServerApp each pull a message's objects; each asks
    again after 0.05 s (Flower: 1 s, then 2 s), and patching twice does not nest."""
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.runtime import run_clientapp as flower_run

    from coordinator.federation.exchange import quick_reply_pulls

    for module, name in (
        (flower_run, "pull_and_inflate_object_from_tree"),
        (loop, "pull_objects"),
        (loop, "time"),
        (http_grid, "pull_objects"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored afterwards
    warm, fast = _module(), _module("supernode_fast_poll")
    for _ in range(2):
        warm.fast_object_pulls()
        assert quick_reply_pulls()
    fast.patch(0.25)
    for patched, original in (
        (flower_run.pull_and_inflate_object_from_tree, "pull_and_inflate_object_from_tree"),
        (loop.pull_objects, "pull_objects"),
        (http_grid.pull_objects, "pull_objects"),
    ):
        assert patched.func.__name__ == original  # Flower's own function, wrapped once
        assert patched.keywords == {"initial_backoff": 0.05, "backoff_cap": 0.5}


@pytest.mark.parametrize(("threads", "rc"), [("2", 0), ("0", 2), ("1025", 2), ("two", 2)])
def test_supernode_launcher_puts_threads_in_the_node_config(tmp_path, threads, rc):
    """``supernode.sh --threads N`` reaches the ClientApp as the node option threads=N (a
    stand-in flower-supernode prints what it was given); a bad N stops it in one line."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "flower-supernode").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "flower-supernode").chmod(0o755)
    ws = tmp_path / "ws"
    ws.mkdir()
    res = subprocess.run(
        ["bash", str(DEPLOY / "supernode.sh"), "--superlink", "127.0.0.1:9092", "--role", "site",
         "--workspace", str(ws), "--insecure", "--stock-flower", "--threads", threads],
        capture_output=True, text=True, timeout=60,
        env=os.environ | {"FLWR_BIN": str(fake), "FLWR_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert res.returncode == rc, res.stderr
    if rc == 0:
        assert f"role='site' workspace='{ws.resolve()}' threads=2" in res.stdout.splitlines()
    else:
        assert "--threads must be a whole number from 1 to 1024" in res.stderr
