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
    zoom (each applied with probability ``p``), one ``grid_sample`` call per batch.

    ``batch`` is a (N, C, X, Y, Z) tensor; ``translate`` is a fraction of the field of view
    (in-plane; a tenth of it through-plane).
    """
    import torch
    import torch.nn.functional as F

    n = batch.shape[0]
    dev = batch.device

    def coin() -> torch.Tensor:
        return (torch.rand(n, generator=generator) < p).float().to(dev)

    flip = torch.where(coin() > 0, -1.0, 1.0)
    angle = torch.deg2rad((torch.rand(n, generator=generator) * 2 - 1) * rotate_deg) * coin()
    scale = 1.0 + (torch.rand(n, generator=generator) * (zoom[1] - zoom[0]) + zoom[0] - 1) * coin()
    shift = (torch.rand(n, 3, generator=generator) * 2 - 1) * translate
    shift[:, 2] *= 0.1
    shift = shift * coin()[:, None]
    # grid_sample's grid holds (w, h, d) = (Z, Y, X) coordinates for a (N, C, X, Y, Z) input.
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 3, 4, device=dev)
    theta[:, 0, 0] = 1.0 / scale  # Z
    theta[:, 1, 1] = cos / scale  # Y
    theta[:, 1, 2] = -sin / scale
    theta[:, 2, 1] = sin * flip / scale  # X (flipped left-right when flip = -1)
    theta[:, 2, 2] = cos * flip / scale
    theta[:, :, 3] = shift.flip(1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
