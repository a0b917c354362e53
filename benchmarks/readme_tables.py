"""Regenerate the README's benchmark tables from ``python -m benchmarks`` run folders.

The README holds the tables between two markers; the opening one names the run folders::

    <!-- benchmark-tables:begin runs=benchmarks/results/one-run-2026-12-07 -->
    ...generated...
    <!-- benchmark-tables:end -->

For each run folder this writes one table: the run's command, date, machine and duration from
its ``benchmarks.json``, then one row per figure (run folders are relative to the README's
folder). The figures are read again from the result
JSON files the run left in its folder, with today's extractors (``benchmarks/figures.py``), so
a target or peer that an extractor learned after the run shows up; the measured values are the
run's. ``--check`` only compares (for the test suite: the README cannot drift from the results).

    python -m benchmarks.readme_tables [--readme README.md] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.figures import fmt
from benchmarks.runner import COLUMNS, Outcome, _md_row, describe, read_results, table_rows
from shared.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"<!-- benchmark-tables:begin runs=(?P<runs>[^>]*?) -->\n")
END = "<!-- benchmark-tables:end -->"


class TableError(Exception):
    """The README or a run folder cannot give the tables (one line, for the CLI)."""


def run_table(run_dir: Path, repo: Path = REPO) -> str:
    """The markdown for one run folder: where it ran, then one row per figure."""
    path = run_dir / "benchmarks.json"
    if not path.is_file():
        raise TableError(f"{run_dir} is not a run folder: it has no benchmarks.json")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TableError(f"{path} cannot be read: {exc}") from None
    outcomes = []
    for b in report.get("benchmarks", []):
        o = Outcome(b["name"], b["status"], b.get("reason"), b.get("seconds"), b.get("command"))
        if o.status == "ok":
            read_results(o, run_dir / o.name)  # the run's values, today's extractors
        outcomes.append(o)
    m = report["machine"]
    where = (
        run_dir.resolve().relative_to(repo) if run_dir.resolve().is_relative_to(repo) else run_dir
    )
    lines = [
        f"`{' '.join(report['command'])}` ({report['mode']} mode), {report['date']}: "
        f"{describe(m)}; load average {fmt(m['load_average_at_start'][0])} at the start; "
        f"{fmt(report.get('seconds'))} s in all. Results: `{where}`.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---:|---|---:|---:|---|---|",
        *(_md_row(row) for row in table_rows(outcomes)),
    ]
    return "\n".join(lines) + "\n"


def regenerate(text: str, repo: Path = REPO) -> str:
    """``text`` (the README) with the part between the markers written again."""
    begin = BEGIN.search(text)
    end = text.find(END, begin.end()) if begin else -1
    if begin is None or end < 0:
        raise TableError(
            f"no '<!-- benchmark-tables:begin runs=DIR[,DIR] -->' ... '{END}' markers in the README"
        )
    runs = [r.strip() for r in begin["runs"].split(",") if r.strip()]
    if not runs:
        raise TableError("the begin marker names no run folder (runs=DIR[,DIR])")
    tables = "\n".join(run_table(repo / r, repo) for r in runs)
    return text[: begin.end()] + tables + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.readme_tables",
        description="Write the README's benchmark tables again from the run folders its "
        "begin marker names (figures re-read from each run's result JSON).",
    )
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if the README differs; write nothing"
    )
    args = ap.parse_args(argv)
    try:
        old = args.readme.read_text()
        new = regenerate(old, args.readme.resolve().parent)  # run folders: relative to it
    except OSError as exc:
        print(f"error: cannot read {args.readme}: {exc.strerror}", file=sys.stderr)
        return 3
    except TableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.check:
        if new != old:
            print(
                f"{args.readme}: the benchmark tables differ from the runs' results "
                "(python -m benchmarks.readme_tables writes them)",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != old:
        atomic_write_text(args.readme, new)
    print(f"{args.readme}: benchmark tables {'written' if new != old else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
