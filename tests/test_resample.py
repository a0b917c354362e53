"""Anti-aliased resampling smooths only the part of the source the target grid sees; the
result must equal SimpleITK smoothing the whole image and resampling it (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from shared.volume import Volume, grid_affine, resample


def _reference(vol: Volume, affine: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Smooth the whole source with the sigma resample() uses, then resample: no cropping."""
    src = sitk.Cast(vol.to_sitk(), sitk.sitkFloat32)
    target_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    tgt_dir = affine[:3, :3] / target_spacing
    src_sp = np.abs(tgt_dir.T @ vol.direction) @ vol.spacing
    sigma_tgt = np.sqrt(np.clip(target_spacing**2 - src_sp**2, 0, None)) / 2.3548
    sigma_src = np.maximum(np.abs(vol.direction.T @ tgt_dir) @ sigma_tgt, 1e-3)
    src = sitk.SmoothingRecursiveGaussian(src, [float(s) for s in sigma_src])
    ref = Volume(np.zeros(size, dtype=np.float32), affine).to_sitk()
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return Volume.from_sitk(out).array


def _t2_like() -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 30, (160, 160, 20)).astype(np.float32)
    affine = np.diag([0.625, 0.625, 3.6, 1.0])
    affine[:3, 3] = (-50.0, -50.0, -36.0)
    return Volume(arr, affine)


@pytest.mark.parametrize(
    "center, direction",
    [
        ((0.0, 0.0, 0.0), np.eye(3)),  # inside the source: the crop is a small part of it
        ((35.0, -30.0, 10.0), np.eye(3)),  # hanging over the source's edge
        (
            (5.0, 0.0, 0.0),
            np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]]),
        ),  # oblique
    ],
)
def test_cropped_smoothing_equals_smoothing_the_whole_source(center, direction):
    vol = _t2_like()
    size = (32, 32, 16)
    affine = grid_affine(np.asarray(center), direction, (2.0, 2.0, 3.6), size)
    got = resample(vol, affine, size, "linear").array
    want = _reference(vol, affine, size)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(got).max() > 0  # the grid does see the source
