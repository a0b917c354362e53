"""Generate one institution's phantom studies: DICOM tree, labels CSV, truth masks, PI-CAI copy.

Layout written under ``out``::

    dicom/<PatientID>/<StudyDate>_<Accession>/<NNN>_<SeriesDescription>/IM*.dcm
    labels.csv                      keyed the way this institution keeps labels
    masks/<StudyInstanceUID>_{prostate,lesion}.nii.gz   truth on the axial T2 grid
    picai/images/<patient>/<patient>_<study>_{t2w,adc,hbv}.mha   PI-CAI public layout
    picai/marksheet.csv             with case_csPCa (YES/NO) and case_ISUP
    phantom.json                    parameters, for provenance (no clinical meaning)

Everything is deterministic for a given (institution, seed, case index), so adding cases never
changes the earlier ones.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.atomic import atomic_write_json, atomic_write_text
from shared.phantom import acquire
from shared.phantom.acquire import SeriesGrid, make_grid, orientation
from shared.phantom.anatomy import Patient, SmoothField, draw_patient
from shared.phantom.dicom_writer import SeriesSpec, Stack, StudyInfo, write_series
from shared.phantom.institutions import Institution, get_institution
from shared.phantom.vendors import VENDORS
from shared.profiles import Profile, get_profile
from shared.volume import Volume, save_mha, save_nifti

FIRST_NAMES = ["JOHN", "PETER", "LARS", "MIGUEL", "HENK", "JAMES", "ARJUN", "KENJI", "OMAR"]
LAST_NAMES = ["JANSSEN", "SMITH", "GARCIA", "MUELLER", "NAKAMURA", "OKAFOR", "ROSSI", "BERG"]


@dataclass(frozen=True)
class StudyTruth:
    """What the phantom knows about a study (the site's labels plus evaluation truth)."""

    index: int
    patient_id: str
    study_uid: str
    accession: str
    study_date: str
    cspca: int
    isup: int
    pirads: int
    picai_patient: int
    picai_study: int
    n_files: int


def _rng(inst: Institution, seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(inst.name.encode()), index, stream])


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:40]


