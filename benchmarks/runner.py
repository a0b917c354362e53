"""Run every benchmark of the project and write one JSON file and one markdown table.

Each benchmark runs as its own subprocess, ``python -m benchmarks.NAME ARGS --out DIR/NAME``,
so a crash in one does not stop the others. Its result JSON is read back into figures
(``benchmarks.figures``), each with its named peer, the ratio and the target, all measured in
this run on this machine. Entry point: ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.figures import Figure, extract, fmt
from benchmarks.host import cpu_model
from shared.atomic import atomic_write_json, atomic_write_text
from shared.errors import EXIT_NOTHING

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
NOT_BENCHMARKS = {"runner", "figures", "host", "readme_tables"}  # not benchmarks themselves
COLUMNS = ("benchmark", "figure", "ours", "peer", "peer value", "ratio", "target", "met?")


@dataclass(frozen=True)
class Spec:
    """How to run one benchmark in each mode."""

    name: str
    quick: tuple[str, ...] | None  # None: runs in the full mode only
    full: tuple[str, ...] = ()
    full_gpu: tuple[str, ...] | None = None  # full-mode sizes when a GPU is present
    workspace: str | None = None  # runner option whose folder is passed as --workspace
    requires: str | None = None  # a package the benchmark imports that may be missing
    full_only: str = "full mode only"


# The full-mode sizes are the ones benchmarks/README.md documents.
SPECS: tuple[Spec, ...] = (
    Spec(
        "ingest_vs_picai_prep",
        quick=("--cases", "6", "--repeat", "1", "--profile", "tiny"),
        full=("--cases", "50"),
        requires="picai_prep",
    ),
    Spec(
        "generative_training",
        quick=("--profiles", "tiny", "--steps", "2"),
        full=("--profiles", "tiny", "cpu", "--steps", "3"),
        full_gpu=("--profiles", "cpu", "paper", "--steps", "5"),
    ),
    Spec(
        "sampling_cost",
        quick=("--profile", "tiny"),
        full=("--profile", "cpu"),
        full_gpu=("--profile", "paper"),
    ),
    Spec("sampling_speed", quick=("--n", "8"), workspace="site_workspace"),
    Spec("federation_overhead", quick=("--pretrain", "1", "--repeats", "1")),
    Spec(
        "pacs_pull",
        quick=("--studies", "3", "--profile", "tiny"),
        full=("--studies", "12", "--profile", "cpu"),
        requires="dicomweb_client",
    ),
    Spec(
        "study_grid",
        quick=("--seeds", "2", "--seeds-large", "1"),
        workspace="coordinator_workspace",
    ),
    # The demos a newcomer runs, in a fresh workspace each (issue 15 point 4).
    Spec("demo_time", quick=("--plans", "quick"), full=("--plans", "quick", "full")),
    Spec("phantom_calibration", quick=None),
    # Hours on 2 cores: the runner reports the settings already finished in its cache
    # (run `python -m benchmarks.synthetic_value` itself to extend them).
    Spec("synthetic_value", quick=None, full=("--report-only",)),
)


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "failed" or "skipped"
    reason: str | None = None
    seconds: float | None = None
    command: list[str] | None = None
    results: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


# --- which benchmarks, with which arguments -----------------------------------------------
def module_exists(name: str) -> bool:
    return (BENCH_DIR / f"{name}.py").is_file()


def discovered_specs() -> list[Spec]:
    """Benchmark modules not in SPECS: run with their own defaults, in the full mode only."""
    known = {s.name for s in SPECS} | NOT_BENCHMARKS
    found = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.stem.startswith("_") or path.stem in known:
            continue
        if '__name__ == "__main__"' in path.read_text(errors="replace"):
            found.append(
                Spec(path.stem, quick=None, full_only="not in benchmarks/runner.py: full mode only")
            )
    return found


def all_specs() -> list[Spec]:
    return [*SPECS, *discovered_specs()]


def plan(spec: Spec, quick: bool, gpu: bool, workspaces: dict[str, Path | None]) -> list[str] | str:
    """The benchmark's arguments, or the reason it is skipped (a string)."""
    if not module_exists(spec.name):
        return f"benchmarks/{spec.name}.py does not exist"
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        return f"{spec.requires} is not installed"
    if quick and spec.quick is None:
        return spec.full_only
    args = list(spec.quick if quick else (spec.full_gpu if gpu and spec.full_gpu else spec.full))
    if spec.workspace:
        folder = workspaces.get(spec.workspace)
        if folder is None:
            return f"needs --{spec.workspace.replace('_', '-')} WS"
        args += ["--workspace", str(folder)]
    return args


