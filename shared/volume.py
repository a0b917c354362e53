"""A 3D image that knows its geometry, and the resampling between grids.

Conventions (as in DICOM and ITK):

* ``array`` is indexed ``[i, j, k]``: i runs along a row (the first ImageOrientationPatient
  vector), j down the columns (the second vector), k along the slice normal ``row x col``.
* ``affine`` maps a voxel index (i, j, k, 1) to patient coordinates in **LPS** millimetres;
  index (0, 0, 0) is the *centre* of the first voxel.
* NIfTI files are written in RAS (``diag(-1, -1, 1) @ affine``) with the same array order, so
  nibabel, SimpleITK and ITK-SNAP all place them where the scanner did.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

Interpolation = Literal["linear", "nearest", "bspline"]


@dataclass
class Volume:
    """A voxel array with its LPS affine (see the module docstring for conventions)."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (i, j, k), not shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, not {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit LPS directions of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def center(self) -> np.ndarray:
        """LPS position (mm) of the geometric centre of the volume."""
        idx = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return self.affine[:3, :3] @ idx + self.affine[:3, 3]

    # --- conversions ---------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array.transpose(2, 1, 0)))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.flatten()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> Volume:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)
        affine[:3, 3] = img.GetOrigin()
        return cls(np.ascontiguousarray(arr), affine)

    def to_nifti(self, dtype: np.dtype | type = np.float32):  # -> nib.Nifti1Image
        """RAS affine, qform and sform code 1, units mm; every text field empty and no
        extensions (free text can carry PHI)."""
        import nibabel as nib

        img = nib.Nifti1Image(np.asarray(self.array, dtype=dtype), LPS_TO_RAS @ self.affine)
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        img.header.set_xyzt_units("mm")
        for name in ("descrip", "aux_file", "intent_name", "db_name", "data_type"):
            img.header[name] = b""
        img.header.extensions.clear()
        return img

    @classmethod
    def from_nifti(cls, img) -> Volume:  # img: nib.Nifti1Image
        arr = np.asarray(img.dataobj, dtype=np.float32)
        if arr.ndim == 4 and arr.shape[3] == 1:
            arr = arr[..., 0]
        return cls(arr, LPS_TO_RAS @ np.asarray(img.affine, dtype=np.float64))


# --- files ---------------------------------------------------------------------------------
def nifti_gz_bytes(
    vol: Volume,
    dtype: np.dtype | type = np.float32,
    level: int = 1,
    strategy: int = zlib.Z_RLE,
) -> bytes:
    """``vol`` as a gzip-compressed NIfTI file's bytes: nibabel's own (``to_nifti``), in a
    gzip stream with mtime 0 and no file name.

    The default, run-length deflate (``Z_RLE``) at level 1, compresses a float32 case volume as
    well as nibabel's default level 1 (to 85 %) in about 40 % of the time, which was most of
    the time of writing a case. Any gzip reader reads it."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 8, strategy)
    return packer.compress(vol.to_nifti(dtype).to_bytes()) + packer.flush()


def save_nifti(vol: Volume, path: Path, dtype: np.dtype | type = np.float32) -> None:
    """Write ``vol`` as a gzip-compressed NIfTI (``nifti_gz_bytes``)."""
    Path(path).write_bytes(nifti_gz_bytes(vol, dtype))


def load_nifti(path: Path) -> Volume:
    import nibabel as nib

    return Volume.from_nifti(nib.load(str(path)))


def save_mha(vol: Volume, path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(vol.to_sitk(), str(path), True)


def load_mha(path: Path) -> Volume:
    import SimpleITK as sitk

    return Volume.from_sitk(sitk.ReadImage(str(path)))


# --- grids and resampling ------------------------------------------------------------------
def grid_affine(
    center_lps: np.ndarray,
    direction: np.ndarray,
    spacing: tuple[float, float, float],
    size: tuple[int, int, int],
) -> np.ndarray:
    """Affine of a grid of ``size`` voxels and ``spacing`` mm whose centre sits at ``center_lps``.

    ``direction`` holds the unit axis directions as columns (LPS).
    """
    direction = np.asarray(direction, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    half = (np.asarray(size, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = direction * sp
    affine[:3, 3] = np.asarray(center_lps, dtype=np.float64) - affine[:3, :3] @ half
    return affine


def _crop_to_grid(
    vol: Volume, affine: np.ndarray, size: tuple[int, int, int], margin_mm: np.ndarray
) -> Volume:
    """``vol`` cut to the box of source voxels that the grid (``affine``, ``size``) covers,
    widened by ``margin_mm`` per source axis; physical positions are kept, so resampling the
    crop equals resampling the whole where the grid lies. The array is a view, not a copy."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1)
    world = np.asarray(affine)[:3, :3] @ corners + np.asarray(affine)[:3, 3:4]
    inv = np.linalg.inv(vol.affine)
    idx = inv[:3, :3] @ world + inv[:3, 3:4]  # (i, j, k) of the array, continuous
    pad = np.ceil(np.asarray(margin_mm) / vol.spacing) + 2
    shape = np.asarray(vol.array.shape)
    lo = np.clip(np.floor(idx.min(axis=1) - pad), 0, shape - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=1) + pad), 0, shape - 1).astype(int)
    if np.all(lo == 0) and np.all(hi == shape - 1):
        return vol
    cropped = vol.affine.copy()
    cropped[:3, 3] = vol.affine[:3, :3] @ lo + vol.affine[:3, 3]
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    return Volume(vol.array[box], cropped)


