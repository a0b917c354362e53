"""Build a 3D ``Volume`` from the frames of one scanned volume, with correct geometry.

Slices are sorted along the slice normal ``n = row × col`` (normalised), never by
SliceLocation or InstanceNumber; the spacing is the median distance between consecutive
positions, never SliceThickness. Duplicate positions (an unsplit series) and gaps (missing
slices) are errors with a clear reason. Pixel values are rescaled (slope/intercept, per frame
for enhanced files) to the scanner's real values.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pydicom

from shared.dicom.headers import FrameHeader
from shared.dicom.scan import VolumeInfo
from shared.errors import DicomError
from shared.volume import Volume


def frame_geometry(frames: list[FrameHeader]) -> tuple[list[FrameHeader], np.ndarray]:
    """Sort ``frames`` along the slice normal; return them and the LPS affine.

    Raises ``DicomError`` for duplicate positions or missing slices.
    """
    f0 = frames[0]
    row = np.asarray(f0.iop[:3], dtype=np.float64)
    col = np.asarray(f0.iop[3:], dtype=np.float64)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise DicomError("ImageOrientationPatient row and column vectors are parallel")
    normal /= norm
    pos = np.array([f.ipp for f in frames], dtype=np.float64)
    s = pos @ normal
    order = np.argsort(s, kind="stable")
    frames = [frames[i] for i in order]
    s = s[order]
    pos = pos[order]
    affine = np.eye(4)
    affine[:3, 0] = row * f0.pixel_spacing[1]  # along a row: column spacing
    affine[:3, 1] = col * f0.pixel_spacing[0]  # down a column: row spacing
    affine[:3, 3] = pos[0]
    if len(frames) == 1:
        affine[:3, 2] = normal
        return frames, affine
    d = np.diff(s)
    if np.any(d < 1e-3):
        n_dup = int(np.sum(d < 1e-3))
        raise DicomError(f"{n_dup} duplicate slice position(s): series mixes several volumes")
    spacing = float(np.median(d))
    gaps = d > 1.5 * spacing
    if np.any(gaps):
        missing = int(np.sum(np.round(d[gaps] / spacing) - 1))
        raise DicomError(
            f"{missing} missing slice(s) (gap of {d[gaps].max():.2f} mm at "
            f"{spacing:.2f} mm spacing)"
        )
    # The stack direction is the mean step, which also covers slightly sheared stacks.
    step = (pos[-1] - pos[0]) / (len(frames) - 1)
    affine[:3, 2] = step
    return frames, affine


def _rescale(ds: pydicom.Dataset, frame_index: int | None) -> tuple[float, float]:
    if frame_index is not None:
        holders = []
        pf = ds.get("PerFrameFunctionalGroupsSequence")
        if pf is not None:
            holders.append(pf[frame_index])
        sh = ds.get("SharedFunctionalGroupsSequence")
        if sh:
            holders.append(sh[0])
        for h in holders:
            seq = h.get("PixelValueTransformationSequence")
            if seq:
                return float(seq[0].get("RescaleSlope", 1) or 1), float(
                    seq[0].get("RescaleIntercept", 0) or 0
                )
    slope = ds.get("RescaleSlope", 1)
    inter = ds.get("RescaleIntercept", 0)
    return float(slope if slope not in (None, "") else 1), float(
        inter if inter not in (None, "") else 0
    )


def load_volume(vol: VolumeInfo, dtype: type = np.float32) -> Volume:
    """Read the pixels of ``vol`` and return a ``Volume`` in real-world values."""
    frames, affine = frame_geometry(list(vol.frames))
    rows, cols = frames[0].rows, frames[0].cols
    out = np.empty((cols, rows, len(frames)), dtype=dtype)
    by_file: dict[str, list[tuple[int, FrameHeader]]] = defaultdict(list)
    for k, f in enumerate(frames):
        by_file[f.path].append((k, f))
    for path, items in by_file.items():
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # decoder plugins raise many types; report them uniformly
            raise DicomError(
                f"cannot decode pixels of {path}: {type(exc).__name__}: {str(exc)[:120]}"
            ) from None
        for k, f in items:
            arr = pixels[f.frame] if f.frame is not None else pixels
            if arr.shape != (rows, cols):
                raise DicomError(f"{path}: frame is {arr.shape}, expected {(rows, cols)}")
            slope, inter = _rescale(ds, f.frame)
            out[:, :, k] = (arr.astype(np.float64) * slope + inter).T
    return Volume(out, affine)
