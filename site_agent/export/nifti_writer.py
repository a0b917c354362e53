"""Synthetic cases as NIfTI for the coordinator: built from the array and affine only.

RAS affine (``diag(-1, -1, 1) @`` the case's LPS affine), qform/sform code 1, units mm, every
text field empty, no extensions, gzip without file name and with mtime 0. Values: t2w and hbv
in the case format's scaled units, adc in µm²/s (see ``dicom_writer.physical_values``).
"""

from __future__ import annotations

import gzip

import numpy as np

from shared.volume import LPS_TO_RAS, Volume


def nifti_gz_bytes(vol: Volume, values: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(values, dtype=np.float32), LPS_TO_RAS @ vol.affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    for name in ("descrip", "aux_file", "intent_name", "db_name", "data_type"):
        img.header[name] = b""
    img.header.extensions.clear()
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
