"""Tiny workspaces for the federation tests: two sites (synthetic cases, site keys, policy
with a passphrase file) and one target node (external cases); and a loopback deployment
(SuperLink with TLS and node authentication, SuperNodes) that the deployment tests and the
overhead benchmark share."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np

from shared.case_format import CaseMeta, Label, write_case
from shared.volume import Volume

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
GRID = (24, 24, 12)
PASSPHRASE = "federation-test-passphrase"


def make_store(root: Path, n: int, seed: int, origin: str, prevalence: float = 0.4) -> Path:
    """Labelled cases whose positives carry a bright hbv / dark adc blob (machinery only)."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.5, 2.5, 4.5, 1.0])
    for i in range(n):
        y = int(i < round(n * prevalence))
        vols = {s: rng.normal(0.5, 0.15, GRID).astype(np.float32) for s in ("t2w", "hbv", "adc")}
        if y:
            c = rng.integers(6, 18, 3)
            c[2] = rng.integers(3, 9)
            sl = tuple(slice(int(v) - 2, int(v) + 2) for v in c)
            vols["hbv"][sl] += 0.8
            vols["adc"][sl] -= 0.3
        meta = CaseMeta(
            f"case-{seed}-{i:03d}",
            origin,
            Label(cspca=y, source="site"),
            list(GRID),
            [2.5, 2.5, 4.5],
            "tiny",
        )
        write_case(root / meta.case_id, meta, {k: Volume(v, affine) for k, v in vols.items()})
    return root


def make_site(ws: Path, site: str, seed: int, n: int = 10, policy: str | None = None) -> Path:
    from site_agent.export.keys import init_keys

    make_store(ws / "cases" / "synthetic", n, seed, "synthetic")
    make_store(ws / "cases" / "real", 6, seed + 100, "real")
    init_keys(ws, site, PASSPHRASE)
    (ws / "secrets").mkdir(parents=True, exist_ok=True)
    (ws / "secrets" / "audit-passphrase").write_text(PASSPHRASE)
    (ws / "federation").mkdir(parents=True, exist_ok=True)
    (ws / "federation" / "policy.toml").write_text(
        policy
        or (
            "[policy]\n"
            'allowed-data = ["synthetic"]\n'
            'allowed-returns = ["classifier-weights", "metrics"]\n'
            f'audit-passphrase-file = "{ws / "secrets" / "audit-passphrase"}"\n'
        )
    )
    return ws


def make_target(ws: Path, seed: int = 7, n: int = 24) -> Path:
    make_store(ws / "cases" / "external", n, seed, "real")
    return ws


def make_consortium(base: Path) -> dict[str, Path]:
    return {
        "aurora": make_site(base / "site-aurora", "aurora", 1),
        "borealis": make_site(base / "site-borealis", "borealis", 2),
        "target": make_target(base / "coord-ws"),
    }


def write_fed_toml(
    path: Path,
    ws: dict[str, Path],
    out: Path,
    faults: dict[str, str] | None = None,
    pretrain_rounds: int = 1,
    adapt_rounds: int = 1,
    extra: str = "",
) -> Path:
    faults = faults or {}
    nodes = []
    for name in ("aurora", "borealis"):
        f = f', test-fault = "{faults[name]}"' if name in faults else ""
        nodes.append(f'  {{ role = "site", workspace = "{ws[name]}", site = "{name}"{f} }},')
    nodes.append(f'  {{ role = "target", workspace = "{ws["target"]}" }},')
    path.write_text(f"""
[federation]
out = "{out}"
mode = "simulation"
profile = "tiny"
seed = 0
round-timeout = 120
node-wait-timeout = 60
min-sites = 1
{extra}

[pretrain]
rounds = {pretrain_rounds}
local-steps = 2
batch-size = 4

[adapt]
rounds = {adapt_rounds}
local-steps = 2
batch-size = 4
fraction = 0.5
split = {{ train = 0.5, val = 0.25, test = 0.25, seed = 0 }}

[simulation]
nodes = [
{chr(10).join(nodes)}
]
""")
    return path


# --------------------------------------------------------------------------- deployment


