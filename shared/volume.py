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
        import nibabel as nib

        img = nib.Nifti1Image(np.asarray(self.array, dtype=dtype), LPS_TO_RAS @ self.affine)
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        img.header.set_xyzt_units("mm")
        return img

    @classmethod
    def from_nifti(cls, img) -> Volume:  # img: nib.Nifti1Image
        arr = np.asarray(img.dataobj, dtype=np.float32)
        if arr.ndim == 4 and arr.shape[3] == 1:
            arr = arr[..., 0]
        return cls(arr, LPS_TO_RAS @ np.asarray(img.affine, dtype=np.float64))


# --- files ---------------------------------------------------------------------------------
def save_nifti(vol: Volume, path: Path, dtype: np.dtype | type = np.float32) -> None:
    """Write ``vol`` as a compressed NIfTI with empty text fields (they can carry PHI)."""
    import nibabel as nib

    img = vol.to_nifti(dtype)
    nib.save(img, str(path))


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
    src: sitk.Image,
    vol: Volume,
    affine: np.ndarray,
    size: tuple[int, int, int],
    margin_mm: np.ndarray,
) -> sitk.Image:
    """``src`` (the SimpleITK image of ``vol``) cut to the box of source voxels that the grid
    (``affine``, ``size``) covers, widened by ``margin_mm`` per source axis; physical positions
    are kept, so resampling the crop equals resampling the whole where the grid lies."""
    import SimpleITK as sitk

    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1)
    world = np.asarray(affine)[:3, :3] @ corners + np.asarray(affine)[:3, 3:4]
    inv = np.linalg.inv(vol.affine)
    idx = inv[:3, :3] @ world + inv[:3, 3:4]  # (i, j, k) of the array, continuous
    pad = np.ceil(np.asarray(margin_mm) / vol.spacing) + 2
    shape = np.asarray(vol.array.shape)
    lo = np.clip(np.floor(idx.min(axis=1) - pad), 0, shape - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=1) + pad), 0, shape - 1).astype(int)
    # SimpleITK's recursive Gaussian needs at least 4 voxels along each axis: a grid that only
    # grazes the source's edge still gets them
    short = hi - lo + 1 < 4
    lo = np.where(short, np.clip(hi - 3, 0, None), lo)
    hi = np.where(short, np.minimum(lo + 3, shape - 1), hi)
    if np.all(lo == 0) and np.all(hi == shape - 1):
        return src
    # SimpleITK indexes (x, y, z) = the array's (i, j, k) as Volume.to_sitk lays them out
    return sitk.RegionOfInterest(src, [int(v) for v in hi - lo + 1], [int(v) for v in lo])


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

    src = vol.to_sitk()
    if src.GetPixelID() != sitk.sitkFloat32 and interpolation != "nearest":
        src = sitk.Cast(src, sitk.sitkFloat32)
    target_spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    if antialias and interpolation != "nearest":
        # Compare resolutions along the target axes: project source voxel size onto them.
        src_dir = vol.direction
        tgt_dir = np.asarray(affine)[:3, :3] / target_spacing
        src_sp_on_tgt = np.abs(tgt_dir.T @ src_dir) @ vol.spacing
        fwhm = np.sqrt(np.clip(target_spacing**2 - src_sp_on_tgt**2, 0.0, None))
        sigma_tgt = fwhm / 2.3548
        if np.any(sigma_tgt > 0.1 * target_spacing):
            # Express the smoothing in the source's own axes (SimpleITK smooths per image axis).
            sigma_src = np.abs(src_dir.T @ tgt_dir) @ sigma_tgt
            sigma_src = np.maximum(sigma_src, 1e-3)
            # Smooth only what the target grid can see (plus the kernel's reach): a T2 of
            # 0.6 mm voxels is often twice the target's field of view.
            src = _crop_to_grid(src, vol, affine, size, margin_mm=6.0 * sigma_src)
            src = sitk.SmoothingRecursiveGaussian(src, [float(s) for s in sigma_src])
    ref = Volume(np.zeros(size, dtype=np.float32), affine).to_sitk()
    interp = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }[interpolation]
    out = sitk.Resample(src, ref, sitk.Transform(), interp, float(fill), src.GetPixelID())
    return Volume.from_sitk(out)
