"""Acquired t2w/hbv/adc volumes → the profile's case grid, normalised (see case_format)."""

from __future__ import annotations

import numpy as np

from shared.case_format import scale_adc, scale_percentile
from shared.profiles import GridSpec
from shared.volume import Volume, grid_affine, percentiles, resample


def case_grid(t2w: Volume, grid: GridSpec, center: np.ndarray | None = None) -> np.ndarray:
    """The case grid's affine: T2's axis directions, the profile's size and spacing, centred on
    ``center`` (LPS mm; default: the centre of the T2 field of view)."""
    c = t2w.center() if center is None else np.asarray(center, dtype=np.float64)
    return grid_affine(c, t2w.direction, grid.spacing, grid.size)


def mask_centroid(mask: Volume) -> np.ndarray | None:
    idx = np.argwhere(mask.array > 0.5)
    if idx.size == 0:
        return None
    mean = idx.mean(axis=0)
    return mask.affine[:3, :3] @ mean + mask.affine[:3, 3]


def build_case_volumes(
    t2w: Volume,
    hbv: Volume,
    adc: Volume,
    grid: GridSpec,
    center: np.ndarray | None = None,
    lesion: Volume | None = None,
    prostate: Volume | None = None,
) -> tuple[dict[str, Volume], dict[str, dict[str, object]]]:
    """Resample all sequences straight onto the case grid in physical space (one
    interpolation each, anti-aliased) and normalise them; returns volumes and intensity notes.
    """
    affine = case_grid(t2w, grid, center)
    out: dict[str, Volume] = {}
    notes: dict[str, dict[str, object]] = {}
    for name, vol in (("t2w", t2w), ("hbv", hbv)):
        # Percentiles of the whole acquired volume: a small bright lesion cannot move them.
        lo, hi = percentiles(vol.array, (1.0, 99.0))
        r = resample(vol, affine, grid.size, "linear")
        out[name] = Volume(scale_percentile(r.array, lo, hi), affine)
        notes[name] = {"method": "percentile", "p1": lo, "p99": hi, "clip": [0.0, 3.0]}
    r = resample(adc, affine, grid.size, "linear")
    out["adc"] = Volume(scale_adc(r.array), affine)
    notes["adc"] = {"method": "fixed", "unit": "um2/s", "range": [0.0, 3000.0]}
    for name, mask in (("lesion", lesion), ("prostate", prostate)):
        if mask is not None:
            m = resample(
                Volume(mask.array.astype(np.float32), mask.affine),
                affine,
                grid.size,
                "linear",
                antialias=False,
            )
            out[name] = Volume((m.array >= 0.5).astype(np.uint8), affine)
    return out, notes
