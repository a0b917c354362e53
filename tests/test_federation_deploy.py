"""Deployment on loopback: a real flower-superlink (TLS, SuperNode auth, state database) and
flower-supernode processes (two sites, one target) started through deploy/*.sh.

First test, one set of processes and certificates:

1. A SuperNode with an unregistered key is refused.
2. A site node disconnects while round 1 is in flight (SIGTERM once its train handler runs):
   with ``min-sites = 1`` met by the other site the 2-round federation (1 pretraining +
   1 adaptation round) is recorded as finished:completed, ``metrics.csv`` names the missing
   node for round 1, and ``pretrained/`` and ``final/`` are written.
3. The node is restarted and crashes (SIGKILL) mid-round with ``min-sites = 2``: the run ends
   by its ``round-timeout`` with a one-line message naming the node, a failed status and no
   checkpoint.

Second test: a SuperNode restarted mid-run rejoins and the run completes; a SuperLink
restarted on its database keeps its registrations and the federation resumes after its last
checkpointed round.

Robust on a busy machine: every wait is event-driven (a marker file, a checkpoint, a node's
log, the SuperLink's own answer for a node that said goodbye) with a generous safety bound, and
the one round-timeout a check relies on (the crash in 3) is derived from what a train exchange
took earlier in the same test. Nothing asserts how fast anything was.

A node is held in a handler by the test-only ``PROSTATE_FL_TEST_STALL_TRAIN`` hook (with
``PROSTATE_FL_TEST_STALL_KIND``; ``shared/federation/client_app.py``), so it can be killed or
restarted mid-round. Every process group started here is stopped and nothing with the test's
FLWR_HOME is left running. Select it with ``pytest tests/test_federation_deploy.py`` (marked
``slow``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.federation.config import load_fed_toml
from coordinator.federation.runner import RunFailed, run_fed_toml
from shared.federation.client_app import TEST_STALL_ENV, TEST_STALL_KIND_ENV
from shared.federation.records import MSG_EVALUATE
from tests.federation_support import Deployment, make_consortium

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("openssl") and shutil.which("ssh-keygen")),
        reason="needs openssl and ssh-keygen",
    ),
]

NODES = (("aurora", "site"), ("borealis", "site"), ("target", "target"))


class _Background:
    """``run_fed_toml`` in a thread, so the test can kill a node while a round runs."""

    def __init__(self, cfg: Path) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self.thread.start()

    def _run(self, cfg: Path) -> None:
        try:  # the timeout is a safety bound for a machine under load
            self.result = run_fed_toml(load_fed_toml(cfg), timeout=900)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the federation run did not end"


def _wait_for_stall(marker: Path, run: _Background, timeout: float = 900) -> float:
    """Wait until the stalled node's handler runs (the round is in flight); ``timeout`` is a
    safety bound only."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert run.thread.is_alive(), f"the run ended before the node stalled: {run.error!r}"
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.2)
    return time.monotonic()


