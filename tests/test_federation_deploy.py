"""Deployment on loopback: a real flower-superlink (TLS, SuperNode auth, state database) and
three flower-supernode processes (two sites, one target) started through deploy/*.sh; a
two-round federation (1 pretraining + 1 adaptation round) must be recorded as
finished:completed, and a SuperNode with an unregistered key must be refused. Every process
group started here is stopped.

Select it alone with ``pytest tests/test_federation_deploy.py`` (marked ``slow``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from coordinator.federation.runner import (
    flwr_bin,
    flwr_env,
    free_port,
    stop_group,
    wait_http,
    write_connection,
)
from tests.federation_support import make_consortium

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("openssl") and shutil.which("ssh-keygen")),
        reason="needs openssl and ssh-keygen",
    ),
]


def _flwr(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [flwr_bin("flwr"), *args],
        env=flwr_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _online(home: Path, conn: str) -> int:
    res = _flwr(home, "supernode", "ls", conn, "--format", "json")
    try:
        nodes = json.loads(res.stdout).get("nodes", [])
    except ValueError:
        return 0
    return sum(1 for n in nodes if n.get("status") == "online")


def test_tls_node_auth_federation_completes_and_unregistered_node_is_refused(tmp_path):
    from coordinator.federation.config import load_fed_toml
    from coordinator.federation.runner import run_fed_toml

    home = tmp_path / "flwr-home"
    certs, keys, state = tmp_path / "certs", tmp_path / "keys", tmp_path / "state"
    subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(certs)], check=True, capture_output=True, timeout=120
    )
    ws = make_consortium(tmp_path / "ws")
    port = free_port()
    procs: list[subprocess.Popen] = []
    logs: dict[str, Path] = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        p = subprocess.Popen(
            cmd,
            env=flwr_env(home),
            stdout=open(logs[name], "wb"),  # noqa: SIM115 (the child keeps it)
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        procs.append(p)
        return p

    try:
        link = start(
            "superlink",
            [
                str(DEPLOY / "superlink.sh"),
                "--certs",
                str(certs),
                "--state",
                str(state),
                "--port",
                str(port),
            ],
        )
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        wait_http(f"https://127.0.0.1:{port}/health", 60, link, context=ctx)
        write_connection(
            home,
            "tls",
            f"127.0.0.1:{port}",
            insecure=False,
            root_certificates=str(certs / "ca.crt"),
        )
        nodes = [
            ("aurora", "site", ws["aurora"]),
            ("borealis", "site", ws["borealis"]),
            ("target", "target", ws["target"]),
        ]
        for name, _, _ in [*nodes, ("intruder", "", None)]:
            subprocess.run(
                [str(DEPLOY / "supernode.sh"), "--make-key", str(keys / name)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        for name, _, _ in nodes:
            res = _flwr(
                home, "supernode", "register", str(keys / f"{name}.pub"), "tls", "--name", name
            )
            assert res.returncode == 0, res.stdout + res.stderr
        for name, role, w in nodes:
            start(
                name,
                [
                    str(DEPLOY / "supernode.sh"),
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--ca",
                    str(certs / "ca.crt"),
                    "--key",
                    str(keys / name),
                    "--role",
                    role,
                    "--workspace",
                    str(w),
                    "--port",
                    str(free_port()),
                ],
            )
        intruder = start(
            "intruder",
            [
                str(DEPLOY / "supernode.sh"),
                "--superlink",
                f"127.0.0.1:{port}",
                "--ca",
                str(certs / "ca.crt"),
                "--key",
                str(keys / "intruder"),
                "--role",
                "site",
                "--workspace",
                str(ws["aurora"]),
                "--port",
                str(free_port()),
            ],
        )
        deadline = time.monotonic() + 90
        while _online(home, "tls") < 3 and time.monotonic() < deadline:
            time.sleep(1)
        assert _online(home, "tls") == 3, {k: v.read_text()[-800:] for k, v in logs.items()}

        # the unregistered key is refused and its SuperNode gives up
        with contextlib.suppress(subprocess.TimeoutExpired):
            intruder.wait(timeout=60)
        text = logs["intruder"].read_text()
        assert "Failed to activate" in text or "must be registered" in text, text[-1500:]
        assert _online(home, "tls") == 3

        out = tmp_path / "out"
        (tmp_path / "fed.toml").write_text(f"""
[federation]
out = "{out}"
mode = "deployment"
profile = "tiny"
expected-nodes = 3
round-timeout = 120
node-wait-timeout = 60

[pretrain]
rounds = 1
local-steps = 2
batch-size = 4

[adapt]
rounds = 1
local-steps = 2
batch-size = 4
fraction = 0.5
split = {{ train = 0.5, val = 0.25, test = 0.25, seed = 0 }}

[deployment]
superlink = "127.0.0.1:{port}"
root-certificates = "{certs / "ca.crt"}"
""")
        outcome = run_fed_toml(load_fed_toml(tmp_path / "fed.toml"), timeout=300)
        assert outcome.status == "finished:completed"
        runs = json.loads(_flwr(home, "ls", "tls", "--format", "json").stdout)["runs"]
        assert [r["status"] for r in runs if int(r["run-id"]) == outcome.run_id] == [
            "finished:completed"
        ]
        assert (out / "final" / "model.safetensors").is_file()
        assert json.loads((out / "state.json").read_text())["last-round"] == 2
        for name in ("aurora", "borealis"):
            assert "federation-reply" in (ws[name] / "audit" / "audit.jsonl").read_text()
    finally:
        for p in reversed(procs):
            stop_group(p, grace=5)
    assert all(p.poll() is not None for p in procs)
