"""DICOM ingest throughput: this toolkit against picai_prep's ``dcm2mha``, on one phantom tree.

Steps, all in one run on one machine and one generated tree:

1. generate a phantom DICOM tree (institution "aurora"; timed, not compared);
2. header scan (``shared.dicom.scan.scan``): files per second;
3. ours, full: scan + ``ingest_scan`` (loads, resamples to the profile grid, writes NIfTI);
   ours, conversion only: scan + load the chosen t2w/hbv/adc volumes and write each as MHA,
   the like-for-like comparison with ``dcm2mha``;
4. picai_prep ``Dicom2MHAConverter`` with hand-written mappings and archive;
5. geometry and voxel agreement of both tools' MHA files, per study and sequence;
6. ratios picai_prep / ours (>= 1 means ours is at least as fast).

Run: ``python -m benchmarks.ingest_vs_picai_prep [--cases 50] [--profile cpu] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.figures import INGEST_TARGET
from benchmarks.host import cpu_model
from shared.dicom.reader import load_volume
from shared.dicom.scan import ScanResult, StudyInfo, scan
from shared.ingest.dicom_ingest import ingest_scan
from shared.ingest.labels import read_labels
from shared.phantom.consortium import generate_site
from shared.profiles import get_profile
from shared.volume import save_mha

ROLES = ("t2w", "hbv", "adc")
INSTITUTION = "aurora"
WORKERS = 2
GEOMETRY_TOL_MM = 1e-3
# Hand-written picai_prep mappings (SeriesDescription substrings, case-insensitive).
PICAI_MAPPINGS: dict[str, dict[str, list[str]]] = {
    "t2w": {"SeriesDescription": ["t2_tse_tra"]},
    "hbv": {"SeriesDescription": ["CALC_BVAL"]},
    "adc": {"SeriesDescription": ["_ADC"]},
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t0


def _study_key(study: StudyInfo) -> str:
    """The key both tools share: ``<PatientID>_<accession>``."""
    return f"{study.patient_id}_{study.accession}"


# --- 1-3: generation, scan, our ingest -----------------------------------------------------
def generate(tree: Path, n_cases: int, profile: str, seed: int) -> dict[str, Any]:
    _, secs = _timed(generate_site, tree, n_cases, INSTITUTION, seed, profile, workers=WORKERS)
    n_files = sum(1 for _ in (tree / "dicom").rglob("*.dcm"))
    n_bytes = sum(p.stat().st_size for p in (tree / "dicom").rglob("*.dcm"))
    return {"seconds": secs, "studies": n_cases, "files": n_files, "megabytes": n_bytes / 1e6}


def run_scan(tree: Path) -> tuple[ScanResult, dict[str, Any]]:
    result, secs = _timed(scan, tree / "dicom", workers=WORKERS)
    stats = {
        "seconds": secs,
        "files": result.n_files,
        "files_per_second": result.n_files / secs,
        "studies": len(result.studies),
        "complete_studies": sum(s.complete for s in result.studies),
        "skipped_files": len(result.skipped),
    }
    return result, stats


def run_full_ingest(
    result: ScanResult, tree: Path, workspace: Path, profile: str
) -> dict[str, Any]:
    labels = read_labels(tree / "labels.csv")
    report, secs = _timed(
        ingest_scan, result, workspace, get_profile(profile), labels, workers=WORKERS
    )
    return {
        "seconds": secs,
        "ingested": len(report.ingested),
        "failed": report.failed,
        "unlabeled": len(report.unlabeled),
    }


def _convert_study(study: StudyInfo, out_dir: Path) -> tuple[str, str | None]:
    """Load the chosen t2w/hbv/adc of one study and write each as MHA (conversion only)."""
    key = _study_key(study)
    folder = out_dir / study.patient_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for role in ROLES:
            save_mha(load_volume(study.chosen[role]), folder / f"{key}_{role}.mha")
    except Exception as exc:  # report every failure, keep going
        return key, f"{type(exc).__name__}: {str(exc)[:160]}"
    return key, None


def run_ours_conversion(result: ScanResult, out_dir: Path) -> dict[str, Any]:
    studies = [s for s in result.studies if s.complete]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = list(pool.map(_convert_study, studies, [out_dir] * len(studies)))
    secs = time.perf_counter() - t0
    failed = {k: e for k, e in outcomes if e is not None}
    return {"seconds": secs, "converted": len(outcomes) - len(failed), "failed": failed}


# --- 4: picai_prep -------------------------------------------------------------------------
def picai_archive(dicom_root: Path) -> list[dict[str, str]]:
    """One archive item per series folder: ``<PatientID>/<date>_<acc>/<NNN>_<desc>``."""
    items = []
    for series in sorted(p for p in dicom_root.glob("*/*/*") if p.is_dir()):
        accession = series.parent.name.split("_", 1)[1]
        items.append(
            {
                "patient_id": series.parent.parent.name,
                "study_id": accession,
                "path": series.relative_to(dicom_root).as_posix(),
            }
        )
    return items


def _picai_log_summary(out_dir: Path) -> dict[str, Any]:
    """Count picai_prep's log lines that report a failure or a skipped series."""
    text = "\n".join(p.read_text(errors="replace") for p in sorted(out_dir.glob("*.log")))
    fatal = re.findall(r"FATAL: (.*)", text)
    skipped = re.findall(r'Skipped "[^"]+", (.*)', text)
    reasons: dict[str, int] = {}
    for line in fatal + skipped:
        reason = re.sub(r"/\S+", "<path>", line.strip())[:200]
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"fatal_series": len(fatal), "skipped_writes": len(skipped), "reasons": reasons}


