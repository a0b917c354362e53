"""Slice geometry from headers alone (no pixels), shared by scan and the volume reader.

Slices are sorted along the slice normal ``n = row × col`` (normalised), never by
SliceLocation or InstanceNumber; the spacing is the median distance between consecutive
positions, never SliceThickness. Duplicate positions (an unsplit series) and gaps (missing
slices) are errors with a clear reason.
"""

from __future__ import annotations

import numpy as np

from shared.dicom.headers import FrameHeader
from shared.errors import DicomError


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