# --- running one benchmark ----------------------------------------------------------------
def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:240] if lines else ""


def _failure_reason(rc: int, stderr: Path) -> str:
    if rc < 0:
        return f"killed by signal {-rc} (out of memory?)"
    # The last stderr line is the exception or SystemExit message, never the whole traceback.
    return _last_line(stderr) or f"exit code {rc}"


def run_benchmark(
    name: str, args: Sequence[str], out_dir: Path, timeout: float | None = None
) -> Outcome:
    """Run ``python -m benchmarks.NAME`` in its own process group; logs go into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *args, "--out", str(out_dir)]
    shown = ["python", *cmd[1:]]
    t0 = time.perf_counter()
    with open(out_dir / "stdout.txt", "w") as out, open(out_dir / "stderr.txt", "w") as err:
        # Own session: a timeout or Ctrl-C kills the benchmark's own children too.
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            reason = f"timed out after {timeout:g} s"
            return Outcome(name, "failed", reason, time.perf_counter() - t0, shown)
        except BaseException:
            _kill(proc)
            raise
    seconds = time.perf_counter() - t0
    if rc == EXIT_NOTHING:  # nothing to measure or report here (its last line says why)
        reason = _last_line(out_dir / "stderr.txt").removeprefix("error: ")
        return Outcome(name, "skipped", reason, seconds, shown)
    if rc != 0:
        return Outcome(name, "failed", _failure_reason(rc, out_dir / "stderr.txt"), seconds, shown)
    outcome = Outcome(name, "ok", None, seconds, shown)
    read_results(outcome, out_dir)
    return outcome


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have just exited by itself
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def read_results(outcome: Outcome, out_dir: Path) -> None:
    """Fill the outcome's figures from the JSON files the benchmark wrote in ``out_dir``."""
    files = sorted(out_dir.glob("*.json"))
    if not files:
        outcome.status, outcome.reason = "failed", "exited 0 but wrote no result JSON"
        return
    try:
        for path in files:
            outcome.figures += extract(outcome.name, json.loads(path.read_text()))
            outcome.results.append(path.name)
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        outcome.status = "failed"
        outcome.reason = f"could not read figures from {path.name}: {type(exc).__name__} {exc}"


# --- the machine ----------------------------------------------------------------------------
_PROBE = (
    "import json, torch; c = torch.cuda.is_available(); print(json.dumps({"
    "'torch': torch.__version__, 'gpu': torch.cuda.get_device_name(0) if c else None, "
    "'gpus': torch.cuda.device_count() if c else 0}))"
)


