"""Every command of both programs, fed bad input, answers with one line and a documented exit
code: no traceback, no "internal error", nothing written outside the folders it was given.

The commands are found by walking both Typer apps (subgroups included), so a command is
covered the day it is added. The bad values are built from each command's click parameters:
every path parameter is given, in turn, a missing path, a file where a folder is expected (and
a folder where a file is), an empty folder, a path under a file, an unreadable file or folder
and a read-only workspace; every string parameter an unknown value; a config a file that is
not TOML. ``SPECS`` only says what a command needs to get past argument parsing and which cases
do not apply to it, always with the reason.

Unreadable and read-only cases need permissions that apply: tests run as root here, whom
chmod does not stop, so those invocations run with root's file-permission override
capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped for their duration; the sandbox's
files are root's own, so their mode bits then apply. (Switching to another uid would not do:
this Python's standard library lives in root's home.) Where that is not possible the cases
are skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from coordinator.cli.main import app as coordinator_app
from shared.errors import EXIT_BUSY, EXIT_CODES_HELP
from shared.workspace_lock import workspace_lock
from site_agent.cli.main import app as site_app

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {"site-agent": site_app, "coordinator": coordinator_app}
JUNK = "this is not [valid: not TOML, not JSON, not CSV, not a key\n"
FAST_S = 20.0  # a command refusing bad input must not start real work

# Path parameters that name a file; every other path parameter names a folder (or a bundle).
FILE_PARAMS = {"labels", "marksheet", "mapping", "config", "public_key"}
# Path parameters a command creates when they do not exist: a missing one is valid input.
OUTPUT_PARAMS = {"out_dir", "out_path", "output", "report"}
# Values for required non-path parameters, so a case gets past argument parsing.
REQUIRED_VALUES = {"n": "2", "site": "aurora", "model": "classifier"}


@dataclass(frozen=True)
class Spec:
    """What one command needs beyond the generic cases."""

    values: dict[str, str] = field(default_factory=dict)  # base values ({sb}: the sandbox)
    # While one parameter is under test, these others change too (None: left out).
    alongside: dict[str, dict[str, str | None]] = field(default_factory=dict)
    skip: dict[str, str] = field(default_factory=dict)  # "param:case" or "case" -> why not
    lock: str | None = "workspace"  # the parameter naming the folder it locks (None: none)
    reader: bool = False  # reads its workspace only: takes no lock, so a writer never stops it


READS_ONLY = Spec(lock=None, reader=True)
SPECS: dict[str, Spec] = {
    "site-agent phantom": Spec(
        values={"cases": "1", "workers": "1"},
        skip={"base": "a new --out folder is valid input: phantom would generate studies"},
        lock=None,  # writes a phantom DICOM export, not a workspace
    ),
    "site-agent scan": READS_ONLY,
    "site-agent keys show": READS_ONLY,
    "site-agent audit verify": READS_ONLY,
    "coordinator trust list": READS_ONLY,
    "coordinator ingest": Spec(  # exactly one of --picai-dir and --dicom-dir
        values={"picai_dir": "{sb}/in/empty"},
        alongside={
            "dicom_dir": {"picai_dir": None, "marksheet": None},
            "labels": {"picai_dir": None, "dicom_dir": "{sb}/in/empty"},
        },
    ),
    # pull and receive only add files to WORKSPACE/incoming, a spool written one verified
    # instance at a time; receive is a long-running listener that must not hold the
    # workspace for its whole life (which would stop every other command at the site).
    "site-agent pull": Spec(lock=None),
    "site-agent receive": Spec(
        lock=None,
        skip={"allow:unknown": "any AE title is a valid --allow: receive would start listening"},
    ),
    "coordinator study": Spec(lock=None),  # locks its --out after reading the config: own test
    "coordinator federate": Spec(lock=None),  # locks the config's folders: own test
    "coordinator demo": Spec(
        skip={
            "workspace:missing": "a new --workspace is where the demo builds its consortium",
            "base": "an empty --workspace is where the demo builds its consortium",
        }
    ),
}


@dataclass(frozen=True)
class Command:
    program: str
    path: tuple[str, ...]
    click_cmd: click.Command

    @property
    def name(self) -> str:
        return " ".join((self.program, *self.path))

    @property
    def spec(self) -> Spec:
        return SPECS.get(self.name, Spec())

    def param(self, name: str) -> click.Parameter | None:
        return next((p for p in self.click_cmd.params if p.name == name), None)


def _walk(
    cmd: click.Command, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _walk(sub, (*path, name))
    else:
        yield path, cmd


def all_commands() -> list[Command]:
    return [
        Command(program, path, cmd)
        for program, app in PROGRAMS.items()
        for path, cmd in _walk(typer.main.get_command(app), ())
    ]


COMMANDS = all_commands()


def documented_exit_codes() -> set[int]:
    """The exit codes the README's table lists (the line "Exit codes (all commands): ...")."""
    text = (ROOT / "README.md").read_text()
    start = text.index("Exit codes (all commands):")
    segment = " ".join(text[start : text.index(".", start)].split())
    return {int(c) for c in re.findall(r"[:;]\s*(\d+)\s", segment)}


