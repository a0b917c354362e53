"""The classifier's batched augmentation against torch's own 3D resampling.

``augment`` resamples slice-wise (a blend of slices, then 2D ``grid_sample``), which is only
right because its affine map keeps the slice axis apart; the reference here is the plain 3D
``affine_grid`` + ``grid_sample`` of the same map.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.classifier.data import augment, draw_augmentation, resample_inplane_affine


def _reference(batch, inplane, z_scale, shift):
    """The same map as one 3D theta: grid (w, h, d) = (z, y, x) for an (N, C, X, Y, Z) input."""
    n = batch.shape[0]
    theta = torch.zeros(n, 3, 4, dtype=batch.dtype)
    theta[:, 0, 0] = z_scale
    theta[:, 1, 1:3] = inplane[:, 0]  # y from (y, x)
    theta[:, 2, 1:3] = inplane[:, 1]  # x from (y, x)
    theta[:, :, 3] = shift.flip(1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _old_map(batch, generator):
    """The augmentation's map as first written, as one 3D theta for grid_sample."""
    n = batch.shape[0]
    flip, angle, scale, shift = draw_augmentation(n, generator)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 3, 4)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 1, 1] = cos / scale
    theta[:, 1, 2] = -sin / scale
    theta[:, 2, 1] = sin * flip / scale
    theta[:, 2, 2] = cos * flip / scale
    theta[:, :, 3] = shift.flip(1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("shape", [(3, 2, 24, 24, 12), (2, 1, 9, 13, 5), (1, 3, 16, 10, 1)])
def test_slicewise_resampling_equals_3d_grid_sample(shape) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    batch = torch.randn(shape, generator=g) * 100
    n = shape[0]
    inplane = torch.randn(n, 2, 2, generator=g) * 0.7
    z_scale = 0.6 + torch.rand(n, generator=g)  # zoom in and out through-plane
    shift = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.6  # taps beyond every edge
    got = resample_inplane_affine(batch, inplane, z_scale, shift)
    want = _reference(batch, inplane, z_scale, shift)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, atol=1e-4 * 100, rtol=0), (got - want).abs().max()
    assert (want == 0).any()  # some voxels did fall outside: the zeros padding was exercised


def test_augment_maps_as_before() -> None:
    """Same draws, same map: only the resampling changed."""
    batch = torch.randn(8, 3, 24, 24, 12)
    for seed in range(6):
        got = augment(batch, torch.Generator().manual_seed(seed))
        want = _old_map(batch, torch.Generator().manual_seed(seed))
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (seed, (got - want).abs().max())


def test_the_draws_are_pinned() -> None:
    """The draws of generator seed 0, as the augmentation first made them (git 64fdf62): a
    change of their order or ranges would change every training run."""
    flip, angle, scale, shift = draw_augmentation(4, torch.Generator().manual_seed(0))
    want = {
        "flip": [-1.0, 1.0, -1.0, -1.0],
        "angle": [-0.100833, 0.0, -0.005187, 0.207578],
        "scale": [1.0, 1.0, 0.958778, 1.003704],
        "shift": [
            [0.029057, 0.066431, -0.001646],
            [0.059865, -0.012895, 0.000847],
            [0.072438, -0.074214, -0.005036],
            [-0.020253, -0.031184, 0.006912],
        ],
    }
    for name, got in zip(want, (flip, angle, scale, shift), strict=True):
        assert torch.allclose(got, torch.tensor(want[name]), atol=1e-6, rtol=0), name


def test_augment_identity_and_flip_match_to_rounding() -> None:
    batch = torch.randn(4, 3, 10, 12, 6)
    same = augment(batch, torch.Generator().manual_seed(0), p=0.0)
    assert torch.allclose(same, batch, atol=1e-5)
    flipped = augment(
        batch, torch.Generator().manual_seed(0), rotate_deg=0.0, translate=0.0, zoom=(1, 1), p=1
    )
    assert torch.allclose(flipped, batch.flip(2), atol=1e-5)  # left-right is the X axis