def machine() -> dict[str, Any]:
    # torch is probed in a subprocess: a CUDA context here would hold GPU memory all run long.
    info: dict[str, Any] = {"torch": None, "gpu": None, "gpus": 0}
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120
        )
        info |= json.loads(probe.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        **info,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def describe(m: dict[str, Any]) -> str:
    gpu = f"{m['gpus']}× {m['gpu']}" if m.get("gpu") else "no GPU"
    cpu = f" ({m['cpu_model']})" if m.get("cpu_model") else ""
    return f"{m['cpus']} CPU cores{cpu}, {gpu}, torch {m.get('torch')}, Python {m['python']}"


# --- the table ------------------------------------------------------------------------------
def _met(met: bool | None) -> str:
    return {True: "yes", False: "no", None: ""}[met]


def figure_row(name: str, f: Figure) -> list[str]:
    ours = f"{fmt(f.value)} {f.unit}".strip() if f.value is not None else "n/a"
    peer_value = f"{fmt(f.peer_value)} {f.unit}".strip() if f.peer_value is not None else ""
    ratio = f"{fmt(f.ratio)}×" if f.ratio is not None else ""
    return [name, f.name, ours, f.peer, peer_value, ratio, f.target, _met(f.met)]


def table_rows(outcomes: Iterable[Outcome]) -> list[list[str]]:
    """One row per figure; a skipped or failed benchmark gets one row with its reason."""
    rows = []
    for o in outcomes:
        if o.status != "ok":
            rows.append([o.name, f"{o.status}: {o.reason}", "", "", "", "", "", ""])
        elif not o.figures:
            rows.append([o.name, "ran, but its JSON has no figures", "", "", "", "", "", ""])
        rows += [figure_row(o.name, f) for f in o.figures]
    return rows


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_row(row: list[str]) -> str:
    cells = [_cell(c) for c in row]
    if cells[-1] == "no":  # a missed target should stand out
        cells[-1] = "**no**"
    return "| " + " | ".join(cells) + " |"


def to_markdown(report: dict[str, Any], rows: list[list[str]]) -> str:
    lines = [
        f"# Benchmarks, {report['mode']} mode, {report['date']}",
        "",
        f"{describe(report['machine'])}; load average at start "
        f"{report['machine']['load_average_at_start'][0]}; {fmt(report.get('seconds'))} s in "
        "all. Every figure and its peer were measured in this run. Ratios of times are the "
        "peer's over ours (above 1: ours is faster).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    lines += [_md_row(row) for row in rows]
    lines += ["", "| benchmark | status | seconds |", "|---|---|---:|"]
    for b in report["benchmarks"]:
        secs = fmt(b["seconds"]) if b["seconds"] is not None else ""
        lines.append(f"| {b['name']} | {_cell(b['status'])} | {secs} |")
    return "\n".join(lines) + "\n"


def rich_table(rows: list[list[str]], title: str) -> Table:
    table = Table(*COLUMNS, title=title)
    for row in rows:
        style = {"yes": "green", "no": "bold red"}.get(row[-1], "")
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]" if style else row[-1])
    return table


# --- the whole run --------------------------------------------------------------------------
def exit_code(outcomes: Iterable[Outcome]) -> int:
    """Non-zero only if a benchmark that was supposed to run failed; skips do not count."""
    return int(any(o.status == "failed" for o in outcomes))


def default_out() -> Path:
    return RESULTS_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}"


DESCRIPTION = """\
Run every benchmark of the project, each in its own subprocess, and write
  DIR/benchmarks.json  machine (CPUs, GPU, torch), date, mode, and per benchmark its
                       status (ok, failed, skipped) with the reason, seconds and figures;
  DIR/benchmarks.md    benchmark | figure | ours | peer | peer value | ratio | target | met?
Every figure and its peer are measured in this run. Ratios of times are the peer's over
ours (above 1: ours is faster). The table is printed at the end."""


def _help_epilog() -> str:
    lines = ["benchmarks (quick-mode arguments | full-mode arguments):"]
    for s in SPECS:
        quick = " ".join(s.quick) if s.quick is not None else f"skipped ({s.full_only})"
        full = " ".join(s.full) or "its defaults"
        gpu = f" (with a GPU: {' '.join(s.full_gpu)})" if s.full_gpu else ""
        needs = f"; needs --{s.workspace.replace('_', '-')}" if s.workspace else ""
        needs += f"; needs {s.requires}" if s.requires else ""
        lines.append(f"  {s.name}: {quick or 'its defaults'} | {full}{gpu}{needs}")
    lines += [
        "  any other benchmarks/NAME.py with a __main__ block: full mode, its defaults",
        "",
        "A benchmark whose module is missing, whose package is not installed or whose",
        "workspace option is not given is skipped with the reason. Each benchmark writes its",
        "JSON and stdout.txt/stderr.txt into DIR/NAME/; a JSON with a top-level 'figures' list",
        "of {name, value, unit} objects is read as it is. Exit status 1 if a benchmark that",
        "was supposed to run failed, else 0.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=DESCRIPTION,
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, a few minutes on 2 cores; phantom_calibration is skipped "
        "(default: the full sizes of benchmarks/README.md)",
    )
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    ap.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default benchmarks/results/run-YYYYMMDD-HHMMSS/)",
    )
    ap.add_argument(
        "--site-workspace",
        type=Path,
        metavar="WS",
        help="a site workspace where site-agent train finished (for sampling_speed)",
    )
    ap.add_argument(
        "--coordinator-workspace",
        type=Path,
        metavar="WS",
        help="a coordinator workspace (for study_grid)",
    )
    ap.add_argument(
        "--timeout", type=float, metavar="S", help="seconds per benchmark before it is killed"
    )
    args = ap.parse_args(argv)
    names = {s.name for s in all_specs()}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return args


