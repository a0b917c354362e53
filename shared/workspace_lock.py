"""One workspace, one writer: every command that writes a workspace holds its lock file.

The lock is ``WORKSPACE/.workspace.lock``, taken with ``flock`` (exclusive, non-blocking) for
the whole command. The kernel drops a flock when its holder exits, however it exits, so a
killed or crashed holder never blocks the next run: a lock file whose flock can be taken is
stale and is simply taken over. The file also names its holder (pid, command line, host,
start time), so a second writer is refused with one line saying who holds the workspace.

Readers (``scan``, ``audit verify``, ``trust list``, ...) take no lock. The lock is advisory:
it keeps this toolkit's own commands apart, not other programs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import json
import os
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from shared.errors import InputError, WorkspaceBusyError

LOCK_FILE = ".workspace.lock"
# flock errors that mean "this file system cannot lock", not "someone holds it".
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a workspace lock."""

    pid: int
    command: str
    host: str
    started: str

    @classmethod
    def current(cls) -> Holder:
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else ["python"]
        return cls(
            pid=os.getpid(),
            command=shlex.join(argv),
            host=socket.gethostname(),
            started=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder recorded in a lock file; None when it is empty or being written."""
        try:
            raw = json.loads(text)
            return cls(int(raw["pid"]), str(raw["command"]), str(raw["host"]), str(raw["started"]))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}) on {self.host} since {self.started}"


def lock_path(workspace: Path) -> Path:
    return Path(workspace) / LOCK_FILE


def read_holder(workspace: Path) -> Holder | None:
    """The holder named in the lock file (live or stale), if any."""
    try:
        return Holder.parse(lock_path(workspace).read_text())
    except OSError:
        return None


def _prepare(workspace: Path, create: bool) -> Path | None:
    """Check ``workspace`` is a folder, creating it when allowed; returns the topmost folder
    created (to remove again if the command fails before writing anything), else None."""
    if workspace.exists() and not workspace.is_dir():
        raise InputError(f"workspace {workspace} is a file, not a folder")
    if workspace.is_dir():
        return None
    if not create:
        raise InputError(
            f"workspace {workspace} does not exist",
            hint="check the --workspace path (the first command that writes a workspace, "
            "such as ingest or keys init, creates it)",
        )
    top = workspace
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    if top.parent.exists() and not top.parent.is_dir():
        raise InputError(f"cannot create workspace {workspace}: {top.parent} is a file")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create workspace {workspace}: {exc.strerror or exc}",
            hint="check the owner and permissions of the folder above it, or choose another "
            "--workspace",
        ) from None
    return top


def _remove_if_untouched(created: Path | None, workspace: Path) -> None:
    """A workspace this command created and left holding only its lock file is removed, so a
    failed command leaves no folder behind at a path that did not exist."""
    if created is None:
        return
    with contextlib.suppress(OSError):
        if [p.name for p in workspace.iterdir()] != [LOCK_FILE]:
            return
        lock_path(workspace).unlink()
        folder = workspace
        while True:
            folder.rmdir()
            if folder == created:
                break
            folder = folder.parent


@contextlib.contextmanager
def workspace_lock(workspace: Path, *, create: bool = True) -> Iterator[Holder]:
    """Hold ``workspace``'s lock for the body; yields this process's holder record.

    ``create``: make the workspace when it does not exist (else that is an ``InputError``).
    Raises ``WorkspaceBusyError`` when another live process holds the lock, and
    ``InputError`` when the workspace is a file or cannot be written.
    """
    workspace = Path(workspace)
    created = _prepare(workspace, create)
    path = lock_path(workspace)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        _remove_if_untouched(created, workspace)
        raise InputError(
            f"cannot write to workspace {workspace}: {exc.strerror or exc}",
            hint="the command needs write access: check the folder's owner and permissions "
            "(or a read-only mount), or choose another --workspace",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        unlockable = False
    except OSError as exc:
        unlockable = exc.errno in _NO_LOCKING
        if not unlockable:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = read_holder(workspace)
            who = holder.describe() if holder else "another process (not yet recorded)"
            raise WorkspaceBusyError(
                f"workspace {workspace} is in use by {who}",
                hint="one writer per workspace: wait for that command to finish (or stop it); "
                "a killed holder frees the lock by itself",
            ) from None
    if unlockable:  # a file system without flock: run unlocked, as before locks existed
        os.close(fd)
        yield Holder.current()
        return
    me = Holder.current()
    try:
        # After the flock, so a stale record from a killed holder is simply overwritten.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode() + b"\n", 0)
    except OSError:
        pass  # a full disk must not stop a run that only needs the lock; the record is a courtesy
    ok = False
    try:
        yield me
        ok = True
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # released: an empty file reads as free
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if not ok:
            _remove_if_untouched(created, workspace)


def reads_workspace(
    param: str = "workspace",
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a read-only CLI command: its ``param`` workspace must be an existing folder
    (a mistyped path is an error, not an empty answer). Takes no lock: a reader never waits
    for, or stops, a writer."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            _prepare(Path(kwargs[param]), create=False)  # type: ignore[arg-type]
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def locks_workspace(
    param: str = "workspace",
    *,
    create: bool | Callable[[dict[str, Any]], bool] = True,
    when: Callable[[dict[str, Any]], bool] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a CLI command so it runs holding the lock of its ``param`` workspace.

    ``create`` (or a function of the command's keyword arguments) allows making a missing
    workspace; ``when`` (a function of the keyword arguments) limits locking to the calls
    that write the workspace (e.g. ``review`` writes its report there only without
    ``--report``).
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if when is not None and not when(kwargs):
                return fn(*args, **kwargs)
            may_create = create(kwargs) if callable(create) else create
            with workspace_lock(Path(kwargs[param]), create=may_create):  # type: ignore[arg-type]
                return fn(*args, **kwargs)

        wrapper.__locks_workspace__ = param  # type: ignore[attr-defined]
        return wrapper

    return decorate
