"""Deployment on loopback: a real flower-superlink (TLS, SuperNode auth, state database) and
flower-supernode processes (two sites, one target) started through deploy/*.sh, one set of
processes and certificates for the whole check:

1. A SuperNode with an unregistered key is refused.
2. A site node disconnects while round 1 is in flight (SIGTERM once its train handler runs):
   with ``min-sites = 1`` met by the other site the 2-round federation (1 pretraining +
   1 adaptation round) is recorded as finished:completed, ``metrics.csv`` names the missing
   node for round 1, and ``pretrained/`` and ``final/`` are written.
3. The node is restarted and crashes (SIGKILL) mid-round with ``min-sites = 2``: the run ends
   within about ``round-timeout`` with a one-line message naming the node, a failed status
   and no checkpoint.

The node is held in its train handler by the test-only ``PROSTATE_FL_TEST_STALL_TRAIN`` hook
(``shared/federation/client_app.py``), so it can be killed mid-round. Every process group
started here is stopped and nothing with the test's FLWR_HOME is left running. Select it with
``pytest tests/test_federation_deploy.py`` (marked ``slow``).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.federation.config import load_fed_toml
from coordinator.federation.runner import RunFailed, run_fed_toml
from shared.federation.client_app import TEST_STALL_ENV
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
        self.ended = 0.0
        self.thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self.thread.start()

    def _run(self, cfg: Path) -> None:
        try:
            self.result = run_fed_toml(load_fed_toml(cfg), timeout=300)
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the federation run did not end"


def _wait_for_stall(marker: Path, run: _Background, timeout: float = 180) -> float:
    """Wait until the stalled node's train handler runs (the round is in flight)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert run.thread.is_alive(), f"the run ended before the node stalled: {run.error!r}"
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.2)
    return time.monotonic()


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
        run = _Background(dep.fed_toml(tmp_path / "a.toml", out, (1, 1), 1, round_timeout=40))
        _wait_for_stall(stall["a"], run)
        dep.stop_node("aurora")
        run.join(300)
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

        # the unregistered key was refused meanwhile and its SuperNode gave up
        assert intruder.poll() is not None, "the unregistered SuperNode is still running"
        text = dep.logs["intruder"].read_text()
        assert "Failed to activate" in text or "must be registered" in text, text[-1500:]

        # (b) aurora back, then it crashes mid-round; min-sites = 2 cannot be met
        dep.start_node("aurora", "site", ws["aurora"], {TEST_STALL_ENV: str(stall["b"])})
        dep.wait_online(3)
        out = tmp_path / "out-b"
        run = _Background(dep.fed_toml(tmp_path / "b.toml", out, (1, 0), 2, round_timeout=10))
        stalled = _wait_for_stall(stall["b"], run)
        dep.crash_node("aurora")
        run.join(300)
        assert run.ended - stalled < 10 + 60, "the failing round was not bounded by its timeout"
        assert isinstance(run.error, RunFailed), run.error
        message = run.error.message
        assert "\n" not in message and "finished:failed" in message, message
        assert "round 1 (pretrain)" in message and "2 needed" in message, message
        assert "aurora" in message and "no reply within round-timeout 10 s" in message, message
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
