"""Anti-aliased resampling smooths only the part of the source the target grid sees; the
result must equal SimpleITK smoothing the whole image and resampling it (the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from shared import volume
from shared.volume import Volume, grid_affine, resample


def _t2_like() -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 30, (160, 160, 20)).astype(np.float32)
    affine = np.diag([0.625, 0.625, 3.6, 1.0])
    affine[:3, 3] = (-50.0, -50.0, -36.0)
    return Volume(arr, affine)


ROTATED = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]])


@pytest.mark.parametrize(
    "center, direction",
    [
        ((0.0, 0.0, 0.0), np.eye(3)),  # inside the source: the crop is a small part of it
        ((35.0, -30.0, 10.0), np.eye(3)),  # hanging over the source's edge
        ((5.0, 0.0, 0.0), ROTATED),  # oblique
        ((0.0, 0.0, 32.4 + 3.6 * 7.5 - 1.0), np.eye(3)),  # grazing the last slice
    ],
)
def test_cropped_smoothing_equals_smoothing_the_whole_source(center, direction, monkeypatch):
    vol = _t2_like()
    size = (32, 32, 16)
    affine = grid_affine(np.asarray(center), direction, (2.0, 2.0, 3.6), size)
    got = resample(vol, affine, size, "linear").array
    # the reference: the same resampling with the whole source smoothed
    monkeypatch.setattr(volume, "_crop_to_grid", lambda src, *args, **kwargs: src)
    want = resample(vol, affine, size, "linear").array
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(got).max() > 0  # the grid does see the source


def test_a_grid_beside_the_source_resamples_to_fill():
    # The crop of a grid that misses the source is thinner than the 4 voxels SimpleITK's
    # recursive Gaussian needs along an axis; it must still give the fill value, not an error.
    size = (32, 32, 16)
    affine = grid_affine(np.array([0.0, 0.0, -100.0]), np.eye(3), (2.0, 2.0, 3.6), size)
    out = resample(_t2_like(), affine, size, "linear", fill=-1.0).array
    assert out.shape == size and np.all(out == -1.0)
