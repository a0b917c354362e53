"""Our DICOM volumes against readers that are not ours: SimpleITK (GDCM) and highdicom."""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from shared.dicom.reader import frame_geometry, load_volume
from shared.dicom.scan import scan
from shared.errors import DicomError
from shared.volume import Volume
from tests.conftest import assert_same_volume


def _sitk_volume(files: list[str], tmp: Path) -> Volume:
    """Read files with SimpleITK's own GDCM sorting (linked into a folder of their own)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        os.symlink(f, tmp / f"{i:05d}.dcm")
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(tmp))
    assert len(names) == len(files)
    reader.SetFileNames(names)
    return Volume.from_sitk(sitk.Cast(reader.Execute(), sitk.sitkFloat32))


def _highdicom_volume(path: str) -> Volume:
    v = hd.imread(path).get_volume(dtype=np.float32)
    return Volume.from_sitk(v.to_simpleitk())


@pytest.mark.parametrize("institution", ["aurora", "borealis", "cascade", "external"])
def test_volumes_match_independent_readers(phantom_sites, institution, tmp_path):
    site = phantom_sites[institution]
    result = scan(site.dicom, workers=1)
    checked = 0
    for study in result.studies:
        assert study.complete, study.problems
        for role, vol_info in study.chosen.items():
            ours = load_volume(vol_info)
            files = sorted({f.path for f in vol_info.frames})
            if vol_info.frames[0].frame is None:
                ref = _sitk_volume(files, tmp_path / f"{study.study_uid[-8:]}-{role}")
            else:  # enhanced multi-frame: highdicom reads the functional groups itself
                if len({f.b_value for f in vol_info.frames}) > 1 or len(files) != 1:
                    continue
                hd_ds = hd.imread(files[0])
                if len(hd_ds.PerFrameFunctionalGroupsSequence) != len(vol_info.frames):
                    continue  # a multi-b enhanced series: highdicom cannot pick one b
                ref = _highdicom_volume(files[0])
            assert_same_volume(ours, ref)
            checked += 1
    assert checked >= 3


def test_oblique_dwi_geometry_is_kept(phantom_sites):
    site = phantom_sites["cascade"]  # forced angulated DWI
    study = scan(site.dicom, workers=1).studies[0]
    t2 = load_volume(study.chosen["t2w"])
    hbv = load_volume(study.chosen["hbv"])
    cos = float(np.dot(t2.direction[:, 2], hbv.direction[:, 2]))
    assert cos < np.cos(np.deg2rad(3.5)), "the DWI block should be tilted against the T2"


def test_missing_slice_is_reported(phantom_sites):
    study = scan(phantom_sites["external"].dicom, workers=1).studies[0]
    frames = sorted(study.chosen["t2w"].frames, key=lambda f: f.ipp[2])
    del frames[len(frames) // 2]
    with pytest.raises(DicomError, match=r"1 missing slice"):
        frame_geometry(frames)


def test_duplicate_positions_are_reported(phantom_sites):
    study = scan(phantom_sites["external"].dicom, workers=1).studies[0]
    frames = list(study.chosen["t2w"].frames)
    with pytest.raises(DicomError, match="duplicate slice position"):
        frame_geometry(frames + frames[:1])
