"""Ingest a scanned DICOM tree into a workspace's case store, resumably and atomically."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import __version__
from shared.atomic import atomic_write_json, clean_partials
from shared.case_format import CaseMeta, Label, read_meta, write_case
from shared.dicom.reader import load_volume
from shared.dicom.scan import ScanResult, StudyInfo
from shared.errors import DicomError, InputError
from shared.ids import case_id, load_or_create_salt
from shared.ingest.build import build_case_volumes, mask_centroid
from shared.ingest.labels import LabelSheet
from shared.profiles import Profile
from shared.volume import load_nifti
from shared.worker_threads import one_thread_each

# 2: the prostate mask (when given) is kept in the case; 3: no SeriesDescription in case.json
# (it is free text a technologist may fill with a patient's name): the role's reason instead;
# 4: anti-aliasing by a sampled Gaussian (shared.volume.gaussian_smooth) instead of SimpleITK's
# recursive approximation of it: voxel values move by well under 1 % of a volume's range.
INGEST_VERSION = 4


@dataclass
class IngestReport:
    ingested: list[str] = field(default_factory=list)  # case ids written now
    unchanged: list[str] = field(default_factory=list)  # already ingested from same inputs
    failed: list[dict[str, str]] = field(default_factory=list)  # {"study": hashed id, "reason"}
    unlabeled: list[str] = field(default_factory=list)  # case ids without a label row
    unmatched_label_rows: list[int] = field(default_factory=list)
    label_problems: list[str] = field(default_factory=list)
    skipped_files: int = 0
    label_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _fingerprint(study: StudyInfo, profile: Profile, label: Label, mask_paths: list[str]) -> str:
    h = hashlib.sha256()
    h.update(f"{INGEST_VERSION}|{profile.name}|{profile.grid}|{label}".encode())
    for role in ("t2w", "hbv", "adc"):
        for f in sorted(study.chosen[role].frames, key=lambda f: (f.sop_uid, f.frame or 0)):
            h.update(f"{role}|{f.sop_uid}|{f.frame}|{f.file_size}".encode())
    for p in mask_paths:
        h.update(f"{p}|{os.path.getsize(p)}".encode())
    return h.hexdigest()


@dataclass
class _Job:
    study: StudyInfo
    folder: Path
    cid: str
    label: Label
    profile: Profile
    fingerprint: str
    prostate_mask: str | None
    lesion_mask: str | None


def _run_job(job: _Job) -> tuple[str, str | None]:
    """Build and write one case; returns (case id, error reason or None)."""
    try:
        s = job.study
        vols = {r: load_volume(s.chosen[r]) for r in ("t2w", "hbv", "adc")}
        center = prostate = None
        if job.prostate_mask:
            prostate = load_nifti(Path(job.prostate_mask))
            center = mask_centroid(prostate)
        lesion = load_nifti(Path(job.lesion_mask)) if job.lesion_mask else None
        out, notes = build_case_volumes(
            vols["t2w"], vols["hbv"], vols["adc"], job.profile.grid, center, lesion, prostate
        )
        meta = CaseMeta(
            case_id=job.cid,
            origin="real",
            label=job.label,
            grid_size=list(job.profile.grid.size),
            grid_spacing=list(job.profile.grid.spacing),
            profile=job.profile.name,
            sequences={
                r: {
                    # Why this series was chosen (e.g. "ImageType ADC", "b=1400 s/mm² from
                    # siemens-private"): built from fixed phrases, never from header text.
                    "chosen_because": s.chosen[r].reason,
                    "series_number": s.chosen[r].series_number,
                    "b_value": s.chosen[r].b_value,
                    "computed": s.chosen[r].computed,
                    "acquired_spacing_mm": [round(float(v), 4) for v in vols[r].spacing],
                }
                for r in ("t2w", "hbv", "adc")
            },
            intensity=notes,
            provenance={
                "tool_version": __version__,
                "ingest_version": INGEST_VERSION,
                "input_fingerprint": job.fingerprint,
                "manufacturer": s.manufacturer,
                "centred_on": "prostate mask" if center is not None else "T2 FOV",
            },
            has_lesion_mask=lesion is not None,
            has_prostate_mask=prostate is not None,
        )
        write_case(job.folder, meta, out)
        return job.cid, None
    except DicomError as exc:
        return job.cid, exc.message
    except (OSError, ValueError, RuntimeError) as exc:
        return job.cid, f"{type(exc).__name__}: {str(exc)[:160]}"


def ingest_scan(
    result: ScanResult,
    workspace: Path,
    profile: Profile,
    labels: LabelSheet | None,
    masks_dir: Path | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    store: str = "real",
) -> IngestReport:
    """Write one case per complete study of ``result`` into ``workspace/cases/<store>``."""
    store_dir = workspace / "cases" / store
    store_dir.mkdir(parents=True, exist_ok=True)
    clean_partials(store_dir)
    salt = load_or_create_salt(workspace)
    report = IngestReport(
        skipped_files=len(result.skipped),
        label_key=labels.key if labels else None,
        label_problems=list(labels.problems) if labels else [],
    )
    used_rows: set[int] = set()
    jobs: list[_Job] = []
    for s in result.studies:
        cid = case_id(salt, s.study_uid)
        if not s.complete:
            report.failed.append({"case": cid, "reason": "; ".join(s.problems)})
            continue
        label = Label()
        if labels is not None:
            hit = labels.lookup(s.study_uid, s.accession, s.patient_id, s.study_date)
            if hit is not None:
                used_rows.add(hit[0])
                label = hit[1]
        if label.cspca is None:
            report.unlabeled.append(cid)
        pm = lm = None
        if masks_dir is not None:
            p = masks_dir / f"{s.study_uid}_prostate.nii.gz"
            q = masks_dir / f"{s.study_uid}_lesion.nii.gz"
            pm = str(p) if p.is_file() else None
            lm = str(q) if q.is_file() else None
        fp = _fingerprint(s, profile, label, [x for x in (pm, lm) if x])
        folder = store_dir / cid
        if (folder / "case.json").is_file():
            try:
                if read_meta(folder).provenance.get("input_fingerprint") == fp:
                    report.unchanged.append(cid)
                    continue
            except InputError:  # an unreadable old case is simply rebuilt
                pass
        jobs.append(_Job(s, folder, cid, label, profile, fp, pm, lm))
    if labels is not None:
        report.unmatched_label_rows = sorted(
            n for n, _ in labels.rows.values() if n not in used_rows
        )
    done = 0
    if workers > 1 and len(jobs) > 2:
        with ProcessPoolExecutor(max_workers=workers, initializer=one_thread_each) as pool:
            for cid, err in pool.map(_run_job, jobs):
                done += 1
                _record(report, cid, err)
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            cid, err = _run_job(job)
            done += 1
            _record(report, cid, err)
            if progress:
                progress(done, len(jobs))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    atomic_write_json(workspace / "reports" / f"ingest-{stamp}.json", report.to_json())
    atomic_write_json(workspace / "profile.json", {"profile": profile.to_dict()})
    return report


def _record(report: IngestReport, cid: str, err: str | None) -> None:
    if err is None:
        report.ingested.append(cid)
    else:
        report.failed.append({"case": cid, "reason": err})
        if cid in report.unlabeled:
            report.unlabeled.remove(cid)