def _wait_for_log(log: Path, text: str, count: int, run: _Background, timeout: float = 900) -> None:
    """Wait until ``text`` appears ``count`` times in a process's log; ``timeout`` is a safety
    bound only."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < count:
        assert run.thread.is_alive(), f"the run ended first: {run.error!r}"
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-1500:]
        time.sleep(0.2)


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "metrics.csv").open()))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_tls_deployment_refuses_intruders_and_survives_a_node_lost_mid_round(tmp_path):
    ws = make_consortium(tmp_path / "ws")
    stall = {"a": tmp_path / "stall-a", "b": tmp_path / "stall-b"}
    with Deployment(tmp_path) as dep:
        dep.start_superlink()
        for name, role in NODES:
            dep.make_key(name)
            env = {TEST_STALL_ENV: str(stall["a"])} if name == "aurora" else None
            dep.start_node(name, role, ws[name], env)
        dep.wait_online(3)
        dep.make_key("intruder", register=False)
        intruder = dep.start_node("intruder", "site", ws["aurora"])

        # (a) aurora disconnects mid-round; borealis alone meets min-sites = 1
        out = tmp_path / "out-a"
        # round-timeout stays generous: the stopped node says goodbye, the SuperLink answers
        # for it at once, so nothing waits for the timeout (only a hung node would)
        run = _Background(dep.fed_toml(tmp_path / "a.toml", out, (1, 1), 1))
        _wait_for_stall(stall["a"], run)
        dep.stop_node("aurora")
        run.join(900)
        assert run.error is None, run.error
        assert run.result.status == "finished:completed"
        runs = json.loads(dep.flwr("ls", "tls", "--format", "json").stdout)["runs"]
        assert [r["status"] for r in runs if int(r["run-id"]) == run.result.run_id] == [
            "finished:completed"
        ]
        rows = _rows(out)
        assert [(r["round"], r["phase"], r["accepted"], r["missing"]) for r in rows] == [
            ("1", "pretrain", "1", "1"),
            ("2", "adapt", "1", "0"),
        ]
        assert "aurora" in rows[0]["missing-nodes"] and not rows[1]["missing-nodes"]
        (lost,) = _jsonl(out / "rejections.jsonl")
        assert lost["round"] == 1 and lost["missing"] and "aurora" in lost["node"]
        for f in ("final/model.safetensors", "pretrained/model.safetensors", "metrics.png"):
            assert (out / f).is_file(), f
        assert json.loads((out / "state.json").read_text())["last-round"] == 2
        assert "federation-reply" in (ws["borealis"] / "audit" / "audit.jsonl").read_text()
        # borealis answered through deploy/warm_superexec.py (ClientApps forked warm)
        assert "warm SuperExec: preloaded" in dep.logs["borealis"].read_text()

        # the unregistered key was refused meanwhile and its SuperNode gave up
        assert intruder.poll() is not None, "the unregistered SuperNode is still running"
        text = dep.logs["intruder"].read_text()
        assert "Failed to activate" in text or "must be registered" in text, text[-1500:]

        # (b) aurora back, then it crashes mid-round; min-sites = 2 cannot be met. A crashed
        # node sends no goodbye, so here the round-timeout is what ends the round: derived
        # from what a train exchange took above on this machine, and below the 30 s or more
        # that the SuperLink takes to give up on a silent node (so the timeout comes first)
        took = max(float(r["train-seconds"]) for r in rows)
        timeout = round(min(30.0, max(10.0, 2 * took)))
        dep.start_node("aurora", "site", ws["aurora"], {TEST_STALL_ENV: str(stall["b"])})
        dep.wait_online(3)
        out = tmp_path / "out-b"
        cfg = dep.fed_toml(tmp_path / "b.toml", out, (1, 0), 2, round_timeout=timeout)
        run = _Background(cfg)
        _wait_for_stall(stall["b"], run)
        dep.crash_node("aurora")
        run.join(900)
        assert isinstance(run.error, RunFailed), run.error
        message = run.error.message
        assert "\n" not in message and "finished:failed" in message, message
        assert "round 1 (pretrain)" in message and "2 needed" in message, message
        reason = rf"aurora \(node \d+\): no reply within round-timeout {timeout} s"
        assert re.search(reason, message), message
        assert not (out / "state.json").exists() and not (out / "final").exists()
        lost = [x for x in _jsonl(out / "rejections.jsonl") if "aurora" in x["node"]]
        assert [(x["round"], x["missing"]) for x in lost] == [(1, True)]
        runs = json.loads(dep.flwr("ls", "tls", "--format", "json").stdout)["runs"]
        assert runs and all(r["status"].startswith("finished") for r in runs)
    assert all(p.poll() is not None for p in dep.procs)
    deadline = time.monotonic() + 20  # killed groups are gone at once; give stragglers time
    while dep.leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dep.leftovers() == [], subprocess.run(["ps", "-f"], capture_output=True, text=True)


def _wait_for_round(out: Path, r: int, run: _Background, timeout: float = 900) -> int:
    """Wait until round ``r`` is checkpointed (``state.json``); return the last round saved."""
    deadline = time.monotonic() + timeout
    state = out / "state.json"
    while True:
        with contextlib.suppress(OSError, ValueError):
            last = int(json.loads(state.read_text())["last-round"])
            if last >= r:
                return last
        assert run.thread.is_alive(), f"the run ended before round {r}: {run.error!r}"
        assert time.monotonic() < deadline, f"round {r} was never checkpointed"
        time.sleep(0.2)


def _replied_rounds(ws: Path, run_id: int) -> list[int]:
    """Rounds a site's signed audit log records replies for, in run ``run_id``."""
    entries = _jsonl(ws / "audit" / "audit.jsonl")
    return [
        int(e["details"]["server-round"])
        for e in entries
        if e.get("event") == "federation-reply"
        and int(e["details"].get("run-id", -1)) == run_id
        and e["details"].get("message-type") == "train"
    ]