def generate_study(
    out: Path,
    inst: Institution,
    profile: Profile,
    seed: int,
    index: int,
    force: dict[str, object] | None = None,
) -> StudyTruth:
    """Acquire and write one study; returns its truth record.

    ``force`` pins export choices that are otherwise drawn from the institution's
    probabilities (for tests): ``enhanced`` (bool), ``syntax`` ("explicit", "implicit",
    "jpeg-lossless", "j2k"), ``multi_b`` (bool), ``angulated`` (bool), ``positive`` (bool).
    """
    force = force or {}
    rng = _rng(inst, seed, index)
    positive = rng.random() < inst.prevalence
    positive = bool(force.get("positive", positive))
    patient = draw_patient(rng, positive)
    ph = profile.phantom
    style = VENDORS[inst.vendor]
    code = zlib.crc32(inst.name.encode()) % 900 + 100

    day = dt.date(2021, 1, 4) + dt.timedelta(days=int(rng.integers(0, 1200)))
    pid = f"{code}{seed % 100:02d}{index:05d}"
    study = StudyInfo(
        vendor=inst.vendor,
        field_strength=inst.field_strength,
        patient_name=f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}",
        patient_id=pid,
        birth_date=f"19{int(rng.integers(40, 70))}{int(rng.integers(1, 13)):02d}"
        f"{int(rng.integers(1, 29)):02d}",
        study_uid="",
        accession=f"A{code}{seed % 1000:03d}{index:06d}",
        study_date=day.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        institution=inst.display_name,
        station=f"{inst.vendor.upper()}MR{code}",
        device_serial=f"SN{code}{seed % 10}77",
        referring=f"{rng.choice(LAST_NAMES)}^REFERRER",
        operator=f"{rng.choice(LAST_NAMES)}^TECH",
        frame_of_reference_uid="",
        uid_seed=f"{inst.name}/{seed}/{index}",
    )
    from pydicom.uid import generate_uid

    study = StudyInfo(
        **{
            **study.__dict__,
            "study_uid": generate_uid(entropy_srcs=[study.uid_seed, "study"]),
            "frame_of_reference_uid": generate_uid(entropy_srcs=[study.uid_seed, "for"]),
        }
    )
    folder = out / "dicom" / pid / f"{study.study_date}_{study.accession}"
    enhanced = rng.random() < inst.enhanced
    syntax = "explicit"
    if not enhanced:
        if rng.random() < inst.compressed:
            syntax = "jpeg-lossless" if style.compressed_syntax.endswith(".70") else "j2k"
        elif rng.random() < inst.implicit_vr:
            syntax = "implicit"
    enhanced = bool(force.get("enhanced", enhanced))
    syntax = str(force.get("syntax", syntax))

    # The radiographer centres the axial T2 on the prostate, give or take a few mm.
    center = patient.prostate_center + rng.normal(0, 3.0, 3)
    t2_tilt = float(rng.normal(0, 4.0))
    n_t2 = int(round(ph.slab_mm / ph.t2_slice_mm))
    t2_grid = make_grid(
        center,
        orientation("axial", t2_tilt),
        ph.t2_inplane_mm,
        ph.fov_mm,
        ph.t2_slice_mm,
        n_t2,
        thickness_mm=ph.t2_slice_mm - 0.3,
    )
    angulated = bool(force.get("angulated", rng.random() < inst.angulated))
    dwi_tilt = t2_tilt + (float(rng.uniform(4, 10)) * rng.choice([-1, 1]) if angulated else 0.0)
    n_dwi = int(round(ph.slab_mm / ph.dwi_slice_mm))
    dwi_grid = make_grid(
        center + rng.normal(0, 1.0, 3),
        orientation("axial", dwi_tilt),
        ph.dwi_inplane_mm,
        ph.fov_mm * 1.1,
        ph.dwi_slice_mm,
        n_dwi,
    )
    bias_field = SmoothField.random(_rng(inst, seed, index, 1), 6, (250.0, 450.0))
    noise_rng = _rng(inst, seed, index, 2)

    series: list[SeriesSpec] = []
    # Tri-planar localizer: one series, three orientations.
    loc_stacks = []
    for kind in ("sagittal", "coronal", "axial"):
        g = make_grid(
            center,
            orientation(kind),
            ph.fov_mm * 2.5 / ph.localizer_matrix,
            ph.fov_mm * 2.5,
            8.0,
            3,
        )
        props = acquire.sample(patient, g, through_plane=1)
        img = acquire.t1_image(props, inst, acquire.bias_field(bias_field, g, inst.bias), noise_rng)
        loc_stacks.append(Stack(g, img * 1200.0))
    series.append(
        SeriesSpec(
            style.localizer,
            1,
            ("ORIGINAL", "PRIMARY", "M", "NORM"),
            loc_stacks,
            scanning_sequence="GR",
            echo_time=4,
            repetition_time=8,
        )
    )
    # Sagittal T2 (to be ignored by ingest).
    sag = make_grid(
        center,
        orientation("sagittal"),
        ph.t2_inplane_mm * 1.2,
        ph.fov_mm * 1.2,
        3.6,
        max(9, int(50 / 3.6)),
    )
    series.append(_t2_series(style.t2_sag, 2, patient, sag, inst, bias_field, noise_rng))
    # Axial T2.
    t2_props = acquire.sample(patient, t2_grid)
    t2_img = acquire.t2_image(
        t2_props, inst, acquire.bias_field(bias_field, t2_grid, inst.bias), noise_rng
    )
    series.append(
        SeriesSpec(
            style.t2_ax,
            3,
            ("ORIGINAL", "PRIMARY", "M", "NORM"),
            [Stack(t2_grid, t2_img * 1500.0)],
            echo_time=104,
            repetition_time=5660,
            **_philips_scale(inst, 1.25),
        )
    )
    # DWI (one multi-b series or one series per b), ADC, optional calculated high b.
    dwi_props = acquire.sample(patient, dwi_grid)
    dwi_bias = acquire.bias_field(bias_field, dwi_grid, inst.bias)
    dwi = acquire.dwi_images(dwi_props, dwi_grid, inst, dwi_bias, noise_rng)
    bvals = "_".join(str(b) for b in inst.b_values)
    dwi_scale = 1000.0
    if bool(force.get("multi_b", rng.random() < inst.multi_b_series)):
        stacks = [Stack(dwi_grid, dwi[b] * dwi_scale, b_value=b) for b in inst.b_values]
        series.append(
            SeriesSpec(
                style.dwi.format(bvals=bvals),
                4,
                style.dwi_image_type,
                stacks,
                scanning_sequence="EP",
                echo_time=68,
                repetition_time=4200,
            )
        )
    else:
        for n, b in enumerate(inst.b_values):
            series.append(
                SeriesSpec(
                    style.dwi.format(bvals=str(b)),
                    40 + n,
                    style.dwi_image_type,
                    [Stack(dwi_grid, dwi[b] * dwi_scale, b_value=b)],
                    scanning_sequence="EP",
                    echo_time=68,
                    repetition_time=4200,
                )
            )
    adc, ln_s0 = acquire.fit_adc(dwi, floor=inst.noise_dwi * 2.5 * inst.dwi_gain)
    series.append(
        SeriesSpec(
            style.adc.format(bvals=bvals),
            5,
            style.adc_image_type,
            [Stack(dwi_grid, adc)],
            scanning_sequence="EP",
            echo_time=68,
            repetition_time=4200,
            **_philips_scale(inst, 2.0),
        )
    )
    if inst.calculated_b:
        calc = acquire.calculated_b(adc, ln_s0, inst.calculated_b)
        calc_type = ("DERIVED", "PRIMARY", "DIFFUSION", "CALC_BVALUE", "TRACEW", "ND")
        series.append(
            SeriesSpec(
                style.calc.format(bvals=bvals),
                6,
                calc_type,
                [Stack(dwi_grid, calc * dwi_scale, b_value=inst.calculated_b)],
                scanning_sequence="EP",
                echo_time=68,
                repetition_time=4200,
            )
        )
    # Dynamic contrast series (to be ignored): repeated positions over time.
    dyn_grid = make_grid(
        center,
        orientation("axial"),
        ph.fov_mm / ph.localizer_matrix * 1.5,
        ph.fov_mm * 1.5,
        3.6,
        max(6, n_dwi // 2),
    )
    dyn_props = acquire.sample(patient, dyn_grid, through_plane=1)
    dyn_bias = acquire.bias_field(bias_field, dyn_grid, inst.bias)
    dyn_stacks = [
        Stack(
            dyn_grid,
            acquire.t1_image(dyn_props, inst, dyn_bias, noise_rng, enhancement=0.3 * t) * 1200.0,
            temporal_position=t + 1,
        )
        for t in range(ph.dynamic_phases)
    ]
    series.append(
        SeriesSpec(
            style.dynamic,
            7,
            ("ORIGINAL", "PRIMARY", "M", "NORM"),
            dyn_stacks,
            scanning_sequence="GR",
            echo_time=1.5,
            repetition_time=3.9,
        )
    )

    n_files = 0
    file_rng = _rng(inst, seed, index, 3)
    for spec in series:
        sfolder = folder / f"{spec.number:03d}_{_safe(spec.description)}"
        n_files += len(
            write_series(sfolder, study, spec, syntax=syntax, enhanced=enhanced, rng=file_rng)
        )

    # Truth masks on the T2 grid and the PI-CAI copy.
    t2_vol = Volume(t2_props["prostate"], t2_grid.affine)
    save_nifti(
        Volume((t2_props["prostate"] > 0.5).astype(np.uint8), t2_grid.affine),
        _mk(out / "masks" / f"{study.study_uid}_prostate.nii.gz"),
        np.uint8,
    )
    save_nifti(
        Volume((t2_props["lesion"] > 0.5).astype(np.uint8), t2_grid.affine),
        out / "masks" / f"{study.study_uid}_lesion.nii.gz",
        np.uint8,
    )
    del t2_vol
    picai_patient = 10000 + code * 100 + index
    picai_study = 1000000 + code * 1000 + index
    pdir = _mk(out / "picai" / "images" / str(picai_patient) / "x").parent
    stem = f"{picai_patient}_{picai_study}"
    high_b = max(inst.b_values + ((inst.calculated_b,) if inst.calculated_b else ()))
    hbv_img = dwi[high_b] if high_b in dwi else acquire.calculated_b(adc, ln_s0, high_b)
    save_mha(
        Volume(np.round(t2_img * 1500.0).astype(np.float32), t2_grid.affine),
        pdir / f"{stem}_t2w.mha",
    )
    save_mha(Volume(np.round(adc).astype(np.float32), dwi_grid.affine), pdir / f"{stem}_adc.mha")
    save_mha(
        Volume((hbv_img * dwi_scale).astype(np.float32), dwi_grid.affine), pdir / f"{stem}_hbv.mha"
    )
    save_nifti(
        Volume((t2_props["lesion"] > 0.5).astype(np.uint8), t2_grid.affine),
        _mk(out / "picai" / "labels" / f"{stem}.nii.gz"),
        np.uint8,
    )

    return StudyTruth(
        index,
        pid,
        study.study_uid,
        study.accession,
        study.study_date,
        patient.cspca,
        patient.isup,
        patient.pirads,
        picai_patient,
        picai_study,
        n_files,
    )


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _philips_scale(inst: Institution, slope: float) -> dict[str, float]:
    # Philips stores rescaled integers: the real value is stored * slope + intercept.
    return {"rescale_slope": slope} if inst.vendor == "philips" else {}


def _t2_series(
    desc: str,
    number: int,
    patient: Patient,
    grid: SeriesGrid,
    inst: Institution,
    bias_field: SmoothField,
    rng: np.random.Generator,
) -> SeriesSpec:
    props = acquire.sample(patient, grid, through_plane=1)
    img = acquire.t2_image(props, inst, acquire.bias_field(bias_field, grid, inst.bias), rng)
    return SeriesSpec(
        desc,
        number,
        ("ORIGINAL", "PRIMARY", "M", "NORM"),
        [Stack(grid, img * 1500.0)],
        echo_time=104,
        repetition_time=5000,
    )


LABEL_COLUMNS = {
    "study_uid": ["StudyInstanceUID"],
    "accession": ["AccessionNumber"],
    "patient_date": ["PatientID", "StudyDate"],
}


def write_labels(path: Path, inst: Institution, truths: list[StudyTruth]) -> None:
    """The site's label sheet, keyed the way this institution keeps it."""
    keys = LABEL_COLUMNS[inst.label_key]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*keys, "cspca", "isup", "pirads"])
    for t in truths:
        key_vals = {
            "StudyInstanceUID": t.study_uid,
            "AccessionNumber": t.accession,
            "PatientID": t.patient_id,
            "StudyDate": t.study_date,
        }
        w.writerow([*(key_vals[k] for k in keys), t.cspca, t.isup, t.pirads])
    atomic_write_text(path, buf.getvalue())


