"""Write a series' single-frame files with each distinct header element encoded once.

The phantom's scanner exports and the site's synthetic exports write series of files whose
headers differ from slice to slice in a handful of elements; this lays each file out byte for
byte as pydicom's ``dcmwrite`` does with the whole data set (``tests/test_phantom.py`` and
``tests/test_export.py`` compare the two).
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ImplicitVRLittleEndian

PREAMBLE = b"\x00" * 128 + b"DICM"


class ElementCache:
    """Encoded data elements of a series' files, each distinct one encoded once.

    A series' single-frame files repeat most of their header from slice to slice; pydicom's
    ``dcmwrite`` spends most of a file's time encoding those elements again. Here each element
    is encoded by pydicom's own ``write_data_element`` the first time its (tag, VR, value)
    appears and reused after, and a file is laid out as ``dcmwrite`` lays it out (preamble,
    file meta, elements in tag order, ambiguous VRs resolved first): the same bytes.
    ``write_slice`` goes one step further for a stack's files: the stack's shared header is
    encoded once and each file adds only what changes from slice to slice.
    """

    def __init__(self, implementation_version: str | None = None) -> None:
        # File meta (0002,0013): pydicom's own name unless the writer names itself
        self._implementation_version = implementation_version
        self._encoded: dict[tuple[object, ...], bytes] = {}
        self._stack: tuple[Dataset, list[tuple[int, bytes]]] | None = None  # the last one
        self._meta_parts: dict[tuple[str, str], list[tuple[int, bytes]]] = {}

    @staticmethod
    def _key(elem: object, implicit: bool, charset: object) -> tuple[object, ...] | None:
        value = elem.value  # type: ignore[attr-defined]
        if isinstance(value, bytes | bytearray) or elem.VR == "SQ":  # type: ignore[attr-defined]
            return None  # pixel data and sequences: encoded every time
        if isinstance(value, MultiValue | list | tuple):
            shown: object = tuple((type(v).__name__, str(v)) for v in value)
        else:
            shown = (type(value).__name__, str(value))
        return (elem.tag, elem.VR, implicit, str(charset), shown)  # type: ignore[attr-defined]

    def _parts(self, ds: Dataset, implicit: bool, charset: object) -> list[tuple[int, bytes]]:
        """(tag, encoded element) of ``ds`` in tag order, as ``write_dataset`` writes them."""
        parts = []
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:  # retired group lengths are not written
                continue
            elem = ds[tag]
            key = self._key(elem, implicit, charset)
            data = self._encoded.get(key) if key is not None else None
            if data is None:
                fp = DicomBytesIO()
                fp.is_little_endian, fp.is_implicit_VR = True, implicit
                write_data_element(fp, elem, charset)
                data = fp.getvalue()
                if key is not None:
                    self._encoded[key] = data
            parts.append((int(tag), data))
        return parts

    def _meta(self, sop_class: str, sop_instance: str, syntax: str) -> bytes:
        """The file meta group as ``write_file_meta_info`` writes it: the elements every file
        of the series shares encoded once, the instance UID and the group length per file."""
        shared = self._meta_parts.get((sop_class, syntax))
        if shared is None:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_instance
            meta.TransferSyntaxUID = syntax
            if self._implementation_version is not None:
                meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
                meta.ImplementationVersionName = self._implementation_version
            validate_file_meta(meta, enforce_standard=True)  # adds version and implementation
            shared = self._parts(meta, False, "iso8859")
            self._meta_parts[(sop_class, syntax)] = shared
        uid = DicomBytesIO()
        uid.is_little_endian, uid.is_implicit_VR = True, False
        write_data_element(uid, DataElement(0x00020003, "UI", sop_instance))
        rest = b"".join(uid.getvalue() if tag == 0x00020003 else data for tag, data in shared)
        # (0002,0000) File Meta Information Group Length, UL, explicit VR little endian
        return b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(rest)) + rest

    def write_slice(self, stack: Dataset, slice_ds: Dataset, syntax: str, path: Path) -> None:
        """The file of ``stack`` (the header its slices share, encoded once per stack) with
        ``slice_ds`` (what this slice changes, pixel data included) on top: the bytes that
        pydicom's ``dcmwrite`` gives for the two merged into one data set."""
        implicit = syntax == ImplicitVRLittleEndian
        compressed = UID(syntax).is_compressed
        pixels = slice_ds["PixelData"]
        pixels.is_undefined_length = compressed
        # what correct_ambiguous_vr decides for pixel data (PS3.5 A.1, A.2, A.4)
        pixels.VR = "OB" if compressed or int(stack.BitsAllocated) <= 8 else "OW"
        charset = stack.get("SpecificCharacterSet", "iso8859")
        if self._stack is None or self._stack[0] is not stack:  # a series' next stack
            self._stack = (stack, self._parts(correct_ambiguous_vr(stack, True), implicit, charset))
        shared = self._stack[1]
        own = self._parts(slice_ds, implicit, charset)
        mine = {tag for tag, _ in own}
        merged = sorted([*(p for p in shared if p[0] not in mine), *own], key=lambda p: p[0])
        meta = self._meta(stack.SOPClassUID, slice_ds.SOPInstanceUID, syntax)
        path.write_bytes(PREAMBLE + meta + b"".join(data for _, data in merged))