def _is_path(p: click.Parameter) -> bool:
    return isinstance(p.type, click.Path)


def _is_text(p: click.Parameter) -> bool:
    return isinstance(p.type, click.types.StringParamType) and not getattr(p, "is_flag", False)


def _kind(p: click.Parameter) -> str:
    if p.name == "workspace":
        return "workspace"
    if p.name in OUTPUT_PARAMS:
        return "output"
    return "file" if p.name in FILE_PARAMS else "folder"


# case -> (value, needs an unprivileged user); {sb} is the sandbox, {name} the parameter.
VARIANTS: dict[str, dict[str, tuple[str, bool]]] = {
    "folder": {
        "missing": ("{sb}/nowhere/{name}", False),
        "file": ("{sb}/in/junk.txt", False),
        "empty": ("{sb}/in/empty", False),
        "under_file": ("{sb}/in/junk.txt/{name}", False),
        "unreadable": ("{sb}/in/sealed", True),
    },
    "workspace": {
        "missing": ("{sb}/nowhere/{name}", False),
        "file": ("{sb}/in/junk.txt", False),
        "under_file": ("{sb}/in/junk.txt/{name}", False),
        "unreadable": ("{sb}/in/sealed", True),
        "read_only": ("{sb}/ro", True),
    },
    "file": {
        "missing": ("{sb}/nowhere/{name}.txt", False),
        "folder": ("{sb}/in/empty", False),
        "malformed": ("{sb}/in/junk.txt", False),
        "empty": ("{sb}/in/empty.txt", False),
        "under_file": ("{sb}/in/junk.txt/{name}", False),
        "unreadable": ("{sb}/in/sealed.txt", True),
    },
    "output": {
        "file": ("{sb}/in/junk.txt", False),
        "under_file": ("{sb}/in/junk.txt/{name}", False),
        "read_only": ("{sb}/ro/{name}", True),
    },
}
BASE_VALUE = {
    "workspace": "{sb}/ws",
    "folder": "{sb}/in/empty",
    "file": "{sb}/in/empty.txt",
    "output": "{sb}/new/{name}",
}


@dataclass(frozen=True)
class Case:
    command: Command
    name: str  # "param:variant", "base" or "busy"
    values: dict[str, str]  # parameter name -> value (before {sb} substitution)
    unprivileged: bool = False

    @property
    def id(self) -> str:
        return f"{self.command.name} [{self.name}]"

    def argv(self, sb: Path) -> list[str]:
        args = list(self.command.path)
        for pname, value in self.values.items():
            p = self.command.param(pname)
            assert p is not None
            v = value.format(sb=sb, name=pname)
            args += [v] if isinstance(p, click.Argument) else [p.opts[0], v]
        return args

    def writable(self, sb: Path) -> list[Path]:
        """The folders this case hands the command to write in."""
        return [
            Path(v.format(sb=sb, name=n))
            for n, v in self.values.items()
            if (p := self.command.param(n)) is not None
            and _is_path(p)
            and _kind(p) in ("workspace", "output")
        ]


def base_values(cmd: Command) -> dict[str, str]:
    values: dict[str, str] = {}
    for p in cmd.click_cmd.params:
        if _is_path(p) and (p.required or _kind(p) == "workspace"):
            values[p.name] = BASE_VALUE[_kind(p)]
        elif p.required:
            assert p.name in REQUIRED_VALUES, (
                f"{cmd.name}: add a value for its required parameter {p.name!r} to "
                "REQUIRED_VALUES in tests/test_bad_input.py"
            )
            values[p.name] = REQUIRED_VALUES[p.name]
    return values | cmd.spec.values


