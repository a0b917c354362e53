"""A Flower SuperExec whose ClientApp processes start warm.

Flower 1.42 runs every ClientApp message in a process of its own: the SuperNode's SuperExec
polls for work once a second and starts ``flwr-clientapp`` in a fresh interpreter, which then
imports Flower, numpy and torch before the message's first line of work (1.3-1.5 s of a train
or evaluate message on 2 idle cores, ``benchmarks/federation_overhead.py``). Here the SuperExec
imports those libraries once and **forks** one child per message instead:

* each message still runs in its own process, which exits after its reply: nothing in memory
  passes from one message to the next, as with Flower's own executor;
* only third-party libraries are preloaded, never this toolkit's code: the child imports the
  ClientApp from the FAB the SuperLink sent, exactly as ``flwr-clientapp`` does;
* the parent never runs a torch or BLAS operation, so no thread pool exists at fork time;
* the task poll interval is 0.05 s instead of 1 s (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``);
* a message's arrays are pulled from the SuperNode with a 0.05 s first retry instead of 1 s:
  a ClientApp that starts at once asks for them while the SuperNode is still receiving them,
  and Flower's 1 s, then 2 s back-off cost a warm message 3 s (measured with the profile hook
  below);
* task types other than ClientApp go to Flower's own subprocess executor.

Started by ``deploy/supernode.sh`` next to ``flower-supernode --isolation process`` (its
``--stock-flower`` flag keeps Flower's own executor instead). Linux only (``os.fork``).
Run as a script, not as part of the ``shared`` package, so that nothing of the toolkit is
imported before the FAB's copy.

    python deploy/warm_superexec.py --runtime-api-address 127.0.0.1:9094 --insecure \\
        --parent-pid SUPERNODE_PID
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Sequence

from flower_retries import retry_sooner  # deploy/, beside this script

# Libraries a ClientApp message of this toolkit imports (besides its own code): loaded once,
# in the parent. A library that is missing is skipped (the message imports it if it needs it).
PRELOAD = (
    "numpy",
    "torch",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "flwr.app",
    "flwr.clientapp",
    "flwr.supernode.runtime.run_clientapp",
)
POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
POLL_SECONDS = "0.05"


def preload(modules: Sequence[str] = PRELOAD) -> dict[str, float]:
    """Import ``modules``; seconds per module (a missing one is left out)."""
    took: dict[str, float] = {}
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        took[name] = round(time.perf_counter() - t0, 3)
    return took


def fast_object_pulls() -> None:
    """Make ``flwr-clientapp``'s pull of a message's objects retry sooner (``flower_retries``)."""
    from flwr.supernode.runtime import run_clientapp as flower_clientapp

    retry_sooner(flower_clientapp, "pull_and_inflate_object_from_tree")


def _child_reset() -> None:
    """In a freshly forked child: forget the parent's Flower exit handlers (they would close
    the parent's Runtime API client, whose sockets the child shares)."""
    from flwr.supercore.exit import exit_handler

    exit_handler.registered_exit_handlers.clear()
    exit_handler._lock_handlers = threading.Lock()


class ForkExecutor:
    """Flower's ``Executor`` protocol: ClientApp tasks run in forked children, other task
    types in Flower's ``SubprocessExecutor``."""

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._owner = os.getpid()
        self._children: set[int] = set()
        self._cold = SubprocessExecutor()

    def get_eligible_capacity(self, supported_task_types, **kwargs):
        return self._cold.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, task_type=None, **kwargs) -> None:
        self._cold.wait_for_capacity(task_type, **kwargs)

    def launch(self, spec):
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self._cold.launch(spec)
        pid = os.fork()
        if pid == 0:  # the child: one message, then exit without the parent's atexit hooks
            os._exit(_run_clientapp(spec))
        self._children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children (called by Flower's SuperExec loop before every poll)."""
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.discard(pid)

    def close(self) -> None:
        """Children exit by themselves: each watches this process (``--parent-pid``)."""
        if os.getpid() == self._owner:
            self.reconcile()


# Diagnostics only: with this set to a folder, each child writes a cProfile of its message
# there (PID.prof), to see where a message's start-up goes.
PROFILE_ENV = "WARM_SUPEREXEC_PROFILE_DIR"


def _run_clientapp(spec) -> int:
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return _run_clientapp_once(spec)
    import cProfile

    prof = cProfile.Profile()
    code = prof.runcall(_run_clientapp_once, spec)
    prof.dump_stats(os.path.join(folder, f"{os.getpid()}.prof"))
    return code


def _run_clientapp_once(spec) -> int:
    code = 1
    try:
        _child_reset()
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # flwr_exit ends every run this way
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    return code


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API")
    tls = ap.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="plain text on loopback")
    tls.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate")
    ap.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) ends")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # this script's folder: the FAB's copy of the toolkit must win
    os.environ.setdefault(POLL_ENV, POLL_SECONDS)
    took = preload()
    fast_object_pulls()
    print(f"warm SuperExec: preloaded {took}", flush=True)
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec as flower

    # Flower picks its executor with get_executor(); this SuperExec supplies its own.
    flower.get_executor = lambda *a, **k: ForkExecutor()  # type: ignore[assignment]
    flower.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
        executor_type=ExecutorType.SUBPROCESS,
    )


if __name__ == "__main__":
    main()