def write_marksheet(path: Path, inst: Institution, truths: list[StudyTruth]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", "study_id", "mri_date", "case_ISUP", "case_csPCa", "center"])
    for t in truths:
        date = f"{t.study_date[:4]}-{t.study_date[4:6]}-{t.study_date[6:]}"
        w.writerow(
            [
                t.picai_patient,
                t.picai_study,
                date,
                t.isup,
                "YES" if t.cspca else "NO",
                inst.name.upper(),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def generate_site(
    out: Path,
    n_cases: int,
    institution: str,
    seed: int,
    profile: str = "tiny",
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> list[StudyTruth]:
    """Write ``n_cases`` phantom studies of ``institution`` under ``out`` (see module doc)."""
    inst = get_institution(institution)
    prof = get_profile(profile)
    out.mkdir(parents=True, exist_ok=True)
    truths: list[StudyTruth] = []
    if workers > 1 and n_cases > 1:
        from concurrent.futures import ProcessPoolExecutor

        from shared.worker_threads import one_thread_each

        with ProcessPoolExecutor(max_workers=workers, initializer=one_thread_each) as pool:
            futs = [pool.submit(generate_study, out, inst, prof, seed, i) for i in range(n_cases)]
            for f in futs:
                truths.append(f.result())
                if progress:
                    progress(1)
    else:
        for i in range(n_cases):
            truths.append(generate_study(out, inst, prof, seed, i))
            if progress:
                progress(1)
    write_labels(out / "labels.csv", inst, truths)
    write_marksheet(out / "picai" / "marksheet.csv", inst, truths)
    atomic_write_json(
        out / "phantom.json",
        {
            "note": "phantom data: checks the machinery, carries no clinical truth",
            "institution": inst.__dict__,
            "profile": prof.name,
            "seed": seed,
            "cases": n_cases,
            "positives": sum(t.cspca for t in truths),
            "files": sum(t.n_files for t in truths),
        },
    )
    return truths
