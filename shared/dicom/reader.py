"""Build a 3D ``Volume`` from the frames of one scanned volume (geometry: ``geometry``).

Pixel values are rescaled (slope/intercept, per frame for enhanced files) to the scanner's real
values. Native pixels the scan located (``FrameHeader.pixel_offset``) are read straight from
the file, without parsing its header again; pydicom decodes everything else.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pydicom

from shared.dicom.geometry import frame_geometry
from shared.dicom.headers import FrameHeader
from shared.dicom.scan import VolumeInfo
from shared.errors import DicomError
from shared.volume import Volume


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


def _read_native(f: FrameHeader) -> np.ndarray:
    count = f.rows * f.cols
    try:
        arr = np.fromfile(f.path, dtype=f.pixel_dtype, count=count, offset=f.pixel_offset or 0)
    except (OSError, ValueError) as exc:
        raise DicomError(f"cannot read pixels of {f.path}: {exc}") from None
    if arr.size != count:
        raise DicomError(f"{f.path}: pixel data ends early ({arr.size} of {count} values)")
    return arr.reshape(f.rows, f.cols)


def _put(out: np.ndarray, k: int, arr: np.ndarray, slope: float, inter: float) -> None:
    """Slice ``k`` of ``out`` (i, j order) from a frame (rows, cols) in real-world values."""
    if slope == 1.0 and inter == 0.0:  # the usual MR case: a plain (exact) conversion
        out[:, :, k] = arr.T
    else:
        out[:, :, k] = (arr.astype(np.float64) * slope + inter).T


def load_volume(vol: VolumeInfo, dtype: type = np.float32) -> Volume:
    """Read the pixels of ``vol`` and return a ``Volume`` in real-world values."""
    frames, affine = frame_geometry(list(vol.frames))
    rows, cols = frames[0].rows, frames[0].cols
    out = np.empty((cols, rows, len(frames)), dtype=dtype)
    by_file: dict[str, list[tuple[int, FrameHeader]]] = defaultdict(list)
    for k, f in enumerate(frames):
        if f.pixel_offset is not None and f.pixel_dtype is not None:
            _put(out, k, _read_native(f), *f.rescale)
        else:
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
            _put(out, k, arr, *_rescale(ds, f.frame))
    return Volume(out, affine)