def run_picai(dicom_root: Path, out_dir: Path) -> dict[str, Any]:
    """Time ``Dicom2MHAConverter.convert``; every picai_prep error is recorded, not raised."""
    record: dict[str, Any] = {"version": _picai_version()}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner on import
            from picai_prep import Dicom2MHAConverter

        settings = {
            "mappings": PICAI_MAPPINGS,
            "archive": picai_archive(dicom_root),
            "options": {"num_threads": WORKERS, "values_match_func": "lower_strip_contains"},
        }
        os.environ.setdefault("TQDM_DISABLE", "1")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            converter = Dicom2MHAConverter(dicom_root, out_dir, dcm2mha_settings=settings)
            converter.convert()
        record["seconds"] = time.perf_counter() - t0
        record["case_errors"] = {
            c.subject_id: f"{type(c.error).__name__}: {c.error}" for c in converter.cases if c.error
        }
    except Exception as exc:  # picai_prep itself failed: record and go on
        record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        _close_log_handlers()
    record["log"] = _picai_log_summary(out_dir)
    per_study = _written_roles(out_dir)
    record["converted"] = sum(len(r) == len(ROLES) for r in per_study.values())
    record["partial"] = {k: sorted(r) for k, r in per_study.items() if len(r) < len(ROLES)}
    record["mha_files"] = sum(len(r) for r in per_study.values())
    return record


def _picai_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("picai_prep")
    except PackageNotFoundError:
        return "not installed"


