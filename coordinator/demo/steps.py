"""Running the demo's steps: each one a real ``site-agent`` or ``coordinator`` command in its
own process (as a hospital or a coordinator would run it), its output logged, its completion
recorded so a rerun continues after the last finished step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json
from shared.errors import InputError, ToolkitError

STATE = "demo-state.json"
INTERRUPT_GRACE_S = 15.0  # how long an interrupted step's command may take to stop


class StepFailed(ToolkitError):
    """A demo step's command failed; carries that command's exit code."""

    def __init__(self, message: str, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


def tool(name: str) -> list[str]:
    """The console script installed next to this interpreter (``site-agent``/``coordinator``),
    else its module run by this interpreter."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"site-agent": "site_agent.cli.main", "coordinator": "coordinator.cli.main"}[name]
    return [sys.executable, "-m", module]


class DemoState:
    """The finished steps and what they produced (bundle paths, import folders), kept in
    ``WS/demo-state.json`` and rewritten atomically after every step."""

    def __init__(self, workspace: Path, plan: dict[str, Any]) -> None:
        self.path = workspace / STATE
        plan = json.loads(json.dumps(plan))  # as stored: tuples become lists
        self.data: dict[str, Any] = {"plan": plan, "done": {}, "outputs": {}}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {self.path}: {exc}") from None
            damage = _damage(old)
            if damage:
                raise InputError(
                    f"{self.path} is damaged ({damage})",
                    hint="delete it (and the workspace) to run the demo from the start",
                )
            if old.get("plan") != plan:
                raise InputError(
                    f"{workspace} holds a demo run with other settings "
                    f"({old.get('plan', {}).get('name', '?')})",
                    hint="use another --workspace, or delete this one",
                )
            self.data = old
        # Each invocation's wall time (a rerun continues a stopped or failed demo): kept with
        # the steps, so the summary's total covers every invocation, not only the last one.
        # A state written before this was recorded has finished steps but no invocations.
        if "invocations" not in self.data:
            self.data["invocations"] = [{"seconds": None}] if self.data["done"] else []
        self.data["invocations"].append({"seconds": 0.0})
        self._t0 = time.perf_counter()

    def done(self, step: str) -> bool:
        return step in self.data["done"]

    def finish(
        self,
        step: str,
        seconds: float,
        outputs: dict[str, Any] | None = None,
        cpu_seconds: float | None = None,
    ) -> None:
        self.data["done"][step] = round(seconds, 1)
        if cpu_seconds is not None:
            self.data.setdefault("cpu", {})[step] = round(cpu_seconds, 1)
        if outputs:
            self.data["outputs"][step] = outputs
        self.data["invocations"][-1]["seconds"] = round(self.elapsed(), 1)
        atomic_write_json(self.path, self.data)

    def elapsed(self) -> float:
        """Seconds since this invocation began (the one clock of its recorded time)."""
        return time.perf_counter() - self._t0

    def record_time(self, seconds: float) -> None:
        """This invocation's time so far (e.g. when it stops on a failure or Ctrl-C)."""
        self.data["invocations"][-1]["seconds"] = round(seconds, 1)
        atomic_write_json(self.path, self.data)

    def close_invocation(self, seconds: float) -> dict[str, Any]:
        """Record this invocation's ``seconds`` and return the times of all of them: ``total``
        (None when an earlier invocation's time is unknown) and ``invocations`` (how many)."""
        self.record_time(seconds)
        times = [i["seconds"] for i in self.data["invocations"]]
        known = None not in times
        return {"total": round(sum(times), 1) if known else None, "invocations": len(times)}

    def output(self, step: str) -> dict[str, Any]:
        return self.data["outputs"].get(step, {})


def _damage(state: Any) -> str | None:
    """What is wrong with the shape of a loaded demo state, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    for key in ("done", "outputs"):
        if not isinstance(state.get(key), dict):
            return f"'{key}' is not an object"
    if not isinstance(state.get("cpu", {}), dict):
        return "'cpu' is not an object"
    runs = state.get("invocations", [])
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and (r.get("seconds") is None or isinstance(r["seconds"], int | float))
        for r in runs
    ):
        return "'invocations' is not a list of {seconds} records"
    return None


class Runner:
    """Runs commands for the demo, logging each step to ``WS/logs/<step>.log``."""

    def __init__(
        self, workspace: Path, env: dict[str, str], threads: Callable[[], int] | None = None
    ) -> None:
        self.workspace = workspace
        self.logs = workspace / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = os.environ | env
        self.threads = threads  # the cores a command may use now (None: all)
        self._cpu = threading.local()  # CPU seconds of this thread's commands since take_cpu()

    def take_cpu(self) -> float:
        """CPU seconds (user + system) the commands run by this thread used since the last
        call: lanes run side by side, so a step's wall time alone does not say what it costs."""
        spent = getattr(self._cpu, "seconds", 0.0)
        self._cpu.seconds = 0.0
        return spent

    def run(self, step: str, cmd: list[str], want_json: bool = False) -> Any:
        """Run ``cmd``; returns its parsed stdout JSON when ``want_json``. A failure raises
        ``StepFailed`` with the command's exit code and the last line it printed."""
        log = self.logs / f"{step}.log"
        env = self.env
        share = self.threads() if self.threads else None
        if share is not None and share < len(os.sched_getaffinity(0)):
            # torch, OpenBLAS and OpenMP read it at start-up: lanes side by side must not
            # each start a thread per core (two spinning thread pools on one core)
            env = env | {"OMP_NUM_THREADS": str(share)}
        t0 = time.perf_counter()
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            code, stdout, cpu = _run_counted(cmd, fh, env)
            self._cpu.seconds = getattr(self._cpu, "seconds", 0.0) + cpu
            fh.write(stdout)
            fh.write(f"# exit {code} after {time.perf_counter() - t0:.1f} s, CPU {cpu:.1f} s\n")
        if code != 0:
            raise StepFailed(
                f"demo step {step} failed (exit {code}): {_last_line(log)}",
                exit_code=code,
                hint=f"log: {log}; rerun the demo to continue from this step",
            )
        if not want_json:
            return None
        try:
            return json.loads(stdout)
        except ValueError:
            raise StepFailed(
                f"demo step {step}: the command's --json output did not parse",
                exit_code=1,
                hint=f"log: {log}",
            ) from None


def _run_counted(cmd: list[str], log: Any, env: dict[str, str]) -> tuple[int, str, float]:
    """Run ``cmd`` (stderr to ``log``): its exit code, stdout, and the CPU seconds it and its
    waited-for children used (``wait4``'s resource usage, per process, so steps running in other
    threads are not counted in)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        # Ctrl-C reached the command too (one process group): let it stop its own servers
        # and finish its writes before it is killed.
        try:
            proc.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stdout, usage.ru_utime + usage.ru_stime


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("# exit")]
    return lines[-1][:300] if lines else "no output"
