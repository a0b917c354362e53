"""Bounded header reads and direct pixel reads agree with pydicom, file for file.

pydicom is the reference: the scan run with bounded reads must give the frame records a
pydicom-only scan gives, and volumes read from the located pixels the arrays pydicom decodes.
"""

from __future__ import annotations

import dataclasses
import os
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
from shared.phantom.consortium import generate_study
from shared.phantom.institutions import get_institution
from shared.profiles import get_profile

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
    # every file takes the bounded read, enhanced multi-frame ones included
    dicom = [f for s in result.studies for v in s.volumes for f in v.frames]
    assert any(f.frame is not None for f in dicom), "no enhanced file in the site"
    assert all(read_bounded(path) is not None for path in {f.path for f in dicom})


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


ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
PER_FRAME_SQ = b"\x00\x52\x30\x92SQ"  # (5200,9230) SQ, explicit VR little endian


@pytest.fixture(scope="module")
def enhanced_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every series of two enhanced studies (Siemens and Philips style; each has a tri-planar
    localizer with per-frame orientation, DWI with per-frame b-values, DCE with temporal
    positions), as the phantom writes them: explicit VR little endian, defined lengths."""
    root = tmp_path_factory.mktemp("enhanced")
    force = {"enhanced": True, "multi_b": True, "positive": True}
    for institution in ("aurora", "external"):
        generate_study(root, get_institution(institution), get_profile("tiny"), 0, 7, force)
    files = sorted(str(p) for p in (root / "dicom").rglob("*.dcm"))
    assert len(files) >= 10
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (
            ds.SOPClassUID == ENHANCED_MR
            and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        )
    return files


def _pydicom_frames(path: str) -> list[headers.FrameHeader] | headers.Skipped:
    """The frame records of the pydicom path: a deferred read, then the frame builder."""
    with headers._lenient_reading():
        ds = pydicom.dcmread(path, defer_size=512)
        return headers._frames(path, ds, os.path.getsize(path))


def _rewrite(src: str, dst: Path, variant: str) -> str:
    """``src`` written again as ``variant``: "legacy" (Legacy Converted Enhanced MR, b-values
    in UnassignedPerFrameConvertedAttributesSequence, a frame type of its own on even frames
    and none on odd ones), "shared-b" (the b-value only in the
    shared groups), "undefined" (every sequence and item of undefined length), "implicit"
    (Implicit VR Little Endian), "implicit-undefined" (both)."""
    ds = pydicom.dcmread(src)
    if variant == "legacy":
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = LEGACY_ENHANCED_MR
        for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            if i % 2:  # the file's ImageType holds for the frame
                del item.MRImageFrameTypeSequence
            else:
                item.MRImageFrameTypeSequence[0].FrameType = ["DERIVED", "SECONDARY", "LEGACY"]
            if "MRDiffusionSequence" in item:
                unassigned = Dataset()
                unassigned.DiffusionBValue = item.MRDiffusionSequence[0].DiffusionBValue
                del item.MRDiffusionSequence
                item.UnassignedPerFrameConvertedAttributesSequence = Sequence([unassigned])
    if variant == "shared-b":
        for item in ds.PerFrameFunctionalGroupsSequence:
            if "MRDiffusionSequence" in item:
                del item.MRDiffusionSequence
        diffusion = Dataset()
        diffusion.DiffusionBValue = 800.0
        ds.SharedFunctionalGroupsSequence[0].MRDiffusionSequence = Sequence([diffusion])
    if "undefined" in variant:
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
    if "implicit" in variant:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)
    return str(dst)


@pytest.mark.parametrize(
    "variant", ["as-written", "legacy", "shared-b", "undefined", "implicit", "implicit-undefined"]
)
def test_enhanced_files_are_read_bounded_as_pydicom_reads_them(enhanced_files, tmp_path, variant):
    sources: set[str] = set()
    for i, src in enumerate(enhanced_files):
        path = src if variant == "as-written" else _rewrite(src, tmp_path / f"{i}.dcm", variant)
        if "undefined" in variant:
            data = Path(path).read_bytes()
            assert data.count(b"\xfe\xff\xdd\xe0") > 10 and b"\xfe\xff\x0d\xe0" in data
        assert read_bounded(path) is not None, path  # the fast path, not a silent fallback
        got = headers.read_headers(path)
        assert got == _pydicom_frames(path), path
        assert isinstance(got, list) and len(got) == pydicom.dcmread(path).NumberOfFrames
        sources |= {f.b_source for f in got}
        if variant == "shared-b":
            assert {f.b_value for f in got} == {800.0}
        if variant == "legacy":
            assert got[0].image_type == ("DERIVED", "SECONDARY", "LEGACY")
            assert len(got) == 1 or got[1].image_type == tuple(pydicom.dcmread(path).ImageType)
    # the variant's b-value convention was met: the test follows each lookup path
    expected = {
        "legacy": "UnassignedPerFrameConvertedAttributesSequence",
        "shared-b": "MRDiffusionSequence",  # the file's, from the shared groups
    }.get(variant, "MRDiffusionSequence")
    assert expected in sources


def test_truncated_or_broken_functional_groups_fall_back_to_pydicom(enhanced_files, tmp_path):
    src = next(f for f in enhanced_files if "DWI" in f or "diff" in f)
    undefined = _rewrite(src, tmp_path / "undefined.dcm", "undefined")
    for name, original in (("defined", src), ("undefined", undefined)):
        data = Path(original).read_bytes()
        start = data.index(PER_FRAME_SQ)
        middle = (start + data.index(b"\xe0\x7f\x10\x00")) // 2  # inside the per-frame items
        cut = tmp_path / f"cut-{name}.dcm"
        cut.write_bytes(data[:middle])
        assert read_bounded(str(cut)) is None
        got = headers.read_headers(str(cut))
        assert isinstance(got, headers.Skipped) and got == _pydicom_only(str(cut))
    # a defined-length per-frame sequence that ends inside its last item
    data = bytearray(Path(src).read_bytes())
    at = data.index(PER_FRAME_SQ) + 8
    length = int.from_bytes(data[at : at + 4], "little")
    data[at : at + 4] = (length - 6).to_bytes(4, "little")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    assert read_bounded(str(broken)) is None
    assert headers.read_headers(str(broken)) == _pydicom_only(str(broken))


def test_per_frame_count_mismatch_is_skipped_as_before(enhanced_files, tmp_path):
    ds = pydicom.dcmread(enhanced_files[0])
    n = len(ds.PerFrameFunctionalGroupsSequence)
    ds.NumberOfFrames = n + 1
    path = str(tmp_path / "mismatch.dcm")
    ds.save_as(path, enforce_file_format=True)
    assert read_bounded(path) is not None
    got = headers.read_headers(path)
    assert got == headers.Skipped(path, f"{n} per-frame groups for {n + 1} frames")
    assert got == _pydicom_frames(path)


def test_sequences_nested_past_the_stack_are_a_skip_not_a_traceback(tmp_path):
    # A hostile file: 5000 undefined-length sequences, each inside the last one's item, before
    # the pixel data. Both readers recurse per level; the scan must report the file, not crash.
    path = _mr(tmp_path, "deep.dcm")
    data = Path(path).read_bytes()
    at = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData, explicit VR little endian
    depth = 5000
    opening = b"\x11\x00\x10\x10SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    deep = tmp_path / "deeper.dcm"
    deep.write_bytes(data[:at] + opening * depth + closing * depth + data[at:])
    assert read_bounded(str(deep)) is None
    got = headers.read_headers(str(deep))
    assert got == headers.Skipped(str(deep), "corrupt header (sequences nested too deeply to read)")
