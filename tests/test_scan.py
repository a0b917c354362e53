"""Scanning: classification on every vendor style, bad files, and pydicom's real MR files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from shared.dicom.headers import Skipped, read_headers
from shared.dicom.scan import load_mapping, scan
from shared.errors import InputError
from shared.phantom.institutions import get_institution


@pytest.mark.parametrize("institution", ["aurora", "borealis", "cascade", "external"])
def test_phantom_studies_are_found_and_choices_are_right(phantom_sites, institution):
    site = phantom_sites[institution]
    inst = get_institution(institution)
    result = scan(site.dicom, workers=1)
    assert result.skipped == []
    assert len(result.studies) == len(site.truths)
    highest = max((*inst.b_values, inst.calculated_b or 0))
    for study in result.studies:
        assert study.complete, study.problems
        assert study.chosen["hbv"].b_value == highest
        assert study.chosen["t2w"].orientation == "axial"
        reasons = {v.reason.split(" (")[0] for v in study.volumes if v.kind == "other"}
        assert "localizer" in reasons
        assert any(r.startswith("dynamic series") for r in reasons)
        assert any("sagittal T2" in r for r in reasons)
        # b-values of every DWI volume come from the vendor's own convention
        dwi = {v.b_value for v in study.volumes if v.kind == "dwi"}
        assert set(inst.b_values) <= dwi


def test_parallel_scan_equals_serial(phantom_sites):
    root = phantom_sites["aurora"].dicom
    a = scan(root, workers=1).to_json()
    b = scan(root, workers=2).to_json()
    assert a == b


def _write(path: Path, ds: Dataset, **meta: str) -> None:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = meta.get("sop_class", "1.2.840.10008.5.1.4.1.1.4")
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    ds.save_as(path, enforce_file_format=True)


def test_bad_files_are_skipped_with_reasons(phantom_sites, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(phantom_sites["external"].dicom, root)
    real = sorted(root.rglob("*.dcm"))
    (root / "notes.txt").write_text("not a dicom file")
    data = real[0].read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) - 500])
    ds = Dataset()
    ds.Modality = "MR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 4
    _write(root / "nopixels.dcm", ds)
    ct = Dataset()
    ct.Modality = "CT"
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    _write(root / "ct.dcm", ct, sop_class="1.2.840.10008.5.1.4.1.1.2")
    dd = Dataset()
    dd.DirectoryRecordSequence = []
    _write(root / "DICOMDIR", dd, sop_class="1.2.840.10008.1.3.10")
    result = scan(root, workers=1)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert reasons["notes.txt"] == "not DICOM"
    assert reasons["truncated.dcm"].startswith("truncated file")
    assert reasons["nopixels.dcm"].startswith("no pixel data (an MR image ending at byte")
    assert reasons["ct.dcm"] == "not MR (modality CT)"
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    # The truncated copy duplicates a real SOP instance, the rest of the study is intact.
    assert all(s.complete for s in result.studies)


def test_truncated_compressed_pixel_data_is_skipped_at_scan(tmp_path):
    """Encapsulated pixel data has no length to check against the file's size: the scan
    walks its fragment items to the end delimiter, so a cut-off copy is named at scan time
    instead of failing its case later with pydicom's "no pixel data to decode"."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    ds = Dataset()
    ds.Modality = "MR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.SamplesPerPixel = 16, 1
    ds.ImagePositionPatient, ds.PixelSpacing = [0, 0, 0], [1, 1]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = encapsulate([bytes(range(200)), bytes(300)])
    ds["PixelData"].VR = "OB"
    whole = tmp_path / "whole.dcm"
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = JPEG2000Lossless
    ds.file_meta = fm
    ds.save_as(whole, enforce_file_format=True)
    data = whole.read_bytes()
    assert isinstance(read_headers(str(whole)), list)  # intact: its frame, not a skip
    for cut, says in ((len(data) - 1, "lacks its end delimiter"), (len(data) - 150, "needs")):
        part = tmp_path / f"cut{cut}.dcm"
        part.write_bytes(data[:cut])
        got = read_headers(str(part))
        assert isinstance(got, Skipped) and got.reason.startswith("truncated file (compressed")
        assert says in got.reason


