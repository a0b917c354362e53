"""The reference for ``ElementCache.write_slice``: the series' shared header and the slice's
own elements merged into one data set and written by pydicom's ``dcmwrite``."""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, JPEG2000Lossless


def save_whole_with_pydicom(
    header: Dataset, slice_ds: Dataset, syntax: str, path: Path, implementation_version=None
) -> None:
    """Write ``header`` + ``slice_ds`` with pydicom. JPEG 2000 slices carry native pixels here
    and are compressed by ``Dataset.compress``; ``implementation_version`` names the writer in
    the file meta (pydicom's own name if None)."""
    whole = copy.deepcopy(header)
    whole.update(slice_ds)
    whole.file_meta = FileMetaDataset()
    whole.file_meta.MediaStorageSOPClassUID = whole.SOPClassUID
    whole.file_meta.MediaStorageSOPInstanceUID = whole.SOPInstanceUID
    whole.file_meta.TransferSyntaxUID = syntax
    if implementation_version is not None:
        whole.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        whole.file_meta.ImplementationVersionName = implementation_version
    if syntax == JPEG2000Lossless:
        whole.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        whole.compress(JPEG2000Lossless, generate_instance_uid=False)
    elif "LossyImageCompression" in whole:  # encapsulated: undefined length (PS3.5 A.4)
        whole["PixelData"].is_undefined_length = True
    whole.save_as(path, enforce_file_format=True)