def test_tls_deployment_rejoins_a_restarted_supernode_and_resumes_after_a_superlink_restart(
    tmp_path,
):
    """The faults Flower users report most, with real processes:

    1. A site's SuperNode loses power mid-run (SIGKILL while the run is held in round 2,
       whose exchange also scores round 1's model, after the site sent its round-2 reply)
       and is restarted with the same key: it gets its node id back, and the run, which
       needs both sites every round, completes without a SuperLink restart.
    2. The SuperLink loses power mid-run and is restarted on its state database: the
       registrations and node ids are still there (nothing is registered again), the
       SuperNodes reconnect by themselves, and rerunning the federation resumes after the
       last checkpointed round.
    """
    ws = make_consortium(tmp_path / "ws")
    hold = tmp_path / "hold-evaluation"
    with Deployment(tmp_path) as dep:
        dep.start_superlink()
        for name, role in NODES:
            dep.make_key(name)
            env = {TEST_STALL_ENV: str(hold), TEST_STALL_KIND_ENV: MSG_EVALUATE}
            dep.start_node(name, role, ws[name], env if name == "target" else None)
        dep.wait_online(3)
        ids = {n["node-id"] for n in dep.supernodes()}
        aurora = dep.activations("aurora")[-1]

        # (1) aurora crashes and comes back while round 2 is held; round 3 needs it
        out = tmp_path / "out-node"
        run = _Background(dep.fed_toml(tmp_path / "node.toml", out, (3, 0), min_sites=2))
        _wait_for_stall(hold, run)  # the target scores round 1's model in round 2's exchange
        # aurora's SuperNode has handed its describe, round-1 and round-2 replies to the link
        _wait_for_log(dep.logs["aurora"], "Sent successfully", 3, run)
        dep.crash_node("aurora")
        assert dep.restart_node("aurora", "site", ws["aurora"]) == aurora
        hold.unlink()  # round 2 ends, then round 3 trains on both sites
        run.join(900)
        assert run.error is None, run.error
        assert run.result.status == "finished:completed"
        assert [(r["round"], r["accepted"], r["missing"]) for r in _rows(out)] == [
            ("1", "2", "0"),
            ("2", "2", "0"),
            ("3", "2", "0"),
        ]
        assert all(r["evaluators"] == "1" for r in _rows(out))
        assert _replied_rounds(ws["aurora"], run.result.run_id) == [1, 2, 3]
        assert dep.superlink is not None and dep.superlink.poll() is None  # never restarted

        # (2) the SuperLink crashes once round 1 of a 3-round run is checkpointed
        out = tmp_path / "out-link"
        cfg = dep.fed_toml(tmp_path / "link.toml", out, (2, 1), min_sites=2)
        run = _Background(cfg)
        _wait_for_round(out, 1, run)
        dep.crash_superlink()
        done = json.loads((out / "state.json").read_text())
        dep.start_superlink()  # as its supervisor would: same port, certificates, --database
        assert {n["node-id"] for n in dep.supernodes()} == ids  # registrations kept
        # its ServerApp died with it: the SuperLink marks the run failed once the ServerApp's
        # heartbeats stop, and the coordinator's `federate` reports that
        run.join(900)
        assert isinstance(run.error, RunFailed), run.error
        assert 1 <= done["last-round"] < 3
        dep.wait_online(3)
        outcome = run_fed_toml(load_fed_toml(cfg), timeout=900)
        assert outcome.status == "finished:completed"
        assert f"resuming after round {done['last-round']}" in outcome.log
        state = json.loads((out / "state.json").read_text())
        assert state["last-round"] == 3
        assert [r["round"] for r in state["rows"]] == [1, 2, 3]
        for kept, before in zip(state["rows"], done["rows"], strict=False):  # not rerun
            assert {k: kept[k] for k in before} == before  # scores that came later are added
        assert all(r["evaluators"] == 1 for r in state["rows"])
        assert [int(x) for x in dep.activations("aurora")][-1] == aurora
        assert (out / "final" / "model.safetensors").is_file()
    assert all(p.poll() is not None for p in dep.procs)
