"""Tiny workspaces for the federation tests: two sites (synthetic cases, site keys, policy
with a passphrase file) and one target node (external cases); and a loopback deployment
(SuperLink with TLS and node authentication, SuperNodes) that the deployment tests and the
overhead benchmark share."""

from __future__ import annotations

import contextlib
import json
import os
import re
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


# One message handled by the ClientApp in a fresh interpreter, as a deployed node runs each:
# ``python -c MESSAGE_PROBE ROLE WORKSPACE KIND GLOBAL.npz`` prints JSON with the seconds to
# import the ClientApp module and to handle the message, the node's reported compute- and
# startup-seconds, and which heavy packages the process ended up importing.
MESSAGE_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import shared.federation.client_app as ca
t1 = time.perf_counter()
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
try:
    from shared.federation.records import pack_state
except ImportError:  # a tree from before packed weights (the benchmark's --baseline)
    pack_state = None
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 11, 7, 1
role, ws, kind, arrays = sys.argv[1:5]
config = {"server-round": 1, "local-steps": 2, "batch-size": 4, "fraction": 0.5,
          "split": "0.5,0.25,0.25,0"}
content = {"config": ConfigRecord(config)}
if kind != "query.describe":
    with np.load(arrays) as z:
        if pack_state is None:
            content["arrays"] = ArrayRecord({k: Array(z[k]) for k in z.files})
        else:
            content["arrays"], content["layout"] = pack_state({k: z[k] for k in z.files})
msg = Message(RecordDict(content), dst_node_id=7, message_type=kind)
msg.metadata.__dict__["_src_node_id"] = 1
ctx = Context(run_id=11, node_id=7, node_config={"role": role, "workspace": ws},
              state=RecordDict(), run_config={})
t2 = time.perf_counter()
reply = ca.app(msg, ctx)
t3 = time.perf_counter()
assert not reply.has_error(), reply.error.reason
metrics = reply.content.metric_records["metrics"]
compute = metrics.get("compute-seconds")
print(json.dumps({"import-client-app": t1 - t0, "handler": t3 - t2, "compute": compute,
                  "reported-startup": metrics.get("startup-seconds"),
                  "loaded": [m for m in ("torch", "torch._dynamo", "monai", "sklearn", "nibabel")
                             if m in sys.modules]}))
"""


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
        self.superlink: subprocess.Popen | None = None

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

    def start_superlink(self, timeout: float = 300) -> None:
        """Certificates (first call only) and the SuperLink on this deployment's port and state
        folder; a second call after :meth:`crash_superlink` is a restart on the same database.
        Returns once its health endpoint answers (``timeout`` is a safety bound only)."""
        from coordinator.federation.runner import wait_http, write_connection

        if not (self.certs / "ca.crt").is_file():
            subprocess.run(
                [str(DEPLOY / "make-certs.sh"), str(self.certs)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        self.superlink = self.start(
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
        wait_http(f"https://127.0.0.1:{self.port}/health", timeout, self.superlink, context=ctx)
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
        self,
        name: str,
        role: str,
        ws: Path,
        env: dict[str, str] | None = None,
        threads: int | None = None,
    ) -> subprocess.Popen:
        from coordinator.federation.runner import free_port

        cmd = [
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
        ]
        p = self.start(name, cmd + (["--threads", str(threads)] if threads else []), env)
        self.nodes[name] = p
        return p

    def activations(self, name: str) -> list[int]:
        """The node ids a SuperNode was given each time it connected (from its own log)."""
        log = self.logs.get(name)
        text = log.read_text(errors="replace") if log and log.is_file() else ""
        return [int(m) for m in re.findall(r"SuperNode ID: (\d+)", text)]

    def restart_node(
        self,
        name: str,
        role: str,
        ws: Path,
        env: dict[str, str] | None = None,
        retry_after: float = 5.0,
        timeout: float = 600,
    ) -> int:
        """Start a SuperNode again after a crash, as ``Restart=on-failure`` would (see
        deploy/systemd): the SuperLink refuses to activate a node it still counts as online
        (until the crashed session's heartbeats expire, at most 2 x 30 s), so a refused start
        is retried. Returns the node id it was given, once it is connected; ``timeout`` is a
        safety bound only."""
        before = len(self.activations(name))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.start_node(name, role, ws, env)
            while p.poll() is None and len(self.activations(name)) == before:
                assert time.monotonic() < deadline, self.logs[name].read_text()[-1500:]
                time.sleep(0.2)
            if len(self.activations(name)) > before:
                return self.activations(name)[-1]
            time.sleep(retry_after)
        raise AssertionError(f"{name} did not reconnect: {self.logs[name].read_text()[-1500:]}")

    def supernodes(self) -> list[dict]:
        """``flwr supernode ls`` as JSON rows (empty while the SuperLink does not answer)."""
        try:
            res = self.flwr("supernode", "ls", "tls", "--format", "json")
            return list(json.loads(res.stdout).get("nodes", []))
        except (ValueError, subprocess.TimeoutExpired):
            return []

    def online(self) -> int:
        return sum(1 for n in self.supernodes() if n.get("status") == "online")

    def wait_online(self, n: int, timeout: float = 600) -> None:
        """Until ``n`` SuperNodes are online: returns as soon as they are; ``timeout`` is a
        safety bound for a machine under load, not a performance limit."""
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
        round_timeout: float = 600,
    ) -> Path:
        """A deployment-mode fed.toml against this SuperLink (pretrain, adapt rounds). Both
        timeouts are bounds, not waits: an exchange ends when every node has answered or the
        SuperLink reports it gone, so generous values cost nothing when nodes answer."""
        path.write_text(f"""
[federation]
out = "{out}"
mode = "deployment"
profile = "tiny"
expected-nodes = 3
min-sites = {min_sites}
round-timeout = {round_timeout}
node-wait-timeout = 600

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
        _crash(self.nodes[name])

    def crash_superlink(self) -> None:
        """SIGKILL the SuperLink with its helpers and the ServerApp they run (a power cut at
        the coordinator); its state database stays for :meth:`start_superlink`."""
        assert self.superlink is not None, "no SuperLink started"
        _crash(self.superlink)

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


def _crash(p: subprocess.Popen) -> None:
    from coordinator.federation.runner import detached_helpers

    groups = [p.pid] + [_pgid(h) for h in detached_helpers(p.pid)]
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
            os.killpg(g, signal.SIGKILL)
    p.wait(timeout=30)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
