"""Launch a federation with Flower's own tools and report its recorded status.

Simulation: a private SuperLink in simulation mode (``flower-superlink --simulation``) on free
loopback ports, in its own process group, stopped afterwards; ``flwr run APP <connection>
--federation-config num-supernodes=N``. Deployment: ``flwr run`` against an existing SuperLink
(TLS with the consortium CA, or ``insecure`` with a warning). Either way ``flwr run``'s exit
code is not trusted: the run's status is read back with ``flwr ls --format json`` and must be
``finished:completed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.federation.config import FederationConfig, FedToml
from coordinator.federation.fab import staged_app
from shared.errors import InputError, ToolkitError

COMPLETED = "finished:completed"
SERVERAPP_PREFIX = "ServerApp failed with exception:"  # flwr 1.42's status details
# How long the SuperLink may stay unreachable during a run before the coordinator gives up on
# it: a restart (systemd waits 10 s, see deploy/systemd) fits well within it; after a restart
# the SuperLink itself marks the run failed once its ServerApp stops sending heartbeats.
LINK_LOST_SECONDS = 180.0
# While the run's log stream is open the coordinator asks for the run's status this often
# (the stream's end says the run finished; the status check catches a run that hangs).
STREAM_CHECK_SECONDS = 10.0


class RunFailed(ToolkitError):
    exit_code = 6


def flwr_bin(name: str) -> str:
    """A Flower executable next to this Python (the venv), else on PATH."""
    cand = Path(sys.executable).parent / name
    if cand.is_file():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise InputError(f"{name} not found", hint="install flwr[simulation] in this environment")
    return found


def app_dir() -> Path:
    """The project root holding the Flower app's pyproject.toml."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise InputError(f"no pyproject.toml at {root}: the Flower app needs the source tree")
    return root


def flwr_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
    )
    bindir = str(Path(sys.executable).parent)  # flower-superexec etc. live next to python
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_connection(
    flwr_home: Path, name: str, address: str, insecure: bool, root_certificates: str = ""
) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{name}"',
        "",
        f"[superlink.{name}]",
        f'address = "{address}"',
    ]
    if insecure:
        lines.append("insecure = true")
    elif root_certificates:
        lines.append(f'root-certificates = "{Path(root_certificates).resolve()}"')
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, context: Any = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RunFailed(f"process exited with code {proc.returncode} before {url} answered")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1, context=context) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.3)
    raise RunFailed(f"{url} did not answer within {timeout:g} s")