class Deployment:
    """A real SuperLink (TLS, SuperNode authentication, state database) and SuperNodes on
    loopback, started through ``deploy/*.sh``, each in its own process group. Use it as a
    context manager: leaving it stops every process group it started (and Flower's detached
    helpers of each)."""

    def __init__(self, base: Path) -> None:
        from coordinator.federation.runner import free_port

        self.base = base
        self.home = base / "flwr-home"
        self.certs, self.keys = base / "certs", base / "keys"
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None):
        from coordinator.federation.runner import flwr_env

        self.logs[name] = self.base / f"{name}.log"
        p = subprocess.Popen(
            cmd,
            env=flwr_env(self.home, env),
            stdout=open(self.logs[name], "ab"),  # noqa: SIM115 (the child keeps it)
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self.procs.append(p)
        return p

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        from coordinator.federation.runner import flwr_bin, flwr_env

        return subprocess.run(
            [flwr_bin("flwr"), *args],
            env=flwr_env(self.home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_superlink(self) -> None:
        from coordinator.federation.runner import wait_http, write_connection

        subprocess.run(
            [str(DEPLOY / "make-certs.sh"), str(self.certs)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        link = self.start(
            "superlink",
            [
                str(DEPLOY / "superlink.sh"),
                "--certs",
                str(self.certs),
                "--state",
                str(self.base / "state"),
                "--port",
                str(self.port),
            ],
        )
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        wait_http(f"https://127.0.0.1:{self.port}/health", 60, link, context=ctx)
        write_connection(
            self.home, "tls", self.address, insecure=False, root_certificates=str(self.ca)
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def make_key(self, name: str, register: bool = True) -> None:
        subprocess.run(
            [str(DEPLOY / "supernode.sh"), "--make-key", str(self.keys / name)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        if register:
            res = self.flwr(
                "supernode", "register", str(self.keys / f"{name}.pub"), "tls", "--name", name
            )
            assert res.returncode == 0, res.stdout + res.stderr

    def start_node(
        self, name: str, role: str, ws: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        from coordinator.federation.runner import free_port

        p = self.start(
            name,
            [
                str(DEPLOY / "supernode.sh"),
                "--superlink",
                self.address,
                "--ca",
                str(self.ca),
                "--key",
                str(self.keys / name),
                "--role",
                role,
                "--workspace",
                str(ws),
                "--port",
                str(free_port()),
            ],
            env,
        )
        self.nodes[name] = p
        return p

    def online(self) -> int:
        res = self.flwr("supernode", "ls", "tls", "--format", "json")
        try:
            nodes = json.loads(res.stdout).get("nodes", [])
        except ValueError:
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_online(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.online() < n and time.monotonic() < deadline:
            time.sleep(1)
        assert self.online() == n, {k: v.read_text()[-800:] for k, v in self.logs.items()}

    def fed_toml(
        self,
        path: Path,
        out: Path,
        rounds: tuple[int, int] = (1, 1),
        min_sites: int = 1,
        round_timeout: float = 120,
    ) -> Path:
        """A deployment-mode fed.toml against this SuperLink (pretrain, adapt rounds)."""
        path.write_text(f"""
[federation]
out = "{out}"
mode = "deployment"
profile = "tiny"
expected-nodes = 3
min-sites = {min_sites}
round-timeout = {round_timeout}
node-wait-timeout = 60

[pretrain]
rounds = {rounds[0]}
local-steps = 2
batch-size = 4

[adapt]
rounds = {rounds[1]}
local-steps = 2
batch-size = 4
fraction = 0.5
split = {{ train = 0.5, val = 0.25, test = 0.25, seed = 0 }}

[deployment]
superlink = "{self.address}"
root-certificates = "{self.ca}"
""")
        return path

    def crash_node(self, name: str) -> None:
        """SIGKILL a SuperNode with its process group and Flower's helpers (a power cut: the
        node sends nothing more, not even a goodbye)."""
        from coordinator.federation.runner import detached_helpers

        p = self.nodes[name]
        groups = [p.pid] + [_pgid(h) for h in detached_helpers(p.pid)]
        for g in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
                os.killpg(g, signal.SIGKILL)
        p.wait(timeout=10)

    def stop_node(self, name: str) -> None:
        """SIGTERM a SuperNode (and its helpers), SIGKILL what is left after a grace period."""
        from coordinator.federation.runner import stop_group

        stop_group(self.nodes[name], grace=10)

    def stop_all(self) -> None:
        from coordinator.federation.runner import stop_group

        for p in reversed(self.procs):
            stop_group(p, grace=5)

    def leftovers(self) -> list[int]:
        """PIDs of processes still running with this deployment's FLWR_HOME."""
        needle = f"FLWR_HOME={self.home}".encode()
        found = []
        for proc_dir in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if needle in (proc_dir / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc_dir.name))
        return found


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
