"""The PHI scan catches planted PHI; the deny-list never stores plaintext; the memorisation
screen flags training copies and passes real cases the model never saw."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.volume import Volume
from site_agent.export.dicom_writer import UidMinter, write_case_dicom
from site_agent.export.nifti_writer import nifti_gz_bytes
from site_agent.privacy import memorisation as mem
from site_agent.privacy.identifiers import DenyList, harvest_file, record_identifiers
from site_agent.privacy.phi_scan import PhiReport, scan_dicom, scan_nifti, scan_payload
from tests.test_bundle_support import GRID, SOURCE_IDS, affine, make_site, random_case


@pytest.fixture
def clean(tmp_path):
    """One clean synthetic case (DICOM + NIfTI) and the deny-list of the source ids."""
    deny = DenyList(b"k" * 32)
    deny.add(SOURCE_IDS)
    mint = UidMinter(reject=deny.contains)
    vols = {s: Volume(a, affine()) for s, a in random_case(np.random.default_rng(1)).items()}
    root = tmp_path / "b"
    case = root / "payload" / "cases" / "SYN-0001"
    write_case_dicom(case / "dicom", vols, "SYNTH-0001", mint)
    (case / "nifti").mkdir()
    for s, v in vols.items():
        (case / "nifti" / f"{s}.nii.gz").write_bytes(nifti_gz_bytes(v, v.array))
    (root / "payload" / "labels.csv").write_text("case_id,cspca\nSYN-0001,1\n")
    return root, set(mint.minted), deny


def _scan_one(path: Path, minted, deny) -> PhiReport:
    rep = PhiReport()
    scan_dicom(path, path.name, minted, deny, rep)
    return rep


def test_clean_export_has_no_findings(clean):
    root, minted, deny = clean
    rep = scan_payload(root, "synthetic", minted, deny)
    assert rep.passed, [f.line() for f in rep.findings]
    assert rep.by_type == {"dicom": 36, "nifti": 3, "csv": 1}


def _mutate(root: Path, fn) -> Path:
    path = next((root / "payload").rglob("0001.dcm"))
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def _kinds(rep: PhiReport) -> set[str]:
    return {f.kind for f in rep.findings}


def test_private_tag_is_caught(clean):
    root, minted, deny = clean

    def plant(ds):
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "LO", "x")

    assert "private-tag" in _kinds(_scan_one(_mutate(root, plant), minted, deny))


def test_copied_source_uid_is_caught(clean):
    root, minted, deny = clean

    def plant(ds):
        ds.StudyInstanceUID = SOURCE_IDS[3]

    kinds = _kinds(_scan_one(_mutate(root, plant), minted, deny))
    assert {"uid", "identifier"} <= kinds


def test_identifier_in_element_and_nested_sequence_is_caught(clean):
    root, minted, deny = clean

    def top(ds):
        ds.SeriesDescription = "AxT2 for pat-778812 (lower case)"

    rep = _scan_one(_mutate(root, top), minted, deny)
    assert "identifier" in _kinds(rep) and "value" in _kinds(rep)

    def nested(ds):
        item = Dataset()
        item.CodeValue = "ACC99887766"
        ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence.append(item)

    rep = _scan_one(_mutate(root, nested), minted, deny)
    where = [f.where for f in rep.findings]
    assert "identifier" in _kinds(rep)
    assert any("MeasurementUnitsCodeSequence[1].CodeValue" in w for w in where)


def test_unlisted_attribute_in_a_sequence_is_caught(clean):
    root, minted, deny = clean

    def plant(ds):
        item = Dataset()
        item.InstitutionName = "General Hospital"
        ds.ReferencedImageSequence = Sequence([item])

    rep = _scan_one(_mutate(root, plant), minted, deny)
    assert "not-allowlisted" in _kinds(rep)


def test_overlay_group_and_preamble_are_caught(clean):
    root, minted, deny = clean

    def plant(ds):
        ds.add_new(0x60000010, "US", 24)
        ds.add_new(0x60003000, "OW", b"\x00" * 72)

    path = _mutate(root, plant)
    assert "overlay-group" in _kinds(_scan_one(path, minted, deny))
    data = bytearray(path.read_bytes())
    data[0:4] = b"II*\x00"  # a TIFF header in the preamble
    path.write_bytes(bytes(data))
    assert "preamble" in _kinds(_scan_one(path, minted, deny))


def test_nifti_descrip_extension_and_gzip_name_are_caught(clean, tmp_path):
    import nibabel as nib

    root, _, deny = clean
    path = next((root / "payload").rglob("t2w.nii.gz"))
    img = nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
    img.header["descrip"] = b"DOE^JOHNATHAN t2"
    path.write_bytes(gzip.compress(img.to_bytes(), mtime=0))
    rep = PhiReport()
    scan_nifti(path, "t2w.nii.gz", deny, rep)
    assert {"nifti-text", "identifier"} <= _kinds(rep)
    img.header["descrip"] = b""
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"hello"))
    nib.save(img, str(tmp_path / "x.nii.gz"))  # nibabel's gzip also stores a file name
    rep = PhiReport()
    scan_nifti(tmp_path / "x.nii.gz", "x.nii.gz", deny, rep)
    assert "nifti-extension" in _kinds(rep) and "nifti" in _kinds(rep)


def test_file_names_are_scanned(clean):
    root, minted, deny = clean
    src = root / "payload" / "labels.csv"
    shutil.copy(src, root / "payload" / "PAT-778812.csv")
    kinds = _kinds(scan_payload(root, "synthetic", minted, deny))
    assert {"file-name", "identifier"} <= kinds


def test_denylist_stores_salted_hashes_only(tmp_path):
    ws = tmp_path / "ws"
    assert record_identifiers(ws, [*SOURCE_IDS, "short"]) == len(SOURCE_IDS)
    text = (ws / "secrets" / "identifiers.json").read_text()
    assert all(v.upper() not in text.upper() for v in [*SOURCE_IDS, "DOE", "JOHNATHAN"])
    assert (ws / "secrets" / "identifiers.json").stat().st_mode & 0o077 == 0
    deny = DenyList.load(ws)
    assert deny.contains(b"\x00\x01junk doe^johnathan junk")
    assert deny.find(b"xxACC99887766yy") == [(2, 11)]
    assert not deny.contains("ACC9988776")  # a shorter fragment is not the identifier
    other = tmp_path / "other"
    record_identifiers(other, SOURCE_IDS)
    assert (
        json.loads((other / "secrets" / "identifiers.json").read_text())["hashes"]
        != (json.loads(text)["hashes"])
    )  # per-site salt


def test_harvest_reads_names_ids_and_uids_from_a_header():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_small.dcm", download=False)  # ships inside the pydicom wheel
    assert path is not None
    ds = pydicom.dcmread(path)
    found = harvest_file(Path(path))
    assert str(ds.StudyInstanceUID) in found and str(ds.SOPInstanceUID) in found
    assert any(str(ds.PatientName).split("^")[0] in v for v in found)


def test_memorisation_flags_copies_and_passes_held_out_cases(tmp_path):
    site = make_site(tmp_path, novel=0, copies=0, keys=False)
    ref = mem.build_reference(site["ws"], mem.ScreenConfig(use_latents=False))
    assert ref.calibration["method"] == "held-out real cases"
    rng = np.random.default_rng(5)
    copies = np.stack(
        [
            np.stack([site["train"][i][s] for s in ("t2w", "hbv", "adc")])
            + 0.01 * rng.normal(0, 1, (3, *GRID)).astype(np.float32)
            for i in range(4)
        ]
    )
    held = np.stack([np.stack([h[s] for s in ("t2w", "hbv", "adc")]) for h in site["hold"]])
    assert all(s.flagged for s in mem.screen(ref, copies))
    assert not any(s.flagged for s in mem.screen(ref, held))
    # partial memorisation: only the T2 copied still comes closer than held-out cases
    partial = held[:1].copy()
    partial[0, 0] = copies[0, 0]
    assert mem.screen(ref, partial)[0].per_sequence["t2w"] < 0.01


def test_leave_one_out_calibration_without_held_out_cases(tmp_path):
    site = make_site(tmp_path, n_hold=0, novel=0, keys=False)
    ref = mem.build_reference(site["ws"], mem.ScreenConfig(use_latents=False))
    assert ref.calibration["method"].startswith("leave-one-out")
    assert ref.calibration["held_out_cases"] == 0


def test_latent_distance_uses_the_site_autoencoder(tmp_path):
    import torch

    from shared.profiles import get_profile
    from shared.weights import save_weights
    from site_agent.generative import autoencoder as ae

    site = make_site(tmp_path, novel=0, keys=False)
    spec = get_profile("tiny").autoencoder
    torch.manual_seed(0)
    model = ae.build_autoencoder(spec)
    save_weights(
        site["ws"] / "models" / "generative" / "autoencoder",
        model.state_dict(),
        ae.autoencoder_config(spec) | {"profile": "tiny"},
    )
    ref = mem.build_reference(site["ws"], mem.ScreenConfig())
    assert ref.latent_threshold is not None and ref.latent_threshold > 0
    copy = np.stack([site["train"][0][s] for s in ("t2w", "hbv", "adc")])[None]
    score = mem.screen(ref, copy)[0]
    assert score.flagged and set(score.reasons) == {"image", "latent"}
    assert score.latent_distance == pytest.approx(0.0, abs=1e-5)


def test_average_samples_are_not_taken_for_copies(tmp_path):
    """An 'average' sample (what an under-trained model makes) is near every training case at
    once; only a sample distinctly near one patient is flagged (uniqueness rule)."""
    site = make_site(tmp_path, n_train=8, n_hold=6, novel=0, copies=0, keys=False)
    ref = mem.build_reference(site["ws"], mem.ScreenConfig(use_latents=False))
    train = np.stack([np.stack([c[s] for s in ("t2w", "hbv", "adc")]) for c in site["train"]])
    rng = np.random.default_rng(4)
    average = train.mean(axis=0) + 0.001 * rng.normal(size=train.shape[1:])
    copy = train[3] + 0.002 * rng.normal(size=train.shape[1:])
    avg_score, copy_score = mem.screen(ref, np.stack([average, copy]).astype(np.float32))
    assert avg_score.image_distance < ref.image_threshold  # the threshold alone would flag it
    assert not avg_score.flagged and avg_score.image_uniqueness > ref.alpha
    assert copy_score.flagged and copy_score.reasons == ["image"]
    assert copy_score.image_uniqueness < 0.1
