"""Phantom scanner: sample the continuous patient on a series' grid and form the images.

Signal models: T2 TSE ~ T2 weight (with a site-specific contrast curve), DWI S(b) =
S0·exp(-b·ADC), vendor ADC = log-linear fit over the acquired noisy b-values (so ADC noise
behaves as on scanners), Rician magnitude noise, a smooth coil-sensitivity (bias) field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shared.phantom.anatomy import Lattice, Patient, SmoothField, evaluate
from shared.phantom.institutions import Institution


@dataclass(frozen=True)
class SeriesGrid:
    """An acquisition grid: ``affine`` maps (i, j, k) to LPS mm, ``shape`` is (ni, nj, nk)."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    slice_thickness: float

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def row_dir(self) -> np.ndarray:
        return self.affine[:3, 0] / self.spacing[0]

    @property
    def col_dir(self) -> np.ndarray:
        return self.affine[:3, 1] / self.spacing[1]

    @property
    def normal(self) -> np.ndarray:
        return self.affine[:3, 2] / self.spacing[2]


def orientation(kind: str, tilt_deg: float = 0.0) -> np.ndarray:
    """Unit axis directions (columns: row, column, normal) for an acquisition plane.

    ``tilt_deg`` rotates the plane about the patient's left-right axis (oblique axial).
    """
    if kind == "axial":
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        t = np.deg2rad(tilt_deg)
        col = np.array([0.0, np.cos(t), np.sin(t)])
    elif kind == "sagittal":
        row, col = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    elif kind == "coronal":
        row, col = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])
    else:
        raise ValueError(f"orientation kind must be axial, sagittal or coronal, not {kind!r}")
    return np.stack([row, col, np.cross(row, col)], axis=1)


def make_grid(
    center: np.ndarray,
    axes: np.ndarray,
    inplane_mm: float,
    fov_mm: float,
    slice_mm: float,
    n_slices: int,
    thickness_mm: float | None = None,
) -> SeriesGrid:
    n = max(int(round(fov_mm / inplane_mm)), 4)
    half = np.array([(n - 1) / 2, (n - 1) / 2, (n_slices - 1) / 2])
    affine = np.eye(4)
    affine[:3, :3] = axes * np.array([inplane_mm, inplane_mm, slice_mm])
    affine[:3, 3] = center - affine[:3, :3] @ half
    return SeriesGrid(affine, (n, n, n_slices), thickness_mm or slice_mm)


def sample(patient: Patient, grid: SeriesGrid, through_plane: int = 3) -> dict[str, np.ndarray]:
    """Evaluate tissue properties on ``grid``, averaging ``through_plane`` sub-slices (partial
    volume across thick slices)."""
    ni, nj, nk = grid.shape
    acc: dict[str, np.ndarray] = {}
    offsets = (np.arange(through_plane) + 0.5) / through_plane - 0.5
    edge = float(min(grid.spacing[0], grid.spacing[1]))
    step = grid.slice_thickness / grid.spacing[2]
    for off in offsets:
        props = evaluate(patient, lattice(grid, k_offset=float(off * step)), edge)
        for k, v in props.items():
            acc[k] = acc.get(k, 0) + v.reshape(ni, nj, nk).astype(np.float32) / through_plane
    return acc


def lattice(grid: SeriesGrid, k_offset: float = 0.0) -> Lattice:
    """The grid's voxel centres as a ``Lattice``, shifted ``k_offset`` voxels
    along the slice axis."""
    a = grid.affine
    return Lattice(a[:3, 3], a[:3, :3], grid.shape, k_offset)


def bias_field(field: SmoothField, grid: SeriesGrid, amplitude: float) -> np.ndarray:
    return (1.0 + amplitude * field.on_lattice(lattice(grid))).astype(np.float32)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    re = signal + rng.normal(0.0, sigma, signal.shape)
    im = rng.normal(0.0, sigma, signal.shape)
    return np.sqrt(re * re + im * im).astype(np.float32)


def blur(img: np.ndarray, grid: SeriesGrid, fwhm_mm: float) -> np.ndarray:
    if fwhm_mm <= 0:
        return img
    sigma = fwhm_mm / 2.3548 / grid.spacing
    sigma[2] = 0.0  # in-plane EPI blur only
    return ndimage.gaussian_filter(img, sigma)


def t2_image(
    props: dict[str, np.ndarray], inst: Institution, bias: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    t2 = np.clip(props["t2"], 0, None) ** inst.t2_gamma
    return rician(t2 * bias, inst.noise_t2 * 0.7, rng)


def t1_image(
    props: dict[str, np.ndarray],
    inst: Institution,
    bias: np.ndarray,
    rng: np.random.Generator,
    enhancement: float = 0.0,
) -> np.ndarray:
    t1 = props["t1"] * (1.0 + enhancement * props["prostate"])
    return rician(t1 * bias, inst.noise_t2, rng)


def dwi_images(
    props: dict[str, np.ndarray],
    grid: SeriesGrid,
    inst: Institution,
    bias: np.ndarray,
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    """Trace-weighted DWI per acquired b-value (s/mm²), Rician noise, EPI blur."""
    s0 = props["s0"] * bias * inst.dwi_gain
    adc_mm2 = props["adc"] * inst.adc_scale * 1e-6
    out = {}
    sigma = inst.noise_dwi * 0.75 * inst.dwi_gain
    for b in inst.b_values:
        clean = blur(s0 * np.exp(-b * adc_mm2), grid, inst.dwi_blur_mm)
        # Averaging over more excitations at high b keeps SNR usable, as protocols do.
        nex = 1.0 if b < 1000 else 3.0
        out[b] = rician(clean, 0.6 * sigma / np.sqrt(nex), rng)
    return out


def fit_adc(dwi: dict[int, np.ndarray], floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-linear least-squares ADC (µm²/s) and fitted ln S0, as the scanner computes them.

    Voxels whose lowest-b signal is below ``floor`` (air, noise) are set to 0, as vendors mask.
    """
    bs = np.array(sorted(dwi), dtype=np.float64)
    logs = np.stack([np.log(np.maximum(dwi[int(b)], 1e-6)) for b in bs], axis=-1)
    bm = bs - bs.mean()
    slope = (logs - logs.mean(axis=-1, keepdims=True)) @ bm / np.sum(bm * bm)
    intercept = logs.mean(axis=-1) - slope * bs.mean()
    adc = np.clip(-slope * 1e6, 0, 4000).astype(np.float32)
    adc[dwi[int(bs[0])] < floor] = 0.0
    return adc, intercept.astype(np.float32)


def calculated_b(adc: np.ndarray, ln_s0: np.ndarray, b: int) -> np.ndarray:
    """Vendor-computed high-b image S(b) = exp(ln S0 - b·ADC) (Siemens 'CALC_BVALUE')."""
    return np.exp(np.clip(ln_s0 - b * adc * 1e-6, -30, 10)).astype(np.float32)
