"""Each vendor's b-value convention, written the vendor's way and read back from a file."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from shared.dicom.bvalue import b_value
from shared.phantom.vendors import set_b_value


def _roundtrip(ds: Dataset, tmp_path, syntax) -> Dataset:
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    path = tmp_path / "b.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(
    ("vendor", "b", "source"),
    [
        ("siemens", 1400, "siemens-private"),
        ("siemens", 0, "siemens-private"),
        ("ge", 1600, "ge-private"),
        ("ge", 50, "ge-private"),
        ("philips", 1500, "DiffusionBValue"),
    ],
)
def test_vendor_conventions(vendor, b, source, syntax, tmp_path):
    ds = Dataset()
    set_b_value(ds, vendor, b)
    back = _roundtrip(ds, tmp_path, syntax)
    assert b_value(back) == (float(b), source)


def test_ge_offset_is_removed_from_raw_un_bytes():
    ds = Dataset()
    block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    block.add_new(0x39, "UN", b"1000001400\\8\\0\\0 ")
    assert b_value(ds) == (1400.0, "ge-private")


def test_philips_private_only():
    ds = Dataset()
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL", 2000.0)
    assert b_value(ds) == (2000.0, "philips-private")


def test_siemens_sequence_name_fallback():
    ds = Dataset()
    ds.SequenceName = "*ep_b800t"
    assert b_value(ds) == (800.0, "SequenceName")


def test_renamed_private_creator_is_not_misread():
    ds = Dataset()
    ds.private_block(0x0019, "ANONYMISED", create=True).add_new(0x0C, "IS", "1400")
    assert b_value(ds) == (None, "none")


def test_enhanced_frame_diffusion_sequence():
    frame = Dataset()
    item = Dataset()
    item.DiffusionBValue = 1800.0
    frame.MRDiffusionSequence = [item]
    assert b_value(Dataset(), frame) == (1800.0, "MRDiffusionSequence")