def _mr_file(path: Path, syntax: str) -> bytes:
    """A small single-frame MR image in ``syntax`` (native pixels)."""
    import numpy as np

    ds = Dataset()
    ds.Modality, ds.SOPClassUID = "MR", "1.2.840.10008.5.1.4.1.1.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagePositionPatient, ds.PixelSpacing = [0, 0, 0], [1, 1]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    big = syntax == ExplicitVRBigEndian
    ds.PixelData = np.arange(256, dtype=">u2" if big else "<u2").tobytes()
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    fm.TransferSyntaxUID = syntax
    ds.file_meta = fm
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_deflated_and_big_endian_files_are_judged_on_their_own_terms(tmp_path):
    """A deflated file's offsets count the inflated stream, so its size says nothing about
    truncation; a big-endian file cut inside its dataset (pydicom's lenient reading returns it
    empty) is named corrupt or truncated, not "not MR"."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    deflated = tmp_path / "deflated.dcm"
    _mr_file(deflated, DeflatedExplicitVRLittleEndian)
    frames = read_headers(str(deflated))
    assert isinstance(frames, list) and frames[0].rows == 16
    data = _mr_file(tmp_path / "big.dcm", ExplicitVRBigEndian)
    assert isinstance(read_headers(str(tmp_path / "big.dcm")), list)
    cut = tmp_path / "big-cut.dcm"
    cut.write_bytes(data[:300])  # just past the file meta
    got = read_headers(str(cut))
    assert isinstance(got, Skipped) and got.reason.startswith("corrupt or truncated header")


def test_pydicom_real_mr_files_scan_without_crash():
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    result = scan(root, workers=1)
    assert result.n_files > 50
    assert len(result.skipped) > 10  # CT, US, RT, broken files: each with a reason
    assert all(s.reason for s in result.skipped)
    # dicomdirtests/98892003/MR2 is a Philips tri-planar localizer set
    kinds = [(v.description, v.kind, v.reason) for s in result.studies for v in s.volumes]
    assert kinds, "pydicom ships MR files: some must become volumes"
    assert all(k in ("t2w", "dwi", "adc", "other") for _, k, _ in kinds)
    assert not any(s.complete for s in result.studies), "no pydicom sample is a bpMRI study"
    reasons = {r for _, _, r in kinds}
    assert any("localizer" in r for r in reasons)


def test_mapping_file_overrides_and_is_validated(phantom_sites, tmp_path):
    root = phantom_sites["aurora"].dicom
    auto = scan(root, workers=1)
    assert all(s.chosen["hbv"].computed for s in auto.studies)  # calculated b=1600 wins
    m = tmp_path / "map.json"
    m.write_text('{"hbv": "_b50_400_800_1400$"}')  # force the acquired multi-b series
    forced = scan(root, workers=1, mapping=load_mapping(m))
    for s in forced.studies:
        assert s.chosen["hbv"].b_value == 1400 and not s.chosen["hbv"].computed
    m.write_text('{"adc": "^no such series$"}')
    none = scan(root, workers=1, mapping=load_mapping(m))
    assert all("matched no series" in " ".join(s.problems) for s in none.studies)
    bad = tmp_path / "bad.json"
    bad.write_text('{"flair": "x"}')
    with pytest.raises(InputError, match="keys t2w, hbv, adc"):
        load_mapping(bad)


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="DICOM folder not found"):
        scan(tmp_path / "nope")


def test_missing_slice_is_found_by_the_scan(phantom_sites, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(phantom_sites["external"].dicom, root)
    study = scan(root, workers=1).studies[0]
    t2 = sorted(study.chosen["t2w"].frames, key=lambda f: f.ipp[2])
    Path(t2[len(t2) // 2].path).unlink()
    result = scan(root, workers=1)
    study = result.studies[0]
    assert not study.complete
    assert study.problems == [
        "unusable t2w: 1 missing slice(s) (gap of 7.20 mm at 3.60 mm spacing)"
    ]
    assert len([s for s in result.skipped if "missing slice" in s.reason]) == len(t2) - 1
