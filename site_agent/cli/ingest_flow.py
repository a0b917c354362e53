"""Scan and ingest with progress bars and a printed summary: the CLI side of ``site-agent
ingest``, ``scan`` and ``train`` (the work is ``site_agent.ingest.entry``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shared.cli_support import err, progress_bar

if TYPE_CHECKING:
    from shared.dicom.scan import ScanResult
    from shared.ingest.dicom_ingest import IngestReport


def _bar(advance: Callable[[int], None]) -> Callable[[int, int], None]:
    """A (done, total) callback that advances a bar by the difference."""
    state = {"n": 0}

    def cb(n: int, _total: int) -> None:
        advance(n - state["n"])
        state["n"] = n

    return cb


def scan_with_progress(
    dicom_dir: Path, mapping: Path | None, workers: int, quiet: bool
) -> ScanResult:
    from shared.ingest.flow import count_files
    from site_agent.ingest.entry import scan_site

    total = count_files(dicom_dir)
    with progress_bar("scanning headers", total, enabled=not quiet) as advance:
        return scan_site(dicom_dir, mapping, workers, _bar(advance))


def run_dicom_ingest(
    dicom_dir: Path,
    labels: Path | None,
    workspace: Path,
    profile: str,
    masks: Path | None,
    mapping: Path | None,
    workers: int,
    quiet: bool,
    store: str = "real",
) -> IngestReport:
    """``site-agent ingest`` and ``train``: bars, then the summary; the entry point records the
    scan's identifiers in the deny-list itself."""
    from contextlib import ExitStack

    from shared.errors import InputError
    from shared.ingest.flow import IngestProgress, count_files, require_cases, summary_lines
    from shared.profiles import get_profile
    from site_agent.ingest.entry import ingest_site

    if store != "real":
        raise InputError(f"the site ingests into cases/real, not cases/{store}")
    prof = get_profile(profile)
    total = count_files(dicom_dir)
    with ExitStack() as stack:
        scan_cb = _bar(stack.enter_context(progress_bar("scanning headers", total, not quiet)))
        bars: dict[str, Callable[[int, int], None]] = {}

        def ingest_cb(n: int, of: int) -> None:
            if "ingest" not in bars:  # its total is known once the scan is done
                bar = progress_bar("ingesting studies", of, enabled=not quiet)
                bars["ingest"] = _bar(stack.enter_context(bar))
            bars["ingest"](n, of)

        report = ingest_site(
            dicom_dir,
            workspace,
            prof,
            labels=labels,
            masks=masks,
            mapping=mapping,
            workers=workers,
            progress=IngestProgress(scan_cb, ingest_cb),
        )
    if not quiet:
        for line in summary_lines(report, workspace, store):
            err.print(line, highlight=False)
    require_cases(report, dicom_dir)
    return report
