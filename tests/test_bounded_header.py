"""Bounded header reads and direct pixel reads agree with pydicom, file for file.

pydicom is the reference: the scan run with bounded reads must give the frame records a
pydicom-only scan gives, and volumes read from the located pixels the arrays pydicom decodes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from unittest import mock

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from shared.dicom import headers
from shared.dicom.bounded_header import read_bounded
from shared.dicom.reader import load_volume
from shared.dicom.scan import scan

PIXEL_FIELDS = ("pixel_offset", "pixel_dtype", "rescale")


def _pydicom_only(path: str) -> list[headers.FrameHeader] | headers.Skipped:
    with mock.patch.object(headers, "read_bounded", lambda p: None):
        return headers.read_headers(path)


def _without_pixel_fields(frames: object) -> object:
    if isinstance(frames, list):
        return [dataclasses.replace(f, pixel_offset=None, pixel_dtype=None) for f in frames]
    return frames


@pytest.mark.parametrize("institution", ["aurora", "borealis", "cascade", "external"])
def test_scan_with_bounded_reads_equals_pydicom_scan(phantom_sites, institution):
    root = phantom_sites[institution].dicom
    bounded = scan(root, workers=1)
    with mock.patch.object(headers, "read_bounded", lambda p: None):
        reference = scan(root, workers=1)
    assert bounded.to_json(include_identifiers=True) == reference.to_json(include_identifiers=True)
    frames = [f for s in bounded.studies for v in s.volumes for f in v.frames]
    ref_frames = [f for s in reference.studies for v in s.volumes for f in v.frames]
    assert frames == ref_frames  # the pixel location too: pydicom's deferred element agrees


def test_bounded_reads_are_used_and_pixels_match_pydicom(phantom_sites):
    # aurora writes explicit and implicit VR files (and enhanced ones, which pydicom reads)
    result = scan(phantom_sites["aurora"].dicom, workers=1)
    native = 0
    for study in result.studies:
        for role, vol in study.chosen.items():
            native += sum(f.pixel_offset is not None for f in vol.frames)
            direct = load_volume(vol)
            frames = [dataclasses.replace(f, pixel_offset=None) for f in vol.frames]
            decoded = load_volume(dataclasses.replace(vol, frames=frames))
            assert np.array_equal(direct.array, decoded.array), role
            assert np.array_equal(direct.affine, decoded.affine)
    assert native > 0, "no frame took the direct pixel path"
    # every classic file takes the bounded read; only enhanced multi-frame ones fall back
    dicom = [f for s in result.studies for v in s.volumes for f in v.frames]
    fallback = {f.path for f in dicom if read_bounded(f.path) is None}
    assert fallback and all(f.frame is not None for f in dicom if f.path in fallback)


def test_pydicom_test_files_read_the_same():
    """pydicom's own sample files (several vendors, syntaxes, odd headers) give the same
    records or the same skip reason either way; big-endian and deflated ones fall back."""
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    files = sorted(str(p) for p in root.rglob("*") if p.is_file())
    used = 0
    for path in files:
        try:
            bounded = read_bounded(path)
        except OSError:
            continue
        used += bounded is not None
        got, ref = headers.read_headers(path), _pydicom_only(path)
        assert _without_pixel_fields(got) == _without_pixel_fields(ref), path
    assert used > 20


def _mr(tmp_path: Path, name: str, transfer_syntax: str = ExplicitVRLittleEndian, **extra):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 7
    ds.SeriesDescription = "t2_tse_tra"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-10.5, -20.25, 3]
    ds.PixelSpacing = [0.5, 0.625]
    ds.Rows, ds.Columns = 3, 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-100"
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = np.arange(-6, 6, dtype="<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_sequences_charsets_and_private_blocks_are_followed(tmp_path):
    item = Dataset()
    item.CodeValue = "T-9200B"
    nested = Dataset()
    nested.ReferencedSOPInstanceUID = generate_uid()
    item.ReferencedImageSequence = Sequence([nested])
    path = _mr(
        tmp_path,
        "odd.dcm",
        SpecificCharacterSet="ISO_IR 192",
        SeriesDescription="t2_tse_tra Größe",
        AnatomicRegionSequence=Sequence([item]),
    )
    ds = pydicom.dcmread(path)
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1400")
    # Undefined-length sequences and items, as most scanners write them.
    region = ds.AnatomicRegionSequence[0]
    for holder, keyword in ((ds, "AnatomicRegionSequence"), (region, "ReferencedImageSequence")):
        holder[keyword].is_undefined_length = True
        for entry in holder[keyword].value:
            entry.is_undefined_length_sequence_item = True
    ds.save_as(path)
    assert Path(path).read_bytes().count(b"\xfe\xff\xdd\xe0") == 2  # sequence delimiters
    assert read_bounded(path) is not None
    got = headers.read_headers(path)
    assert got == _pydicom_only(path)
    assert got[0].series_description == "t2_tse_tra Größe"
    assert got[0].b_value == 1400.0 and got[0].b_source == "siemens-private"
    assert got[0].pixel_dtype == "<i2" and got[0].rescale == (2.5, -100.0)


def test_implicit_vr_files_are_read_bounded(tmp_path):
    # The meta group is explicit VR and the data set after it is not: the reader must see
    # where the meta group ends before it reads the next element (it once fell back here).
    path = _mr(tmp_path, "implicit.dcm", transfer_syntax=ImplicitVRLittleEndian)
    assert read_bounded(path) is not None
    got = headers.read_headers(path)
    assert got == _pydicom_only(path)
    assert got[0].pixel_offset is not None


def test_direct_pixels_equal_pydicom_with_signed_values_and_rescale(tmp_path):
    path = _mr(tmp_path, "signed.dcm")
    (frame,) = headers.read_headers(path)
    assert frame.pixel_offset is not None
    pixels = np.fromfile(path, frame.pixel_dtype, 12, offset=frame.pixel_offset).reshape(3, 4)
    assert np.array_equal(pixels, pydicom.dcmread(path).pixel_array)


def test_unsupported_streams_fall_back_to_pydicom(tmp_path):
    big = _mr(tmp_path, "big.dcm", transfer_syntax=ExplicitVRBigEndian)
    assert read_bounded(big) is None
    assert headers.read_headers(big) == _pydicom_only(big)
    data = Path(_mr(tmp_path, "whole.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:400])  # ends inside the header
    assert read_bounded(str(cut)) is None
    assert headers.read_headers(str(cut)) == _pydicom_only(str(cut))
    short = tmp_path / "short.dcm"
    short.write_bytes(data[:-10])  # pixel data shorter than its length says
    skipped = headers.read_headers(str(short))
    assert isinstance(skipped, headers.Skipped) and skipped.reason.startswith("truncated file")
    assert skipped == _pydicom_only(str(short))