def _close_log_handlers() -> None:
    """picai_prep calls ``logging.basicConfig`` with a file; close it so later output is ours."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)


def _written_roles(out_dir: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for mha in out_dir.glob("*/*.mha"):
        key, role = mha.stem.rsplit("_", 1)
        found.setdefault(key, set()).add(role)
    return found


def _multi_b_series(result: ScanResult) -> list[tuple[Path, list[int]]]:
    """Series folders that hold several b-values in one series, with our per-b frame counts."""
    found: dict[str, tuple[Path, list[int]]] = {}
    for study in result.studies:
        by_series: dict[str, list[int]] = {}
        for vol in study.volumes:
            if vol.kind == "dwi" and vol.b_value is not None:
                by_series.setdefault(vol.series_uid, []).append(vol.n_frames)
        for uid, counts in by_series.items():
            vol = next(v for v in study.volumes if v.series_uid == uid)
            if len(counts) > 1 and vol.frames[0].frame is None:  # classic one-file-per-frame
                found[uid] = (Path(vol.frames[0].path).parent, counts)
    return list(found.values())


def picai_multi_b_check(result: ScanResult, limit: int = 5) -> list[dict[str, Any]]:
    """Untimed side check: what picai_prep reads from a multi-b series (not in the mappings)."""
    import SimpleITK as sitk

    with contextlib.redirect_stdout(io.StringIO()):
        from picai_prep.dcm2mha import DICOMImageReader
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    checks = []
    for folder, counts in _multi_b_series(result)[:limit]:
        entry: dict[str, Any] = {"series": folder.name, "ours_volumes_frames": counts}
        try:
            img = DICOMImageReader(folder).image
            entry.update(picai_size=list(img.GetSize()), picai_spacing=list(img.GetSpacing()))
        except Exception as exc:
            entry["picai_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        checks.append(entry)
    sitk.ProcessObject_SetGlobalWarningDisplay(True)
    return checks


# --- 5: agreement --------------------------------------------------------------------------
def compare_pair(ours: Path, theirs: Path) -> dict[str, Any]:
    """Geometry (size, spacing, origin, direction) and voxel agreement of two MHA files."""
    import SimpleITK as sitk

    a, b = sitk.ReadImage(str(ours)), sitk.ReadImage(str(theirs))
    phi = [k for k in ("0010|0010", "0010|0020") if b.HasMetaDataKey(k)]
    notes = []
    if b.GetDimension() == 4 and b.GetSize()[3] == 1:  # enhanced multi-frame via GDCM
        notes.append(f"picai_prep wrote a 4D image {b.GetSize()}; compared its 3D part")
        b = b[:, :, :, 0]
    problems = []
    if a.GetDimension() != b.GetDimension() or a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    for name in ("Spacing", "Origin", "Direction") if not problems else ():
        va, vb = (np.asarray(getattr(img, f"Get{name}")()) for img in (a, b))
        diff = float(np.max(np.abs(va - vb)))
        if diff > GEOMETRY_TOL_MM:
            problems.append(f"{name.lower()} differs by {diff:.4g}")
    entry: dict[str, Any] = {"geometry_ok": not problems, "problems": problems, "notes": notes}
    if a.GetSize() == b.GetSize():
        va = sitk.GetArrayFromImage(a).astype(np.float64)
        vb = sitk.GetArrayFromImage(b).astype(np.float64)
        entry["max_abs_diff"] = float(np.max(np.abs(va - vb)))
    entry["picai_phi_tags"] = phi
    return entry


def _source_note(study: StudyInfo, role: str) -> str:
    vol = study.chosen[role]
    return f"ours read '{vol.description}' (b={vol.b_value}, {vol.n_frames} frames)"


def compare_outputs(result: ScanResult, ours_dir: Path, picai_dir: Path) -> dict[str, Any]:
    pairs: list[dict[str, Any]] = []
    for study in (s for s in result.studies if s.complete):
        key = _study_key(study)
        for role in ROLES:
            mine = ours_dir / study.patient_id / f"{key}_{role}.mha"
            theirs = picai_dir / study.patient_id / f"{key}_{role}.mha"
            if not (mine.is_file() and theirs.is_file()):
                continue
            entry = compare_pair(mine, theirs)
            entry.update(study=key, role=role, source=_source_note(study, role))
            pairs.append(entry)
    return _summarise_pairs(pairs)


def _summarise_pairs(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    geometry_ok = [p for p in pairs if p["geometry_ok"]]
    identical = [p for p in geometry_ok if p.get("max_abs_diff", np.inf) <= 1e-3]
    reasons: dict[str, int] = {}
    for p in pairs:
        if p not in identical or p["notes"]:
            why = "; ".join(p["notes"] + p["problems"])
            if p in geometry_ok and p not in identical:
                why += f"; voxels differ (max {p.get('max_abs_diff'):.4g})"
            label = f"{p['role']}: {why} [{p['source']}]"
            reasons[label] = reasons.get(label, 0) + 1
    return {
        "compared_volumes": len(pairs),
        "geometry_agree": len(geometry_ok),
        "geometry_and_voxels_agree": len(identical),
        "max_abs_diff_when_geometry_agrees": max(
            (p["max_abs_diff"] for p in geometry_ok), default=None
        ),
        "picai_4d_outputs": sum(bool(p["notes"]) for p in pairs),
        "picai_mha_with_patient_tags": sum(bool(p["picai_phi_tags"]) for p in pairs),
        "disagreements": reasons,
    }


# --- 6: report -----------------------------------------------------------------------------
def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num and den else None


def ratios(res: dict[str, Any]) -> dict[str, float | None]:
    picai = res["picai_prep"].get("seconds")
    scan_s = res["scan"]["seconds"]
    return {
        "picai_over_ours_conversion": _ratio(picai, scan_s + res["ours_conversion"]["seconds"]),
        "picai_over_ours_full_ingest": _ratio(picai, scan_s + res["ours_full_ingest"]["seconds"]),
    }


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _spacing(check: dict[str, Any]) -> str:
    return "x".join(f"{v:.3g}" for v in check["picai_spacing"])


def print_table(res: dict[str, Any]) -> None:
    g, s = res["generation"], res["scan"]
    oc, of, pp = res["ours_conversion"], res["ours_full_ingest"], res["picai_prep"]
    n = s["complete_studies"]
    scan_s = s["seconds"]
    rows = [
        ("generate phantom tree (not compared)", g["seconds"], f"{g['files']} files"),
        ("header scan", scan_s, f"{s['files_per_second']:.0f} files/s"),
        ("ours, conversion only (scan + MHA)", scan_s + oc["seconds"], f"{oc['converted']}/{n}"),
        ("ours, full ingest (scan + ingest)", scan_s + of["seconds"], f"{of['ingested']}/{n}"),
        ("picai_prep dcm2mha", pp.get("seconds"), f"{pp['converted']}/{n}"),
    ]
    print(
        f"\n{res['config']['cases']} studies, profile {res['config']['profile']}, "
        f"{res['config']['workers']} workers, {res['machine']['cpus']} CPUs"
    )
    print(f"median of {res['config']['repeat']} rounds")
    print(f"{'step':<40} {'seconds':>9}  {'result':<20}")
    for name, secs, note in rows:
        print(f"{name:<40} {_fmt(secs):>9}  {note:<20}")
    r = res["ratios"]
    print(f"\npicai_prep / ours (conversion only): {_fmt(r['picai_over_ours_conversion'])}")
    print(f"picai_prep / ours (full ingest):     {_fmt(r['picai_over_ours_full_ingest'])}")
    print(f"target: ratio >= {INGEST_TARGET:g} (issue 15)")
    a = res["agreement"]
    print(
        f"\nagreement: {a['geometry_agree']}/{a['compared_volumes']} volumes same geometry, "
        f"{a['geometry_and_voxels_agree']} also same voxels; "
        f"{a['picai_mha_with_patient_tags']} picai_prep MHA files carry PatientName/ID tags"
    )
    for why, count in a["disagreements"].items():
        print(f"  {count} x {why}")
    for c in res["picai_multi_b_check"]:
        got = c.get("picai_error") or f"size {c['picai_size']}, spacing {_spacing(c)}"
        print(
            f"  multi-b series {c['series']}: ours {c['ours_volumes_frames']} frames per b; "
            f"picai_prep reads one volume, {got}"
        )
    if pp.get("error"):
        print(f"picai_prep error: {pp['error']}")
    for why, count in pp["log"]["reasons"].items():
        print(f"  picai_prep log, {count} x {why}")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --- main ----------------------------------------------------------------------------------
def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The last round's record, with ``seconds`` replaced by the median over all rounds."""
    runs = [r.get("seconds") for r in rounds]
    merged = dict(rounds[-1])
    if all(x is not None for x in runs):
        merged["seconds"] = float(np.median(runs))
    merged["runs_seconds"] = runs
    return merged