def gaussian_smooth(array: np.ndarray, sigma_voxels: np.ndarray) -> np.ndarray:
    """``array`` (float32) convolved with a Gaussian of ``sigma_voxels`` per axis, sampled and
    truncated at 4 sigma, edges extended (what ``scipy.ndimage.gaussian_filter1d`` computes
    with ``mode="nearest"``; ``tests/test_resample.py`` compares the two).

    A few numpy passes rather than scipy: a pool worker that ingests a few dozen studies would
    spend more on importing ``scipy.ndimage`` (0.13 s) than on all its smoothing, and
    SimpleITK's recursive Gaussian took three times as long on a T2 crop (15 vs 5 ms)."""
    out = np.asarray(array, dtype=np.float32)
    for axis, sigma in enumerate(np.asarray(sigma_voxels, dtype=np.float64)):
        radius = int(4.0 * sigma + 0.5)
        if radius < 1:  # the kernel is one tap: nothing to smooth along this axis
            continue
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        weights = np.exp(-0.5 * (x / sigma) ** 2)
        weights /= weights.sum()
        widths = [(0, 0)] * out.ndim
        widths[axis] = (radius, radius)
        padded = np.pad(out, widths, mode="edge")
        n = out.shape[axis]
        acc = np.zeros(out.shape, dtype=np.float32)
        for i, w in enumerate(weights.astype(np.float32)):
            acc += w * padded[(slice(None),) * axis + (slice(i, i + n),)]
        out = acc
    return out


def resample(
    vol: Volume,
    affine: np.ndarray,
    size: tuple[int, int, int],
    interpolation: Interpolation = "linear",
    antialias: bool = True,
    fill: float = 0.0,
) -> Volume:
    """Resample ``vol`` onto the grid (``affine``, ``size``) in physical (LPS) space.

    When the target is coarser than the source along an axis and ``antialias`` is set, the source
    is first smoothed with a Gaussian whose FWHM makes up the difference in resolution, so
    downsampling from 0.6 mm to 2 mm does not alias.
    """
    import SimpleITK as sitk

    target_spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    if antialias and interpolation != "nearest":
        # Compare resolutions along the target axes: project source voxel size onto them.
        src_dir = vol.direction
        tgt_dir = np.asarray(affine)[:3, :3] / target_spacing
        src_sp_on_tgt = np.abs(tgt_dir.T @ src_dir) @ vol.spacing
        fwhm = np.sqrt(np.clip(target_spacing**2 - src_sp_on_tgt**2, 0.0, None))
        sigma_tgt = fwhm / 2.3548
        if np.any(sigma_tgt > 0.1 * target_spacing):
            # Express the smoothing in the source's own axes (it is applied per array axis).
            sigma_src = np.abs(src_dir.T @ tgt_dir) @ sigma_tgt
            # Smooth only what the target grid can see (plus the kernel's reach): a T2 of
            # 0.6 mm voxels is often twice the target's field of view.
            vol = _crop_to_grid(vol, affine, size, margin_mm=6.0 * sigma_src)
            vol = Volume(gaussian_smooth(vol.array, sigma_src / vol.spacing), vol.affine)
    src = vol.to_sitk()
    if src.GetPixelID() != sitk.sitkFloat32 and interpolation != "nearest":
        src = sitk.Cast(src, sitk.sitkFloat32)
    ref = Volume(np.zeros(size, dtype=np.float32), affine).to_sitk()
    interp = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }[interpolation]
    out = sitk.Resample(src, ref, sitk.Transform(), interp, float(fill), src.GetPixelID())
    return Volume.from_sitk(out)


def percentiles(array: np.ndarray, q: tuple[float, ...]) -> tuple[float, ...]:
    """``np.percentile(array, q)`` (its default linear method, to the last bit or so: numpy
    interpolates with a slightly different formula). Most acquired MR volumes hold
    whole numbers below 65536 (uint16 pixels, slope 1): those are counted rather than
    partially sorted: the same order statistics in a fifth of the time (1.3 vs 6.7 ms, a T2;
    the ingest's intensity scaling and the phantom writer's window of each slice use it)."""
    flat = array.ravel()
    ints = _whole_uint16(flat)
    if ints is None:
        return tuple(float(v) for v in np.percentile(array, q))
    cdf = np.cumsum(np.bincount(ints))
    out = []
    for p in q:
        pos = (flat.size - 1) * p / 100.0
        below = int(np.floor(pos))
        # the values of ranks ``below`` and ``below + 1`` (0-based) in sorted order
        lo, hi = np.searchsorted(cdf, [below, min(below + 1, flat.size - 1)], "right")
        out.append(float(lo + (pos - below) * (hi - lo)))
    return tuple(out)


def _whole_uint16(flat: np.ndarray) -> np.ndarray | None:
    """``flat`` as unsigned integers (for ``bincount``) when every value is a whole number in
    [0, 65535], else None."""
    if not flat.size:
        return None
    if flat.dtype in (np.uint8, np.uint16):
        return flat
    if flat.min() < 0 or flat.max() >= 65536:
        return None
    ints = flat.astype(np.uint16)
    return ints if np.array_equal(ints, flat) else None
