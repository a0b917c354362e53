"""Anti-aliased resampling smooths only the part of the source the target grid sees; the
result must equal smoothing the whole image and resampling it, its Gaussian must be scipy's,
and the whole must agree with SimpleITK's own smoothing and resampling (the references). The
build's intensity percentiles, counted for whole-number volumes, must be numpy's."""

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
    monkeypatch.setattr(volume, "_crop_to_grid", lambda vol, *args, **kwargs: vol)
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


@pytest.mark.parametrize("sigma", [(1.29, 1.29, 0.0), (0.4, 2.5, 1.1), (0.1, 0.0, 3.0)])
def test_the_smoothing_is_scipys_gaussian(sigma):
    from scipy import ndimage

    arr = _t2_like().array[:60, :50, :]
    want = arr.astype(np.float64)
    for axis, s in enumerate(sigma):
        if s > 0:
            want = ndimage.gaussian_filter1d(want, s, axis=axis, mode="nearest", truncate=4.0)
    got = volume.gaussian_smooth(arr, np.asarray(sigma))
    assert got.dtype == np.float32 and got.shape == arr.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _sphere_in_noise() -> Volume:
    """A bright sphere (r 20 mm) in noise on the T2-like grid: edges and noise to smooth."""
    vol = _t2_like()
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), axis=-1)
    r = np.linalg.norm(ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3] - (3.0, -4.0, 2.0), axis=-1)
    noise = np.random.default_rng(1).normal(0, 10, vol.shape)
    return Volume((np.where(r < 20, 200.0, 100.0) + noise).astype(np.float32), vol.affine)


@pytest.mark.parametrize("direction", [np.eye(3), ROTATED])
def test_anti_aliased_resampling_agrees_with_simpleitks_recursive_gaussian(direction):
    import SimpleITK as sitk

    vol = _sphere_in_noise()
    size = (32, 32, 16)
    affine = grid_affine(np.zeros(3), direction, (2.0, 2.0, 3.6), size)
    got = resample(vol, affine, size, "linear").array
    # SimpleITK: its recursive (Deriche) Gaussian over the whole source with the sigma that
    # makes 0.625 mm voxels 2 mm (FWHM sqrt(2^2 - 0.625^2) mm in-plane, none along the
    # slices), then its own resampler
    sigma_mm = np.sqrt(2.0**2 - 0.625**2) / 2.3548
    in_plane = np.abs(direction[:2, :2]).sum(axis=1) * sigma_mm
    src = sitk.SmoothingRecursiveGaussian(vol.to_sitk(), [*map(float, in_plane), 1e-3])
    ref = Volume(np.zeros(size, dtype=np.float32), affine).to_sitk()
    want = Volume.from_sitk(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear)).array
    span = want.max() - want.min()
    # the recursive filter approximates the Gaussian: agreement to 1 % of the range (measured:
    # 0.2 % axis-aligned, 0.7 % oblique), where not smoothing at all is off by some 40 %
    assert np.abs(got - want).max() <= 0.01 * span
    plain = resample(vol, affine, size, "linear", antialias=False).array
    assert np.abs(plain - want).max() > 0.2 * span


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(2).integers(0, 2000, (40, 30, 6)),  # uint16-like: counted
        np.array([3.0]),
        np.array([0.0, 65535.0, 7.0, 7.0]),
        np.random.default_rng(3).normal(0, 1, (20, 20, 4)),  # not whole numbers: numpy
        np.array([-2.0, 5.0, 9.0]),  # negative: numpy
    ],
)
def test_intensity_percentiles_equal_numpys(values):
    from shared.volume import percentiles

    arrays = [values.astype(np.float32)]
    if values.min() >= 0 and np.array_equal(values, np.round(values)):
        arrays.append(values.astype(np.uint16))  # stored pixels, as the phantom writer has them
    for arr in arrays:
        for q in [(1.0, 99.0), (0.0, 100.0), (50.0,), (37.3,)]:
            want = np.percentile(arr.astype(np.float64), q)
            assert np.allclose(percentiles(arr, q), want, rtol=1e-7, atol=0), (arr.dtype, q)
