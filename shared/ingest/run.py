"""Scan and ingest with progress bars and a printed summary: the flow behind
``site-agent ingest``, ``site-agent train`` and ``coordinator ingest --dicom-dir``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from shared.cli_support import err, progress_bar
from shared.errors import InputError, NothingProducedError

if TYPE_CHECKING:
    from shared.dicom.scan import ScanResult
    from shared.ingest.dicom_ingest import IngestReport


def scan_with_progress(
    dicom_dir: Path, mapping: Path | None, workers: int, quiet: bool
):  # -> ScanResult
    from shared.dicom.headers import iter_files
    from shared.dicom.scan import load_mapping, scan

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
    total = len(iter_files(dicom_dir))
    with progress_bar("scanning headers", total, enabled=not quiet) as advance:
        state = {"n": 0}

        def cb(n: int, _total: int) -> None:
            advance(n - state["n"])
            state["n"] = n

        return scan(dicom_dir, workers=workers, mapping=load_mapping(mapping), progress=cb)


def run_dicom_ingest(
    dicom_dir: Path,
    labels: Path | None,
    workspace: Path,
    profile: str,
    masks: Path | None,
    mapping: Path | None,
    workers: int,
    quiet: bool,
    store: str,
    on_scan: Callable[[ScanResult], None] | None = None,
) -> IngestReport:
    """Shared by ``site-agent ingest``, ``site-agent train`` and ``coordinator ingest``.

    ``on_scan`` sees the scan result before ingest (the site agent records the source
    identifiers there, as salted hashes, for its export gate's deny-list).
    """
    from shared.ingest.dicom_ingest import ingest_scan
    from shared.ingest.labels import read_labels
    from shared.profiles import get_profile

    prof = get_profile(profile)
    sheet = read_labels(labels) if labels is not None else None
    if masks is not None and not masks.is_dir():
        raise InputError(f"masks folder not found: {masks}")
    result = scan_with_progress(dicom_dir, mapping, workers, quiet)
    if not result.studies:  # before anything is written to the workspace
        raise NothingProducedError(
            f"no study in {dicom_dir} could be ingested: no DICOM study found "
            f"({len(result.skipped)} file(s) skipped)",
            hint="run `site-agent scan --dicom-dir DIR` to see why each file was skipped",
        )
    if on_scan is not None:
        on_scan(result)
    n_complete = sum(s.complete for s in result.studies)
    with progress_bar("ingesting studies", n_complete, enabled=not quiet) as advance:
        state = {"n": 0}

        def cb(n: int, _t: int) -> None:
            advance(n - state["n"])
            state["n"] = n

        report = ingest_scan(
            result, workspace, prof, sheet, masks, workers=workers, progress=cb, store=store
        )
    if not quiet:
        err.print(
            f"[green]{len(report.ingested)} case(s) ingested[/], "
            f"{len(report.unchanged)} unchanged, {len(report.failed)} failed, "
            f"{len(report.unlabeled)} without label, {report.skipped_files} file(s) "
            f"skipped; cases in {escape(str(workspace / 'cases' / store))}"
        )
        for f in report.failed:
            what = escape(f"{f['case']}: {f['reason']}")
            err.print(f"  [yellow]skipped[/] {what}", highlight=False)
        if report.unmatched_label_rows:
            err.print(
                f"  [yellow]{len(report.unmatched_label_rows)} label row(s) matched no "
                f"study[/] (rows {report.unmatched_label_rows[:10]})"
            )
        for p in report.label_problems:
            err.print(f"  [yellow]labels:[/] {escape(p)}", highlight=False)
    if not report.ingested and not report.unchanged:
        raise NothingProducedError(
            f"no study in {dicom_dir} could be ingested",
            hint="run `site-agent scan --dicom-dir DIR -v` to see what was found",
        )
    return report