def detached_helpers(parent_pid: int) -> list[int]:
    """PIDs of ``flower-superexec --parent-pid PARENT`` helpers (Flower starts them in their
    own session, outside the parent's process group)."""
    pids = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            args = (proc_dir / "cmdline").read_bytes().split(b"\0")
            if b"--parent-pid" in args:
                i = args.index(b"--parent-pid")
                if i + 1 < len(args) and args[i + 1] == str(parent_pid).encode():
                    pids.append(int(proc_dir.name))
    return pids


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads (and Flower's detached helpers of it), then
    SIGKILL what is left."""
    helpers = detached_helpers(proc.pid)
    for pid in helpers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGTERM)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for pid in helpers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


@contextlib.contextmanager
def simulation_superlink(flwr_home: Path, log_file: Path) -> Iterator[str]:
    """A private simulation SuperLink on a free loopback port; yields its address."""
    port = free_port()
    log = open(log_file, "ab")  # noqa: SIM115 (closed in finally, outlives this frame)
    proc = subprocess.Popen(
        [
            flwr_bin("flower-superlink"),
            "--insecure",
            "--simulation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        env=flwr_env(flwr_home),
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(proc)
        log.close()


def run_status(flwr_home: Path, connection: str, run_id: int) -> dict[str, Any] | None:
    """The run's row in ``flwr ls``; None while the SuperLink does not answer."""
    try:
        res = subprocess.run(
            [flwr_bin("flwr"), "ls", connection, "--format", "json", "--run-id", str(run_id)],
            env=flwr_env(flwr_home),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return None
    try:
        data = json.loads(res.stdout)
    except ValueError:
        raise RunFailed(
            f"`flwr ls` gave no JSON: {res.stdout[-500:]} {res.stderr[-500:]}"
        ) from None
    if data.get("success") is False:  # e.g. "Connection to the SuperLink is unavailable"
        return None
    runs = data.get("runs", [])
    return runs[0] if runs else {}


@dataclass
class RunOutcome:
    run_id: int
    status: str
    details: str
    seconds: float
    log: str


def flwr_run(
    flwr_home: Path,
    connection: str,
    cfg: FederationConfig,
    federation_config: str = "",
    timeout: float = 3600,
    echo: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Submit the app, stream its log, and read back the run's recorded status."""
    overrides = flwr_home / "run-config.toml"
    overrides.write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.to_run_config().items())
    )
    # the app's files alone: Flower would walk the whole source tree, .venv included
    app = staged_app(app_dir(), Path(tempfile.mkdtemp(prefix="app-", dir=flwr_home)) / "app")
    cmd = [
        flwr_bin("flwr"),
        "run",
        str(app),
        connection,
        "--run-config",
        str(overrides),
        "--format",
        "json",
    ]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=flwr_env(flwr_home), capture_output=True, text=True, timeout=300)
    try:
        run_id = int(json.loads(res.stdout)["run-id"])
    except (ValueError, KeyError, TypeError):
        raise RunFailed(
            f"`flwr run` did not start a run: {(res.stdout + res.stderr)[-1500:]}"
        ) from None
    # The stream goes to a file: a pipe nobody reads while the run lasts fills up and blocks it.
    log_path = flwr_home / f"run-{run_id}.log"
    with open(log_path, "wb") as log_out:
        log_proc = subprocess.Popen(
            [flwr_bin("flwr"), "log", str(run_id), connection, "--stream"],
            env=flwr_env(flwr_home),
            stdout=log_out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    try:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        answered = time.monotonic()
        while time.monotonic() < deadline:
            # The SuperLink ends the log stream when the run finishes: wait for that rather
            # than ask `flwr ls` (a new Python process, ~0.7 s of CPU) every 2 s. The stream
            # also ends when the link drops; from then on, poll.
            if log_proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    log_proc.wait(timeout=min(STREAM_CHECK_SECONDS, deadline - time.monotonic()))
            else:
                time.sleep(2.0)
            polled = run_status(flwr_home, connection, run_id)
            if polled is None:
                if time.monotonic() - answered > LINK_LOST_SECONDS:
                    raise RunFailed(
                        f"run {run_id}: the SuperLink has not answered for {LINK_LOST_SECONDS:g} s",
                        hint="checkpoints up to the last completed round are kept; once the "
                        "SuperLink is back, rerun to resume",
                    )
            else:
                status, answered = polled, time.monotonic()
                if str(status.get("status", "")).startswith("finished"):
                    break
        else:
            subprocess.run(
                [flwr_bin("flwr"), "stop", str(run_id), connection],
                env=flwr_env(flwr_home),
                capture_output=True,
                timeout=60,
            )
            raise RunFailed(f"run {run_id} did not finish within {timeout:g} s (stopped it)")
    finally:
        stop_group(log_proc, grace=2)
    lines = log_path.read_text(errors="replace").splitlines()
    text = "\n".join(lines)
    if echo:
        for line in lines:
            if "[federation]" in line:
                echo(line[line.index("[federation]") + 13 :])
    return RunOutcome(
        run_id,
        str(status.get("status")),
        str(status.get("status-details", "")),
        round(time.monotonic() - t0, 1),
        text,
    )


def run_fed_toml(
    fed: FedToml, echo: Callable[[str], None] | None = None, timeout: float = 3600
) -> RunOutcome:
    """Run ``fed`` (simulation: private SuperLink; deployment: the configured one)."""
    fed.check_sim_nodes()  # before any folder is made or process started
    flwr_home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    out = Path(fed.run_config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if fed.mode == "simulation":
            with simulation_superlink(flwr_home, out / "superlink.log") as address:
                write_connection(flwr_home, "fedsim", address, insecure=True)
                n = len(fed.sim_nodes)
                outcome = flwr_run(
                    flwr_home,
                    "fedsim",
                    fed.run_config,
                    f"num-supernodes={n} client-resources-num-cpus=1",
                    timeout,
                    echo,
                )
        else:
            if fed.insecure:
                print(
                    "WARNING: plain-text connection to the SuperLink (insecure = true): "
                    "weights and metrics travel unencrypted",
                    file=sys.stderr,
                )
            elif not fed.root_certificates:
                raise InputError(
                    "[deployment] needs root-certificates (the consortium CA) or insecure = true"
                )
            write_connection(
                flwr_home, "consortium", fed.superlink, fed.insecure, fed.root_certificates
            )
            outcome = flwr_run(flwr_home, "consortium", fed.run_config, "", timeout, echo)
    finally:
        shutil.rmtree(flwr_home, ignore_errors=True)
    (out / "flower-run.log").write_text(outcome.log)
    if outcome.status != COMPLETED:
        raise RunFailed(
            f"run {outcome.run_id} ended {outcome.status}: {failure_reason(outcome.details)}",
            hint=f"full log in {out / 'flower-run.log'}; rerun to resume from the last round",
        )
    return outcome


def failure_reason(details: str) -> str:
    """Flower's status details as one line, without its own prefix for ServerApp errors."""
    text = " ".join(details.split()) or "see log"
    return text.removeprefix(SERVERAPP_PREFIX).strip()


def ensure_pretrained(
    fed: FedToml, echo: Callable[[str], None] | None = None, timeout: float = 6 * 3600
) -> Path:
    """Phase 1's global model of ``fed`` (``OUT/pretrained``): run or resume the federation
    with its adaptation phase skipped unless an earlier run already wrote it."""
    folder = fed.pretrained_dir
    if not (folder / "model.safetensors").is_file():
        run_fed_toml(fed.pretraining_only(), echo=echo, timeout=timeout)
    if not (folder / "model.safetensors").is_file():
        raise RunFailed(
            f"the federation in {fed.run_config.out_dir} stopped before its pretraining phase "
            "ended (stop-after-round?)",
            hint="rerun to continue it from its last checkpointed round",
        )
    return folder