def _workspaces(args: argparse.Namespace) -> dict[str, Path | None]:
    given = {
        "site_workspace": args.site_workspace,
        "coordinator_workspace": args.coordinator_workspace,
    }
    # Absolute: the benchmarks run with the repository root as their working folder.
    return {key: folder.resolve() if folder else None for key, folder in given.items()}


def run_all(
    args: argparse.Namespace,
    out: Path,
    gpu: bool,
    console: Console,
    after_each: Callable[[list[Outcome]], None],
) -> list[Outcome]:
    workspaces = _workspaces(args)
    outcomes: list[Outcome] = []
    for spec in (s for s in all_specs() if not args.only or s.name in args.only):
        planned = plan(spec, args.quick, gpu, workspaces)
        if isinstance(planned, str):
            console.print(f"[yellow]skip[/] {spec.name}: {planned}", soft_wrap=True)
            outcomes.append(Outcome(spec.name, "skipped", planned))
            continue
        console.print(f"[cyan]run[/]  {spec.name} {' '.join(planned)}", soft_wrap=True)
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            progress.add_task(f"{spec.name} running", total=None)
            outcome = run_benchmark(spec.name, planned, out / spec.name, args.timeout)
        colour = "green" if outcome.status == "ok" else "red"
        why = f": {outcome.reason}" if outcome.reason else ""
        console.print(
            f"[{colour}]{outcome.status}[/] {spec.name} in {outcome.seconds:.1f} s"
            f" ({len(outcome.figures)} figures){why}",
            soft_wrap=True,
        )
        outcomes.append(outcome)
        after_each(outcomes)  # a long full run keeps what it measured if stopped later
    return outcomes


def write_report(
    out: Path, meta: dict[str, Any], outcomes: list[Outcome], t0: float
) -> tuple[str, list[list[str]]]:
    """Write benchmarks.json and benchmarks.md atomically; return the markdown and the rows."""
    report = meta | {
        "seconds": round(time.perf_counter() - t0, 1),
        "benchmarks": [asdict(o) for o in outcomes],
    }
    rows = table_rows(outcomes)
    markdown = to_markdown(report, rows)
    atomic_write_json(out / "benchmarks.json", report)
    atomic_write_text(out / "benchmarks.md", markdown)
    return markdown, rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    out = (args.out or default_out()).resolve()
    mode = "quick" if args.quick else "full"
    mach = machine()
    console.print(f"{mode} mode on {describe(mach)}; writing {out}", soft_wrap=True)
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "command": ["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)],
        "machine": mach,
    }
    t0 = time.perf_counter()
    try:
        outcomes = run_all(
            args,
            out,
            bool(mach.get("gpu")),
            console,
            lambda done: write_report(out, meta, done, t0),
        )
    except KeyboardInterrupt:
        console.print(f"[red]interrupted[/]; what finished is in {out}", soft_wrap=True)
        return 130
    markdown, rows = write_report(out, meta, outcomes, t0)
    if console.is_terminal:
        console.print(rich_table(rows, f"benchmarks, {mode} mode"))
    else:  # logs and CI: the markdown itself reads better than a table squeezed to 80 columns
        console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}", soft_wrap=True)
    return exit_code(outcomes)
