"""Scan a DICOM tree: group frames into studies, series and volumes; classify; choose bpMRI.

A series is not a volume: a tri-planar localizer holds three orientations, a multi-b DWI series
one stack per b-value, a dynamic series one stack per time point. Frames are split by
orientation, b-value, ImageType, matrix and temporal position, then each volume is classified
(t2w / dwi / adc / other, always with the reason) and, per study, the axial T2, the highest
b-value ≥ 1000 s/mm² and the ADC are chosen. No hand-written series mapping is needed; an
optional mapping file can force a choice for unusual protocols.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.dicom.geometry import frame_geometry
from shared.dicom.headers import FrameHeader, Skipped, iter_files, read_headers
from shared.errors import DicomError, InputError

HIGH_B_MIN = 1000.0  # hbv must be at least this (s/mm²); PI-CAI's hbv is usually ≥ 1400

_RE_ADC = re.compile(r"(\badc\b|apparent.?diff|_adc\b|\bdadc|^adc)", re.I)
_RE_DWI = re.compile(r"(dwi|diff|ep2d|trace|\bb\d{2,4}\b)", re.I)
_RE_T2 = re.compile(r"t2", re.I)
_RE_LOC = re.compile(r"(loc|survey|scout|plane.?loc|aahead)", re.I)
_RE_DYN = re.compile(r"(dyn|dce|vibe|lava|thrive|perf|twist|t1)", re.I)
_RE_CALC = re.compile(r"calc", re.I)


@dataclass
class VolumeInfo:
    """A set of frames that form one 3D volume, with its classification."""

    key: str
    study_uid: str
    series_uid: str
    series_number: int
    description: str
    kind: str  # "t2w", "dwi", "adc" or "other"
    reason: str
    n_frames: int
    rows: int
    cols: int
    b_value: float | None
    computed: bool
    orientation: str  # "axial", "sagittal", "coronal" or "oblique"
    inplane_mm: float
    frames: list[FrameHeader] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("frames")
        return d


@dataclass
class StudyInfo:
    study_uid: str
    accession: str
    patient_id: str
    study_date: str
    manufacturer: str
    volumes: list[VolumeInfo]
    chosen: dict[str, VolumeInfo]
    problems: list[str]

    @property
    def complete(self) -> bool:
        return all(k in self.chosen for k in ("t2w", "hbv", "adc"))


@dataclass
class ScanResult:
    root: str
    n_files: int
    studies: list[StudyInfo]
    skipped: list[Skipped]

    def to_json(self, include_identifiers: bool = False) -> dict[str, object]:
        """A JSON-able report; identifiers (accession, patient id, date) only on request."""
        studies = []
        for s in self.studies:
            entry: dict[str, object] = {
                "study_uid": s.study_uid,
                "manufacturer": s.manufacturer,
                "complete": s.complete,
                "chosen": {k: v.key for k, v in s.chosen.items()},
                "problems": s.problems,
                "volumes": [v.summary() for v in s.volumes],
            }
            if include_identifiers:
                entry.update(accession=s.accession, patient_id=s.patient_id, date=s.study_date)
            studies.append(entry)
        return {
            "root": self.root,
            "files": self.n_files,
            "studies": studies,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def _orientation_label(iop: tuple[float, ...]) -> str:
    rx, ry, rz, cx, cy, cz = iop
    n = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)  # row x column
    norm = sum(v * v for v in n) ** 0.5 or 1.0
    axis = max(range(3), key=lambda a: abs(n[a]))
    if abs(n[axis]) / norm < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


class _Rounded(dict[tuple[tuple[float, ...], int], tuple[float, ...]]):
    """Orientation vectors rounded to ``digits``, each distinct one rounded once (a series'
    frames share theirs)."""

    def __missing__(self, key: tuple[tuple[float, ...], int]) -> tuple[float, ...]:
        values, digits = key
        self[key] = rounded = tuple(round(v, digits) for v in values)
        return rounded


def _split_key(f: FrameHeader, rounded: _Rounded) -> tuple[object, ...]:
    b = None if f.b_value is None else round(f.b_value)
    return (f.series_uid, rounded[f.iop, 3], b, f.image_type, f.rows, f.cols, f.temporal)


def group_volumes(frames: Iterable[FrameHeader]) -> dict[str, list[VolumeInfo]]:
    """Group frames by study → volumes, and classify each volume."""
    by_series: dict[str, list[FrameHeader]] = defaultdict(list)
    for f in frames:
        by_series[f.series_uid].append(f)
    studies: dict[str, list[VolumeInfo]] = defaultdict(list)
    for series_frames in by_series.values():
        rounded = _Rounded()  # per series: 0.0 and -0.0 are one key, and each series keeps its own
        parts: dict[tuple[object, ...], list[FrameHeader]] = defaultdict(list)
        for f in series_frames:
            parts[_split_key(f, rounded)].append(f)
        n_orient = len({rounded[f.iop, 2] for f in series_frames})
        n_temporal = len({f.temporal for f in series_frames if f.temporal is not None})
        for i, (_, fr) in enumerate(sorted(parts.items(), key=lambda kv: str(kv[0]))):
            f0 = fr[0]
            vol = VolumeInfo(
                key=f"{f0.series_number}:{f0.series_description or '?'}#{i}",
                study_uid=f0.study_uid,
                series_uid=f0.series_uid,
                series_number=f0.series_number,
                description=f0.series_description,
                kind="other",
                reason="",
                n_frames=len(fr),
                rows=f0.rows,
                cols=f0.cols,
                b_value=f0.b_value,
                computed=False,
                orientation=_orientation_label(f0.iop),
                inplane_mm=float(min(f0.pixel_spacing)),
                frames=fr,
            )
            vol.kind, vol.reason, vol.computed = classify(vol, n_orient, n_temporal)
            studies[f0.study_uid].append(vol)
    return studies


def classify(vol: VolumeInfo, n_orientations: int, n_temporal: int) -> tuple[str, str, bool]:
    """(kind, reason, computed) for one volume, from ImageType, b-value and description."""
    desc = vol.description
    itype = set(vol.frames[0].image_type)
    if n_orientations > 1:
        return "other", f"localizer ({n_orientations} orientations in one series)", False
    if "LOCALIZER" in itype or _RE_LOC.search(desc):
        return "other", "localizer", False
    if n_temporal > 1:
        return "other", f"dynamic series ({n_temporal} time points)", False
    if vol.n_frames < 3:
        return "other", f"only {vol.n_frames} slice(s)", False
    if "ADC" in itype or ("EADC" not in itype and _RE_ADC.search(desc)):
        if "EADC" in itype or re.search(r"exp", desc, re.I):
            return "other", "exponential ADC (eADC), not ADC", False
        return "adc", "ImageType ADC" if "ADC" in itype else "description matches ADC", False
    computed = "CALC_BVALUE" in itype or bool(_RE_CALC.search(desc))
    if vol.b_value is not None:
        how = vol.frames[0].b_source
        return "dwi", f"b={vol.b_value:g} s/mm² from {how}", computed
    if {"DIFFUSION", "TRACEW"} & itype or _RE_DWI.search(desc):
        return "other", "diffusion series without a readable b-value", False
    if _RE_T2.search(desc) and not _RE_DYN.search(desc.replace("t2", "")):
        if vol.orientation == "axial":
            return "t2w", "axial T2 by description", False
        return "other", f"{vol.orientation} T2 (axial required)", False
    if _RE_DYN.search(desc):
        return "other", "T1/dynamic series", False
    return "other", "unrecognised series description", False


def description_hint(description: str) -> str | None:
    """What a series description alone suggests ("t2w", "dwi", "adc" or None): used to flag a
    series whose description disagrees with its ImageType (e.g. an ADC labelled T2)."""
    if _RE_ADC.search(description):
        return "adc"
    if _RE_DWI.search(description):
        return "dwi"
    if _RE_T2.search(description) and not _RE_DYN.search(description.replace("t2", "")):
        return "t2w"
    return None


def choose(
    volumes: list[VolumeInfo],
    mapping: dict[str, str] | None = None,
) -> tuple[dict[str, VolumeInfo], list[str]]:
    """Pick t2w, hbv and adc for one study; returns (chosen, problems).

    ``mapping`` maps a role ("t2w", "hbv", "adc") to a regular expression on the series
    description that overrides the automatic choice.
    """
    chosen: dict[str, VolumeInfo] = {}
    problems: list[str] = []
    pools = {
        "t2w": [v for v in volumes if v.kind == "t2w"],
        "hbv": [v for v in volumes if v.kind == "dwi"],
        "adc": [v for v in volumes if v.kind == "adc"],
    }
    for role, pattern in (mapping or {}).items():
        rx = re.compile(pattern, re.I)
        forced = [v for v in volumes if rx.search(v.description)]
        if role == "hbv":
            forced = [v for v in forced if v.b_value is not None]
        if forced:
            pools[role] = forced
        else:
            problems.append(f"mapping for {role} ({pattern!r}) matched no series")
    if pools["t2w"]:
        chosen["t2w"] = max(
            pools["t2w"], key=lambda v: (v.n_frames, -v.inplane_mm, v.series_number)
        )
    else:
        problems.append(_unusable(volumes, "t2w") or "no axial T2 series found")
    if pools["hbv"]:
        best = max(pools["hbv"], key=lambda v: (v.b_value or 0, not v.computed, v.n_frames))
        if (best.b_value or 0) >= HIGH_B_MIN:
            chosen["hbv"] = best
        else:
            problems.append(f"highest b-value is {best.b_value:g} s/mm² (< {HIGH_B_MIN:g})")
    else:
        problems.append(_unusable(volumes, "dwi") or "no diffusion series with a b-value found")
    if pools["adc"]:
        hbv = chosen.get("hbv")

        def adc_rank(v: VolumeInfo) -> tuple[int, int]:
            same_grid = hbv is not None and (v.rows, v.cols, v.n_frames) == (
                hbv.rows,
                hbv.cols,
                hbv.n_frames,
            )
            return (int(same_grid), v.n_frames)

        chosen["adc"] = max(pools["adc"], key=adc_rank)
    else:
        problems.append(_unusable(volumes, "adc") or "no ADC series found")
    return chosen, problems


def _unusable(volumes: list[VolumeInfo], kind: str) -> str | None:
    reasons = [v.reason for v in volumes if v.reason.startswith(f"unusable {kind}:")]
    return "; ".join(reasons) if reasons else None


def check_geometry(volumes: list[VolumeInfo]) -> list[Skipped]:
    """Check the slice stack of every candidate volume from its headers; a volume with missing
    or duplicate slices is demoted to "other" and its files are reported as skipped."""
    skipped: list[Skipped] = []
    for v in volumes:
        if v.kind == "other":
            continue
        try:
            frame_geometry(list(v.frames))
        except DicomError as exc:
            v.kind, v.reason = "other", f"unusable {v.kind}: {exc.message}"
            for path in sorted({f.path for f in v.frames}):
                skipped.append(Skipped(path, f"series {v.description!r}: {exc.message}"))
    return skipped


def load_mapping(path: Path | None) -> dict[str, str] | None:
    """Read an optional JSON mapping file ``{"t2w": "regex", "hbv": "regex", "adc": "regex"}``."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read mapping file {path}: {exc}") from None
    if not isinstance(data, dict) or not set(data) <= {"t2w", "hbv", "adc"}:
        raise InputError(f"mapping file {path} must be a JSON object with keys t2w, hbv, adc")
    for k, v in data.items():
        try:
            re.compile(v)
        except (re.error, TypeError):
            raise InputError(
                f"mapping for {k} in {path} is not a regular expression: {v!r}"
            ) from None
    return data


