"""The site's scan and ingest entry: a DICOM folder (an export, or ``WORKSPACE/incoming`` filled
by ``pull`` or ``receive``) to cases in ``WORKSPACE/cases/real``.

``ingest_site`` is the one typed entry point: it takes a ``Profile``, records the source
identifiers of everything it scanned as salted hashes in ``WORKSPACE/secrets/identifiers.json``
(the deny-list the export gate screens with) before anything is ingested, and prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shared.ingest.flow import IngestProgress, ingest_dicom_dir, scan_dicom_dir

if TYPE_CHECKING:
    from shared.dicom.scan import ScanResult
    from shared.ingest.dicom_ingest import IngestReport
    from shared.profiles import Profile


def record_source_identifiers(workspace: Path, result: ScanResult) -> int:
    """Add the scan's identifiers to the workspace's deny-list; returns how many were new."""
    from site_agent.privacy.identifiers import harvest_identifiers, record_identifiers

    return record_identifiers(workspace, harvest_identifiers(result))


def scan_site(
    dicom_dir: Path,
    mapping: Path | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Scan a DICOM folder (headers only); ``mapping``: an optional JSON role → regex file."""
    from shared.dicom.scan import load_mapping

    return scan_dicom_dir(dicom_dir, load_mapping(mapping), workers, progress)


def ingest_site(
    dicom_dir: Path,
    workspace: Path,
    profile: Profile,
    *,
    labels: Path | None = None,
    masks: Path | None = None,
    mapping: Path | None = None,
    workers: int = 1,
    progress: IngestProgress | None = None,
) -> IngestReport:
    """Scan ``dicom_dir``, record its identifiers in the deny-list, ingest every complete
    study into ``workspace/cases/real``."""
    from shared.dicom.scan import load_mapping
    from shared.ingest.labels import read_labels

    sheet = read_labels(labels) if labels is not None else None
    rules = load_mapping(mapping)

    def seen(result: ScanResult) -> None:
        record_source_identifiers(workspace, result)

    return ingest_dicom_dir(
        dicom_dir, workspace, profile, sheet, masks, rules, workers, "real", seen, progress
    )
