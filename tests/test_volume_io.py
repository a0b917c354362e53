"""Case volumes on disk: ``save_nifti`` writes nibabel's own NIfTI bytes in a gzip stream that
any reader opens, with no file name in the gzip header, compressed as nibabel compresses."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from shared.volume import Volume, load_nifti, save_nifti


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_save_nifti_writes_nibabels_bytes(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arr = np.clip(rng.normal(0.5, 0.3, (32, 32, 16)), 0, 3)
    if dtype is np.uint8:
        arr = arr > 0.9  # a mask: long runs
    affine = np.array([[0.0, 2.0, 0, -30], [-2.0, 0, 0, 12], [0, 0, 3.6, -20], [0, 0, 0, 1]])
    vol = Volume(arr.astype(dtype), affine)
    ours, theirs = tmp_path / "ours.nii.gz", tmp_path / "theirs.nii.gz"
    save_nifti(vol, ours, dtype)
    nib.save(vol.to_nifti(dtype), str(theirs))
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(theirs.read_bytes())
    back = load_nifti(ours)
    assert np.array_equal(back.array, vol.array.astype(np.float32))
    assert np.allclose(back.affine, affine)
    # gzip header: FLG (byte 3) has no FNAME bit, so no file name travels with the file
    assert ours.read_bytes()[3] & 0x08 == 0
    # as small as nibabel's level-1 deflate gives, within 2 %
    assert ours.stat().st_size <= 1.02 * theirs.stat().st_size
