"""Cases as tensors for the classifier, and batched augmentation.

Arrays are (N, C, X, Y, Z) float32 in the case format's intensity scale; X is the patient's
right-left axis of the case grid (the T2 row direction), Z the slice axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.case_format import read_case, read_meta
from shared.errors import InputError

BPMRI = ("t2w", "hbv", "adc")
T2_ONLY = ("t2w",)


@dataclass
class CaseTensors:
    x: np.ndarray  # (N, C, X, Y, Z) float32
    y: np.ndarray  # (N,) float32, 1 = csPCa
    ids: list[str]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> CaseTensors:
        idx = np.asarray(index, dtype=np.int64)
        return CaseTensors(self.x[idx], self.y[idx], [self.ids[i] for i in idx])

    @property
    def n_positive(self) -> int:
        return int(self.y.sum())


def load_case_tensors(folders: Sequence[Path], sequences: Sequence[str] = BPMRI) -> CaseTensors:
    """Stack labelled cases into arrays; every case must carry a cspca label."""
    if not folders:
        raise InputError("no cases to load")
    unlabeled = [f.name for f in folders if read_meta(f).label.cspca is None]
    if unlabeled:
        raise InputError(
            f"{len(unlabeled)} case(s) have no cspca label (e.g. {unlabeled[0]})",
            hint="ingest with --labels, or leave unlabeled cases out of training",
        )
    xs, ys, ids = [], [], []
    for f in folders:
        case = read_case(f)
        xs.append(case.stack(tuple(sequences)))
        ys.append(float(case.meta.label.cspca or 0))
        ids.append(case.meta.case_id)
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
        raise InputError(f"cases are on different grids {sorted(shapes)}: use one profile")
    return CaseTensors(np.stack(xs), np.asarray(ys, dtype=np.float32), ids)


def augment(
    batch,
    generator,
    rotate_deg: float = 15.0,
    translate: float = 0.08,
    zoom: tuple[float, float] = (0.9, 1.1),
    p: float = 0.5,
):
    """The paper's augmentations, batched: left-right flip, in-plane rotation, translation and
    zoom (each applied with probability ``p``), resampled trilinearly with zeros outside.

    ``batch`` is a (N, C, X, Y, Z) tensor; ``translate`` is a fraction of the field of view
    (in-plane; a tenth of it through-plane).
    """
    import torch

    flip, angle, scale, shift = draw_augmentation(
        batch.shape[0], generator, rotate_deg, translate, zoom, p
    )
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Source coordinates (normalised, align_corners=False) of each output voxel:
    #   x_src = (sin * y + cos * x) * flip / scale + shift_x     (flip: left-right)
    #   y_src = (cos * y - sin * x) / scale + shift_y
    #   z_src = z / scale + shift_z
    inplane = torch.stack([cos, -sin, sin * flip, cos * flip], 1).reshape(-1, 2, 2)
    dev = batch.device
    return resample_inplane_affine(
        batch, (inplane / scale[:, None, None]).to(dev), (1.0 / scale).to(dev), shift.to(dev)
    )


def draw_augmentation(
    n: int,
    generator,
    rotate_deg: float = 15.0,
    translate: float = 0.08,
    zoom: tuple[float, float] = (0.9, 1.1),
    p: float = 0.5,
):
    """Each case's (flip +-1, in-plane angle in radians, zoom, (x, y, z) shift), each one
    applied with probability ``p`` (else the identity); drawn in this order from ``generator``."""
    import torch

    def coin() -> torch.Tensor:
        return (torch.rand(n, generator=generator) < p).float()

    flip = torch.where(coin() > 0, -1.0, 1.0)
    angle = torch.deg2rad((torch.rand(n, generator=generator) * 2 - 1) * rotate_deg) * coin()
    scale = 1.0 + (torch.rand(n, generator=generator) * (zoom[1] - zoom[0]) + zoom[0] - 1) * coin()
    shift = (torch.rand(n, 3, generator=generator) * 2 - 1) * translate
    shift[:, 2] *= 0.1
    return flip, angle, scale, shift * coin()[:, None]


def resample_inplane_affine(batch, inplane, z_scale, shift):
    """Trilinear resampling (zeros outside) of (N, C, X, Y, Z) ``batch`` by a per-case affine
    map that keeps slices apart: ``inplane`` (N, 2, 2) maps output (y, x) to source (y, x),
    ``z_scale`` (N,) scales the slice axis, ``shift`` (N, 3) moves (x, y, z); coordinates as
    ``torch.nn.functional.affine_grid`` normalises them (align_corners=False).

    It equals ``grid_sample`` of the whole 3D map (tests/test_classifier_augment.py checks it
    to float rounding): the map is block diagonal, so trilinear weights factor into a linear
    blend of slices (a small matrix product) and bilinear resampling of each slice, whose
    vectorised 2D kernel is about 3x faster on the CPU than the 3D one.
    """
    import torch
    import torch.nn.functional as F

    n, c, nx, ny, nz = batch.shape
    dtype, dev = batch.dtype, batch.device

    def centres(k: int) -> torch.Tensor:  # voxel centres in [-1, 1]
        return (2 * torch.arange(k, dtype=dtype, device=dev) + 1) / k - 1

    # Slice axis: output slice k reads source position z (in voxels), between floor(z) and
    # floor(z) + 1; a tap outside the volume reads zero, as grid_sample's zeros padding does.
    z = ((centres(nz)[None, :] * z_scale[:, None] + shift[:, 2:3] + 1) * nz - 1) / 2
    z0 = torch.floor(z)
    w1 = z - z0
    src = torch.arange(nz, dtype=dtype, device=dev)[None, :, None]
    blend = (src == z0[:, None, :]) * (1 - w1)[:, None, :] + (src == z0[:, None, :] + 1) * w1[
        :, None, :
    ]  # (N, source slice, output slice)
    # (dense: a non-finite slice spreads to the whole case, where taps would keep it to its
    # neighbours; training stops on a non-finite loss either way)
    slices = torch.einsum("ncxyz,nzk->nkcxy", batch, blend).reshape(n * nz, c, nx, ny)
    # In-plane: grid_sample's 2D grid holds (w, h) = (y, x) for a (.., X, Y) slice.
    xo, yo = centres(nx)[None, :, None], centres(ny)[None, None, :]
    m = inplane[:, :, :, None, None]
    y_src = m[:, 0, 0] * yo + m[:, 0, 1] * xo + shift[:, 1, None, None]
    x_src = m[:, 1, 0] * yo + m[:, 1, 1] * xo + shift[:, 0, None, None]
    grid = torch.stack([y_src, x_src], -1)[:, None].expand(n, nz, nx, ny, 2)
    out = F.grid_sample(
        slices, grid.reshape(n * nz, nx, ny, 2), mode="bilinear", padding_mode="zeros",
        align_corners=False,
    )  # fmt: skip
    return out.reshape(n, nz, c, nx, ny).permute(0, 2, 3, 4, 1).contiguous()
