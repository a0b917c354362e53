"""Synthetic cases as NIfTI for the coordinator: built from the array and affine only.

RAS affine (``diag(-1, -1, 1) @`` the case's LPS affine), qform/sform code 1, units mm, every
text field empty, no extensions, gzip without file name and with mtime 0. Values: t2w and hbv
in the case format's scaled units, adc in µm²/s (see ``dicom_writer.physical_values``).
"""

from __future__ import annotations

import zlib

import numpy as np

from shared.volume import Volume
from shared.volume import nifti_gz_bytes as _nifti_gz_bytes


def nifti_gz_bytes(vol: Volume, values: np.ndarray) -> bytes:
    """``values`` on ``vol``'s grid, deflated at level 6 (a bundle travels: size over speed)."""
    out = Volume(np.asarray(values, dtype=np.float32), vol.affine)
    return _nifti_gz_bytes(out, level=6, strategy=zlib.Z_DEFAULT_STRATEGY)
