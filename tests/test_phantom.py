"""Phantom realism and determinism, measured on the written DICOM (not on internals)."""

from __future__ import annotations

import hashlib

import numpy as np

from shared.dicom.reader import load_volume
from shared.dicom.scan import scan
from shared.phantom.consortium import generate_study
from shared.phantom.institutions import get_institution
from shared.profiles import get_profile
from shared.volume import load_nifti, resample


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.dcm")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    inst, prof = get_institution("borealis"), get_profile("tiny")
    generate_study(tmp_path / "a", inst, prof, 7, 3)
    generate_study(tmp_path / "b", inst, prof, 7, 3)
    generate_study(tmp_path / "c", inst, prof, 8, 3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_lesion_and_gland_adc_are_in_clinical_ranges(phantom_sites):
    """Vendor ADC (fitted from noisy DWI) in the lesion core vs the normal peripheral zone."""
    lesion_adc, gland_adc = [], []
    for site in phantom_sites.values():
        result = scan(site.dicom, workers=1)
        by_uid = {s.study_uid: s for s in result.studies}
        for t in site.truths:
            adc = load_volume(by_uid[t.study_uid].chosen["adc"])
            masks = {
                k: load_nifti(site.root / "masks" / f"{t.study_uid}_{k}.nii.gz")
                for k in ("lesion", "prostate")
            }
            on_adc = {
                k: resample(m, adc.affine, adc.shape, "linear", antialias=False).array
                for k, m in masks.items()
            }
            core = on_adc["lesion"] > 0.9
            gland = (on_adc["prostate"] > 0.9) & (on_adc["lesion"] < 0.01)
            if t.cspca and core.sum() >= 3:
                lesion_adc.append(float(np.median(adc.array[core])))
            gland_adc.append(float(np.median(adc.array[gland])))
    assert len(lesion_adc) >= 2
    assert 650 < np.median(lesion_adc) < 1100, lesion_adc
    assert 1150 < np.median(gland_adc) < 1800, gland_adc  # PZ ~1500-1800 mixed with TZ ~1250
    assert max(lesion_adc) < min(gland_adc)


def test_classic_phantom_files_pass_dciodvfy(phantom_sites):
    """The phantom's single-frame MR files validate (no errors) with Clunie's dciodvfy, so the
    ingest is exercised on conformant exports, as from a scanner."""
    import subprocess
    import sys
    from pathlib import Path

    dciodvfy = Path(sys.executable).parent / "dciodvfy"  # console script of the pip package
    files = []
    for name in ("borealis", "cascade", "external"):  # JPEG-Lossless, JPEG 2000, explicit
        for series in sorted((phantom_sites[name].dicom).glob("*/*/*")):
            files.append(sorted(series.glob("*.dcm"))[0])
    assert len(files) >= 15
    for f in files:
        proc = subprocess.run([str(dciodvfy), str(f)], capture_output=True, text=True)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
        assert errors == [], (f, errors)
