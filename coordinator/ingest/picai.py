"""Ingest the PI-CAI public layout: ``images/<patient>/<patient>_<study>_{t2w,adc,hbv}.mha``
plus a marksheet CSV with ``patient_id``, ``study_id``, ``case_csPCa`` (YES/NO) and
``case_ISUP``; optional lesion labels ``labels/<patient>_<study>.nii.gz``."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared import __version__
from shared.atomic import clean_partials
from shared.case_format import CaseMeta, read_meta, write_case
from shared.errors import InputError
from shared.ids import case_id, load_or_create_salt
from shared.ingest.build import build_case_volumes
from shared.ingest.labels import make_label
from shared.profiles import Profile
from shared.volume import load_mha, load_nifti

SEQ_FILES = {"t2w": "t2w", "hbv": "hbv", "adc": "adc"}


@dataclass
class PicaiReport:
    ingested: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return self.__dict__.copy()


def read_marksheet(path: Path) -> dict[str, tuple[int | None, int | None]]:
    """``"<patient>_<study>"`` → (cspca, isup) from a PI-CAI marksheet."""
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    except OSError as exc:
        raise InputError(f"cannot read marksheet {path}: {exc.strerror or exc}") from None
    if not rows or not {"patient_id", "study_id"} <= set(rows[0]):
        raise InputError(f"marksheet {path} needs columns patient_id and study_id")
    out: dict[str, tuple[int | None, int | None]] = {}
    for n, r in enumerate(rows, start=2):
        cs = (r.get("case_csPCa") or "").strip().upper()
        cspca = 1 if cs in ("YES", "1") else 0 if cs in ("NO", "0") else None
        isup_s = (r.get("case_ISUP") or "").strip()
        try:
            isup = int(float(isup_s)) if isup_s else None
        except ValueError:
            raise InputError(
                f"marksheet row {n}: case_ISUP must be a number, not {isup_s!r}"
            ) from None
        out[f"{r['patient_id'].strip()}_{r['study_id'].strip()}"] = (cspca, isup)
    return out


def ingest_picai(
    root: Path,
    marksheet: Path | None,
    workspace: Path,
    profile: Profile,
    store: str = "external",
    progress: Callable[[int], None] | None = None,
) -> PicaiReport:
    """Write one case per PI-CAI study folder into ``workspace/cases/<store>``."""
    images = root / "images" if (root / "images").is_dir() else root
    if not images.is_dir():
        raise InputError(f"PI-CAI folder not found: {root}")
    labels = read_marksheet(marksheet) if marksheet else {}
    stems = sorted({p.name[: -len("_t2w.mha")] for p in images.glob("*/*_t2w.mha")})
    if not stems:  # before anything is written to the workspace
        raise InputError(f"no <patient>_<study>_t2w.mha files under {images}")
    salt = load_or_create_salt(workspace)
    store_dir = workspace / "cases" / store
    store_dir.mkdir(parents=True, exist_ok=True)
    clean_partials(store_dir)
    report = PicaiReport()
    for stem in stems:
        patient = stem.split("_")[0]
        files = {s: images / patient / f"{stem}_{suffix}.mha" for s, suffix in SEQ_FILES.items()}
        cid = case_id(salt, f"picai:{stem}")
        missing = [s for s, p in files.items() if not p.is_file()]
        if missing:
            report.failed.append({"case": cid, "reason": f"missing {', '.join(missing)}"})
            continue
        lesion_path = root / "labels" / f"{stem}.nii.gz"
        cspca, isup = labels.get(stem, (None, None))
        label = make_label(cspca, isup, None)
        h = hashlib.sha256(f"{profile.name}|{profile.grid}|{label}".encode())
        for p in [*files.values(), lesion_path]:
            if p.is_file():
                h.update(f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}".encode())
        fp = h.hexdigest()
        folder = store_dir / cid
        if (folder / "case.json").is_file() and read_meta(folder).provenance.get(
            "input_fingerprint"
        ) == fp:
            report.unchanged.append(cid)
            if progress:
                progress(1)
            continue
        try:
            vols = {s: load_mha(p) for s, p in files.items()}
            lesion = load_nifti(lesion_path) if lesion_path.is_file() else None
            out, notes = build_case_volumes(
                vols["t2w"], vols["hbv"], vols["adc"], profile.grid, lesion=lesion
            )
        except (RuntimeError, ValueError, OSError) as exc:
            report.failed.append({"case": cid, "reason": f"{type(exc).__name__}: {exc}"[:160]})
            continue
        meta = CaseMeta(
            case_id=cid,
            origin="real",
            label=label,
            grid_size=list(profile.grid.size),
            grid_spacing=list(profile.grid.spacing),
            profile=profile.name,
            sequences={s: {"source": "PI-CAI MHA"} for s in files},
            intensity=notes,
            provenance={"tool_version": __version__, "input_fingerprint": fp, "layout": "picai"},
            has_lesion_mask=lesion is not None,
        )
        write_case(folder, meta, out)
        report.ingested.append(cid)
        if label.cspca is None:
            report.unlabeled.append(cid)
        if progress:
            progress(1)
    return report
