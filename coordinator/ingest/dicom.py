"""The coordinator's DICOM ingest: the external institution's export to ``cases/external``,
read exactly as a site reads its own (``shared.ingest.flow``); beside the PI-CAI ingest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.ingest.dicom_ingest import IngestReport
    from shared.profiles import Profile


def ingest_external_dicom(
    dicom_dir: Path,
    workspace: Path,
    profile: Profile,
    labels: Path | None = None,
    masks: Path | None = None,
    mapping: Path | None = None,
    workers: int = 1,
    store: str = "external",
) -> IngestReport:
    """Scan and ingest ``dicom_dir``; raises ``NothingProducedError`` when no case results."""
    from shared.dicom.scan import load_mapping
    from shared.ingest.flow import ingest_dicom_dir, require_cases
    from shared.ingest.labels import read_labels

    sheet = read_labels(labels) if labels is not None else None
    report = ingest_dicom_dir(
        dicom_dir, workspace, profile, sheet, masks, load_mapping(mapping), workers, store
    )
    require_cases(report, dicom_dir)
    return report


def run_dicom_ingest(
    dicom_dir: Path,
    labels: Path | None,
    workspace: Path,
    profile: str,
    masks: Path | None,
    mapping: Path | None,
    workers: int,
    quiet: bool,
    store: str = "external",
) -> IngestReport:
    """``coordinator ingest --dicom-dir``: the CLI prints its own summary, so ``quiet`` only
    keeps the call as it was (nothing is drawn here)."""
    from shared.profiles import get_profile

    del quiet
    return ingest_external_dicom(
        dicom_dir, workspace, get_profile(profile), labels, masks, mapping, workers, store
    )