def cases_of(cmd: Command) -> list[Case]:
    spec, base = cmd.spec, base_values(cmd)
    out: list[Case] = []
    if "base" not in spec.skip:
        out.append(Case(cmd, "base", base))
    for p in cmd.click_cmd.params:
        extra = spec.alongside.get(p.name, {})
        around = {k: v for k, v in (base | extra).items() if v is not None and k != p.name}
        if _is_path(p):
            for variant, (value, unpriv) in VARIANTS[_kind(p)].items():
                if f"{p.name}:{variant}" not in spec.skip:
                    out.append(Case(cmd, f"{p.name}:{variant}", around | {p.name: value}, unpriv))
        elif _is_text(p) and f"{p.name}:unknown" not in spec.skip:
            out.append(Case(cmd, f"{p.name}:unknown", around | {p.name: "no-such-value"}))
    if spec.lock and cmd.param(spec.lock) is not None:
        out.append(Case(cmd, "busy", base))
    if spec.reader and cmd.param("workspace") is not None:
        out.append(Case(cmd, "read_while_held", base))
    return out


CASES = [case for cmd in COMMANDS for case in cases_of(cmd)]


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with the inputs and an empty working folder (cwd) that must stay empty."""
    sb = Path(tempfile.mkdtemp(prefix="bad-input-"))
    sb.chmod(0o755)
    for d in ("cwd", "in", "in/empty", "ws", "new", "ro", "in/sealed"):
        (sb / d).mkdir(exist_ok=True)
    (sb / "in" / "junk.txt").write_text(JUNK)
    (sb / "in" / "empty.txt").write_text("")
    (sb / "in" / "sealed.txt").write_text("StudyInstanceUID,cspca\n1.2.3,1\n")
    # Writable for everyone, so a stray write is made (and caught below), not refused.
    for d in ("cwd", "in", "in/empty", "ws", "new"):
        (sb / d).chmod(0o777)
    (sb / "ro").chmod(0o555)
    (sb / "in" / "sealed").chmod(0)
    (sb / "in" / "sealed.txt").chmod(0)
    monkeypatch.chdir(sb / "cwd")
    monkeypatch.delenv("SITE_AGENT_KEY_PASSPHRASE", raising=False)
    # A command refusing bad input starts no process; one that does has started real work
    # (a demo, a federation), and this stops it at once instead of letting it run for minutes.
    monkeypatch.setattr(subprocess, "Popen", _no_processes)
    yield sb
    for p in (sb / "in" / "sealed", sb / "ro"):
        p.chmod(0o755)
    shutil.rmtree(sb, ignore_errors=True)


class _NoProcesses(Exception):
    pass


def _no_processes(*args: object, **kwargs: object) -> None:
    raise _NoProcesses(f"bad input started a process: {args[:1]}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CAP_VERSION_3 = 0x20080522
_DAC_CAPS = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def _dac_override(enabled: bool) -> bool:
    """Raise or drop this thread's effective file-permission override (permitted set kept,
    so it can be raised again); False when the kernel or libc does not allow it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        hdr, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
        if libc.capget(ctypes.byref(hdr), data) != 0:
            return False
        if enabled:
            data[0].effective |= _DAC_CAPS & data[0].permitted
        else:
            data[0].effective &= ~_DAC_CAPS
        return libc.capset(ctypes.byref(hdr), data) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Make file modes apply to the body: a no-op for a normal user; for root, drop the
    capabilities that let root ignore them."""
    if os.geteuid() != 0:
        yield
        return
    if not _dac_override(False):
        pytest.skip("root cannot drop CAP_DAC_OVERRIDE here: chmod 000 does not stop root")
    try:
        yield
    finally:
        assert _dac_override(True), "could not restore CAP_DAC_OVERRIDE"


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(p.relative_to(root))] = (
                stat.S_ISDIR(st.st_mode),
                st.st_size,
                0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns,
            )
    return found


def check_one_line_error(output: str, code: int) -> None:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if code == 2:  # click's own usage error: "Usage: ...", "Try ...", "Error: ..."
        assert sum(ln.startswith("Error:") for ln in lines) == 1, output
        return
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(errors) == 1, f"want exactly one 'error:' line:\n{output}"
    tail = lines[errors[0] + 1 :]
    assert len(tail) <= 1 and all(ln.startswith("hint:") for ln in tail), (
        f"the error must be the last line (plus at most one hint):\n{output}"
    )
    assert lines[errors[0]] != "error:" and not lines[errors[0]].startswith("error: :"), output


class _TooSlow(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt a command that has started real work (a listener, a training run) instead of
    waiting for it: bad input must be refused at once."""

    def stop(signum: int, frame: object) -> None:
        raise _TooSlow(f"still running after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(case: Case, sb: Path) -> tuple[click.testing.Result, float]:
    runner = CliRunner()
    app = PROGRAMS[case.command.program]
    argv = case.argv(sb)
    t0 = time.perf_counter()
    with deadline(2 * FAST_S), unprivileged() if case.unprivileged else contextlib.nullcontext():
        result = runner.invoke(app, argv, catch_exceptions=True)
    return result, time.perf_counter() - t0


def test_every_command_is_enumerated_and_handled():
    names = {c.name for c in COMMANDS}
    # The walk reaches into subgroups; a command that escapes the walk escapes this suite.
    assert {"site-agent train", "site-agent keys init", "coordinator trust add"} <= names
    assert set(SPECS) <= names, f"SPECS names commands that no longer exist: {set(SPECS) - names}"
    for c in COMMANDS:
        assert getattr(c.click_cmd.callback, "__handles_errors__", False), (
            f"{c.name} does not run through shared.cli_support.handle_errors"
        )


def test_readme_exit_codes_match_the_code():
    codes = documented_exit_codes()
    assert codes == {0, 1, 2, 3, 4, 5, 6, EXIT_BUSY}
    assert set(int(c) for c in re.findall(r"(\d+) [a-z]", EXIT_CODES_HELP)) == codes


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, sandbox: Path):
    sb = sandbox
    allowed = documented_exit_codes() - {1}
    before = snapshot(sb)
    given_missing = [p for p in case.writable(sb) if not p.exists()]
    if case.name in ("busy", "read_while_held"):
        lock_dir = Path(case.values[case.command.spec.lock or "workspace"].format(sb=sb))
        with workspace_lock(lock_dir):
            before = snapshot(sb)
            result, seconds = run_case(case, sb)
        if case.name == "busy":  # one workspace, one writer
            assert result.exit_code == EXIT_BUSY, result.output
            assert f"in use by pid {os.getpid()}" in result.output
        else:  # a reader is never held up by a writer
            assert result.exit_code != EXIT_BUSY, result.output
    else:
        result, seconds = run_case(case, sb)
    out = result.output
    assert "Traceback" not in out and "internal error" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{out}"
    )
    assert result.exit_code in allowed, f"exit {result.exit_code}:\n{out}"
    if result.exit_code != 0:
        check_one_line_error(out, result.exit_code)
    assert seconds < FAST_S, f"took {seconds:.1f} s: bad input must fail before real work"
    # Nothing outside the folders it was handed; the working folder stays empty.
    after = snapshot(sb)
    writable = [str(p.relative_to(sb)) for p in case.writable(sb)]
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    outside = sorted(  # the folders above a new workspace are made with it
        k
        for k in changed
        if not any(k == w or k.startswith(w + "/") or w.startswith(k + "/") for w in writable)
    )
    assert not outside, f"wrote outside {writable}: {outside}"
    if result.exit_code != 0:
        left = [str(p) for p in given_missing if p.exists()]
        assert not left, f"a failed command left folders at paths that did not exist: {left}"


