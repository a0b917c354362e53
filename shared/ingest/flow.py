"""A DICOM folder to cases, as one call: check the folder, scan it, ingest what is complete.

Both sides use it: the site through ``site_agent.ingest.entry`` (which also records the source
identifiers for its export gate), the coordinator through ``coordinator.ingest.dicom``. Nothing
is printed here; progress goes to callbacks and the summary to ``summary_lines`` for a CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import InputError, NothingProducedError

if TYPE_CHECKING:
    from shared.dicom.scan import ScanResult
    from shared.ingest.dicom_ingest import IngestReport
    from shared.ingest.labels import LabelSheet
    from shared.profiles import Profile

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class IngestProgress:
    """Optional progress callbacks of the two stages."""

    scan: Progress | None = None
    ingest: Progress | None = None


def check_dicom_dir(dicom_dir: Path) -> None:
    """A readable folder, or ``InputError`` saying what it is instead."""
    if not dicom_dir.is_dir():
        if dicom_dir.exists():
            raise InputError(f"DICOM folder {dicom_dir} is a file, not a folder")
        raise InputError(f"DICOM folder not found: {dicom_dir}")
    try:  # an unreadable folder would otherwise scan as an empty one
        with os.scandir(dicom_dir) as entries:
            next(entries, None)
    except PermissionError:
        raise InputError(
            f"cannot read DICOM folder {dicom_dir}: permission denied",
            hint="run as a user who may read the export, or copy it where this one can",
        ) from None


def count_files(dicom_dir: Path) -> int:
    """How many files a scan of ``dicom_dir`` will read (for a progress bar's total)."""
    from shared.dicom.headers import iter_files

    check_dicom_dir(dicom_dir)
    return len(iter_files(dicom_dir))


def scan_dicom_dir(
    dicom_dir: Path,
    mapping: dict[str, str] | None,
    workers: int,
    progress: Progress | None = None,
) -> ScanResult:
    """Check and scan ``dicom_dir`` (headers only)."""
    from shared.dicom.scan import scan

    check_dicom_dir(dicom_dir)
    return scan(dicom_dir, workers=workers, mapping=mapping, progress=progress)


def ingest_dicom_dir(
    dicom_dir: Path,
    workspace: Path,
    profile: Profile,
    labels: LabelSheet | None = None,
    masks: Path | None = None,
    mapping: dict[str, str] | None = None,
    workers: int = 1,
    store: str = "real",
    on_scan: Callable[[ScanResult], None] | None = None,
    progress: IngestProgress | None = None,
) -> IngestReport:
    """Scan ``dicom_dir`` and write one case per complete study to ``workspace/cases/<store>``.

    ``on_scan`` sees the scan before anything is written. Raises ``NothingProducedError`` when
    no study is found (before writing); ``require_cases`` says when none could be ingested (a
    CLI prints the report's reasons first).
    """
    from shared.ingest.dicom_ingest import ingest_scan

    progress = progress or IngestProgress()
    if masks is not None and not masks.is_dir():
        raise InputError(f"masks folder not found: {masks}")
    result = scan_dicom_dir(dicom_dir, mapping, workers, progress.scan)
    if not result.studies:  # before anything is written to the workspace
        raise NothingProducedError(
            f"no study in {dicom_dir} could be ingested: no DICOM study found "
            f"({len(result.skipped)} file(s) skipped)",
            hint="run `site-agent scan --dicom-dir DIR` to see why each file was skipped",
        )
    if on_scan is not None:
        on_scan(result)
    report = ingest_scan(
        result,
        workspace,
        profile,
        labels,
        masks,
        workers=workers,
        progress=progress.ingest,
        store=store,
    )
    return report


def require_cases(report: IngestReport, dicom_dir: Path) -> None:
    """``NothingProducedError`` when the ingest left no case (new or unchanged)."""
    if not report.ingested and not report.unchanged:
        raise NothingProducedError(
            f"no study in {dicom_dir} could be ingested",
            hint="run `site-agent scan --dicom-dir DIR -v` to see what was found",
        )


def summary_lines(report: IngestReport, workspace: Path, store: str) -> list[str]:
    """The ingest summary as rich-markup lines (data escaped), for a CLI to print."""
    from rich.markup import escape

    lines = [
        f"[green]{len(report.ingested)} case(s) ingested[/], "
        f"{len(report.unchanged)} unchanged, {len(report.failed)} failed, "
        f"{len(report.unlabeled)} without label, {report.skipped_files} file(s) "
        f"skipped; cases in {escape(str(workspace / 'cases' / store))}"
    ]
    for f in report.failed:
        what = escape(f"{f['case']}: {f['reason']}")
        lines.append(f"  [yellow]skipped[/] {what}")
    if report.unmatched_label_rows:
        lines.append(
            f"  [yellow]{len(report.unmatched_label_rows)} label row(s) matched no "
            f"study[/] (rows {report.unmatched_label_rows[:10]})"
        )
    lines += [f"  [yellow]labels:[/] {escape(p)}" for p in report.label_problems]
    return lines