def scan(
    root: Path,
    workers: int | None = None,
    mapping: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Scan ``root`` recursively (headers only, ``workers`` processes) and choose bpMRI."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"DICOM folder not found: {root}")
    files = iter_files(root)
    frames: list[FrameHeader] = []
    skipped: list[Skipped] = []
    workers = workers or min(os.cpu_count() or 1, 8)
    results: Iterable[list[FrameHeader] | Skipped]
    if workers > 1 and len(files) > 256:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(read_headers, files, chunksize=64)
    else:
        pool = None
        results = map(read_headers, files)
    try:
        for n, r in enumerate(results, 1):
            if isinstance(r, Skipped):
                skipped.append(r)
            else:
                frames.extend(r)
            if progress and (n % 50 == 0 or n == len(files)):
                progress(n, len(files))
    finally:
        if pool is not None:
            pool.shutdown()
    # Drop exact duplicates (same SOP instance and frame exported twice).
    seen: set[tuple[str, int | None]] = set()
    unique = []
    for f in frames:
        if (f.sop_uid, f.frame) in seen:
            skipped.append(Skipped(f.path, "duplicate SOP instance (already read elsewhere)"))
            continue
        seen.add((f.sop_uid, f.frame))
        unique.append(f)
    studies = []
    for study_uid, vols in sorted(group_volumes(unique).items()):
        vols.sort(key=lambda v: (v.series_number, v.key))
        skipped.extend(check_geometry(vols))
        chosen, problems = choose(vols, mapping)
        f0 = vols[0].frames[0]
        studies.append(
            StudyInfo(
                study_uid,
                f0.accession,
                f0.patient_id,
                f0.study_date,
                f0.manufacturer,
                vols,
                chosen,
                problems,
            )
        )
    return ScanResult(str(root), len(files), studies, skipped)