# -- through the installed console scripts, as a service manager would start them ----------


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_console_script_train_on_empty_workspace(tmp_path):
    (tmp_path / "ws").mkdir()
    res = subprocess.run(
        [_script("site-agent"), "train", "-w", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines()[0].startswith("error: no ingested cases in"), res.stderr


def test_bad_train_input_fails_before_torch_is_imported(tmp_path):
    (tmp_path / "ws").mkdir()
    code = (
        "import sys\n"
        "from site_agent.cli.main import app\n"
        "try:\n"
        f"    app(['train', '-w', {str(tmp_path / 'ws')!r}, '--profile', 'huge'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.split() == ["3", "False"], res.stdout + res.stderr


def test_console_script_study_with_bracketed_message(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[study]\nprofile = "tiny"\nexternal = "x"\nfractions = [0.0]\n')
    res = subprocess.run(
        [_script("coordinator"), "study", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 3, res.stderr
    assert "error: [study]: fractions must lie in (0, 1]" in res.stderr, res.stderr


# -- defect 1: train's own errors (and its two promised stops) are one line, exit 3 ---------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _assert_one_line(result: click.testing.Result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert text in result.output, result.output
    check_one_line_error(result.output, code)


def test_train_bad_inputs_are_one_line(runner, tmp_path):
    (tmp_path / "ws").mkdir()
    ws = str(tmp_path / "ws")
    _assert_one_line(runner.invoke(site_app, ["train", "-w", ws]), 3, "no ingested cases")
    _assert_one_line(
        runner.invoke(site_app, ["train", "-w", ws, "--dicom-dir", str(tmp_path / "none")]),
        3,
        "DICOM folder not found",
    )
    _assert_one_line(
        runner.invoke(site_app, ["train", "-w", ws, "--profile", "huge"]), 3, "unknown profile"
    )
    _assert_one_line(
        runner.invoke(site_app, ["train", "-w", ws, "--labels", str(tmp_path / "l.csv")]),
        3,
        "--labels",
    )


def _fake_case_store(ws: Path) -> None:
    case = ws / "cases" / "real" / "c1"
    case.mkdir(parents=True)
    (case / "case.json").write_text("{}")


@pytest.mark.parametrize(
    "message",
    [
        "the autoencoder loses lesion contrast (t2w keeps 12% of the originals' contrast, "
        "measured by [ring] on 3 cases)",
        "autoencoder training stopped at step 7: loss is nan (no checkpoint yet)",
    ],
)
def test_train_stops_are_one_line(runner, tmp_path, monkeypatch, message):
    from shared.errors import InputError
    from site_agent.generative import pipeline

    def stop(*args, **kwargs):
        raise InputError(message, hint="what to do")

    monkeypatch.setattr(pipeline, "train_generative", stop)
    _fake_case_store(tmp_path / "ws")
    result = runner.invoke(site_app, ["train", "-w", str(tmp_path / "ws")])
    _assert_one_line(result, 3, message)
    assert "hint: what to do" in result.output


# -- defect 2: a labels CSV from Excel on Windows (cp1252) -----------------------------------


def test_cp1252_labels_are_read_and_said(tmp_path):
    from shared.ingest.labels import read_labels

    path = tmp_path / "labels.csv"
    path.write_bytes("StudyInstanceUID;cspca;Bemerkung\n1.2.3;1;Prüfung größer\n".encode("cp1252"))
    sheet = read_labels(path)
    assert sheet.rows[("1.2.3",)][1].cspca == 1
    assert any("cp1252" in p for p in sheet.problems), sheet.problems


def test_labels_in_an_unknown_encoding_are_one_line(runner, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"StudyInstanceUID,cspca\n1.2.3,1\x81\x8d\n")  # not UTF-8, not cp1252
    (tmp_path / "dicom").mkdir()
    result = runner.invoke(
        site_app,
        ["ingest", "--dicom-dir", str(tmp_path / "dicom"), "--labels", str(path),
         "-w", str(tmp_path / "ws")],
    )  # fmt: skip
    _assert_one_line(result, 3, "is not UTF-8")
    assert "CSV UTF-8" in result.output


def test_utf16_labels_from_excel_unicode_text(tmp_path):
    from shared.ingest.labels import read_labels

    path = tmp_path / "labels.txt"
    path.write_bytes("StudyInstanceUID\tcspca\n1.2.3\t0\n".encode("utf-16"))
    assert read_labels(path).rows[("1.2.3",)][1].cspca == 0


# -- defect 5: federate checks node workspaces before it starts anything --------------------


def _fed_toml(tmp_path: Path, nodes: list[tuple[str, Path]]) -> Path:
    listed = ", ".join(f'{{ role = "{r}", workspace = "{w}" }}' for r, w in nodes)
    cfg = tmp_path / "fed.toml"
    cfg.write_text(f'[federation]\nout = "fed-out"\n[simulation]\nnodes = [{listed}]\n')
    return cfg


def test_federate_refuses_missing_node_workspaces_at_once(runner, tmp_path):
    site = tmp_path / "sites" / "aurora"
    cfg = _fed_toml(tmp_path, [("site", site), ("target", tmp_path / "coord")])
    t0 = time.perf_counter()
    result = runner.invoke(coordinator_app, ["federate", "--config", str(cfg)])
    assert time.perf_counter() - t0 < 10
    _assert_one_line(result, 3, str(site))
    assert "passphrase" not in result.output
    assert not (tmp_path / "sites").exists() and not (tmp_path / "coord").exists()
    assert not (tmp_path / "fed-out").exists()


def test_federate_refuses_a_node_workspace_that_is_a_file(tmp_path):
    from coordinator.federation.config import load_fed_toml
    from shared.errors import InputError

    (tmp_path / "coord").write_text("")
    (tmp_path / "site").mkdir()
    cfg = _fed_toml(tmp_path, [("site", tmp_path / "site"), ("target", tmp_path / "coord")])
    fed = load_fed_toml(cfg)  # parsing needs no node (a study may only read its model)
    with pytest.raises(InputError, match="not a folder"):
        fed.check_sim_nodes()


def test_a_node_never_creates_its_workspace(tmp_path):
    from shared.errors import InputError
    from shared.federation.node import resolve_node

    ws = tmp_path / "nowhere"
    with pytest.raises(InputError, match="does not exist"):
        resolve_node({"role": "site", "workspace": str(ws)}, {})
    assert not ws.exists()


@pytest.mark.parametrize("bad", [0, -2, 2000, "4", 1.5, True])
def test_a_nodes_threads_option_must_be_a_whole_number_in_range(tmp_path, bad):
    from shared.errors import InputError
    from shared.federation.node import resolve_node

    with pytest.raises(InputError, match="node option threads must be a whole number from 1"):
        resolve_node({"role": "site", "workspace": str(tmp_path), "threads": bad}, {})
    ok = resolve_node({"role": "site", "workspace": str(tmp_path), "threads": 4}, {})
    assert ok.options["threads"] == 4


def test_federate_holds_its_folders(runner, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "coord").mkdir()
    cfg = _fed_toml(tmp_path, [("site", tmp_path / "site"), ("target", tmp_path / "coord")])
    with workspace_lock(tmp_path / "site"):
        result = runner.invoke(coordinator_app, ["federate", "--config", str(cfg)])
    _assert_one_line(result, EXIT_BUSY, f"in use by pid {os.getpid()}")


def _study_toml(tmp_path: Path) -> Path:
    (tmp_path / "ext").mkdir()
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[study]\nprofile = "tiny"\nexternal = "ext"\n[conditions.none]\nkind = "none"\n'
    )
    return cfg


def test_study_holds_its_output_folder(runner, tmp_path):
    cfg = _study_toml(tmp_path)
    with workspace_lock(tmp_path / "out"):
        result = runner.invoke(coordinator_app, ["study", "--config", str(cfg), "--out",
                                                 str(tmp_path / "out")])  # fmt: skip
    _assert_one_line(result, EXIT_BUSY, f"in use by pid {os.getpid()}")


def test_study_on_an_empty_store_leaves_no_output_folder(runner, tmp_path):
    result = runner.invoke(coordinator_app, ["study", "--config", str(_study_toml(tmp_path))])
    _assert_one_line(result, 3, "no cases in the external case store")
    assert not (tmp_path / "s").exists()


# -- defect 6: text in square brackets prints as itself --------------------------------------


def test_bracketed_error_text_survives(runner, tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[study]\nprofile = "tiny"\nexternal = "x"\nfractions = [0.0]\n')
    result = runner.invoke(coordinator_app, ["study", "--config", str(cfg)])
    _assert_one_line(result, 3, "[study]: fractions must lie in (0, 1], not [0.0]")


def test_federation_log_lines_print_verbatim(capsys):
    from coordinator.cli.federate_command import echo_line

    echo_line("round 1 [bold]node[/bold] {task.description} 100%")
    assert "round 1 [bold]node[/bold] {task.description} 100%" in capsys.readouterr().err


# -- smaller ones: OS errors, the trust hint --------------------------------------------------


@pytest.mark.parametrize(
    ("err_no", "text"),
    [
        (errno.EACCES, "Permission denied"),
        (errno.EROFS, "Read-only file system"),
        (errno.ENOSPC, "No space left on device"),
    ],
)
def test_os_errors_are_bad_input_with_what_to_do(runner, err_no, text):
    from shared.cli_support import make_app

    app = make_app("t", "test")

    @app.command("write")
    def write() -> None:
        raise OSError(err_no, os.strerror(err_no), "/srv/site-ws/models/x")

    @app.command("other")
    def other() -> None:  # a second command, so typer keeps the subcommand name
        pass

    result = runner.invoke(app, ["write"])
    _assert_one_line(result, 3, f"{text}: /srv/site-ws/models/x")
    assert "hint:" in result.output


def test_no_pinned_key_hint_names_the_real_usage(tmp_path):
    from coordinator.trust.importer import verify_against_trust
    from shared.errors import IntegrityError

    with pytest.raises(IntegrityError) as info:
        verify_against_trust(tmp_path, tmp_path / "cw")
    hint = info.value.hint or ""
    assert re.search(r"coordinator trust add \S+\.pub --site", hint), hint
    assert "--public-key" not in hint