def timed_rounds(tree: Path, work: Path, profile: str, repeat: int) -> dict[str, Any]:
    """Run every timed step ``repeat`` times, interleaved, each round into fresh folders."""
    steps: dict[str, list[dict[str, Any]]] = {}
    result: ScanResult | None = None
    for i in range(repeat):
        # A reused --work keeps earlier rounds' outputs: picai_prep skips every file that
        # exists (and would look several times faster), and our ingest keeps unchanged cases.
        for folder in ("ours_mha", "workspace", "picai_mha"):
            shutil.rmtree(work / folder / f"r{i}", ignore_errors=True)
        result, scan_stats = run_scan(tree)
        round_ = {
            "scan": scan_stats,
            "ours_conversion": run_ours_conversion(result, work / f"ours_mha/r{i}"),
            "ours_full_ingest": run_full_ingest(result, tree, work / f"workspace/r{i}", profile),
            "picai_prep": run_picai(tree / "dicom", work / f"picai_mha/r{i}"),
        }
        for name, record in round_.items():
            steps.setdefault(name, []).append(record)
    out = {name: _median_of(rounds) for name, rounds in steps.items()}
    out["scan"]["files_per_second"] = out["scan"]["files"] / out["scan"]["seconds"]
    out["_result"] = result
    return out


def run(n_cases: int, profile: str, seed: int, work: Path, repeat: int) -> dict[str, Any]:
    tree = work / "tree"
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
        },
        "config": {
            "cases": n_cases,
            "profile": profile,
            "seed": seed,
            "workers": WORKERS,
            "repeat": repeat,
            "timing": "median over rounds; each round runs scan, ours, picai_prep in turn",
        },
        "picai_mappings": PICAI_MAPPINGS,
    }
    res["generation"] = generate(tree, n_cases, profile, seed)
    res.update(timed_rounds(tree, work, profile, repeat))
    result = res.pop("_result")
    res["picai_multi_b_check"] = picai_multi_b_check(result)
    res["agreement"] = compare_outputs(result, work / "ours_mha/r0", work / "picai_mha/r0")
    res["ratios"] = ratios(res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=50, help="phantom studies (default 50)")
    ap.add_argument("--profile", default="cpu", help="tiny, cpu or paper (default cpu)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds; median is reported")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    ap.add_argument("--work", type=Path, help="keep the tree and outputs here (default: temp)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    try:
        res = run(args.cases, args.profile, args.seed, work, max(1, args.repeat))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out / "ingest_vs_picai_prep.json"
    write_json_atomic(out, res)
    print_table(res)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
