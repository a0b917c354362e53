"""Synthetic export end to end on a tiny workspace: screen, DICOM + NIfTI, signature, review,
coordinator import; dciodvfy; ADC units; refusals leave nothing behind and are audited."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from shared.case_format import ADC_MAX_UM2_S, list_cases, read_case
from shared.errors import PrivacyGateError
from site_agent.export import audit
from site_agent.export.keys import public_keys
from site_agent.export.synthetic import export_synthetic
from tests.test_bundle_support import make_site

DCIODVFY = Path(sys.executable).parent / "dciodvfy"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    site = make_site(tmp_path_factory.mktemp("exp"), novel=4, copies=0)
    res = export_synthetic(
        site["ws"], 4, site["signer"], source="store", positive_fraction=0.5, max_rounds=1
    )
    return site, res


def test_bundle_layout_manifest_and_audit(exported):
    site, res = exported
    m = res.manifest
    assert m["kind"] == "synthetic" and m["site"] == "aurora" and m["counts"]["cases"] == 4
    assert m["counts"]["positive"] == 2 and m["tool"]["version"]
    assert m["privacy"]["phi_scan"]["passed"] and m["privacy"]["phi_scan"]["findings"] == 0
    memo = m["privacy"]["memorisation"]
    assert memo["method"] == "held-out real cases" and memo["flagged"] == 0
    assert memo["training_cases"] == 8 and memo["held_out_cases"] == 6
    assert m["provenance"]["training_cases"] == 8
    text = (res.path / "manifest.json").read_text()
    assert "case-t" not in text and "case-h" not in text  # never a real case id
    labels = (res.path / "payload" / "labels.csv").read_text().splitlines()
    assert labels[0] == "case_id,cspca" and len(labels) == 5
    rep = audit.verify(site["ws"], public_keys(site["ws"]))
    assert rep.ok and rep.events == {"export": 1}


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools not installed")
def test_every_exported_dicom_passes_dciodvfy(exported):
    _, res = exported
    files = sorted((res.path / "payload").rglob("*.dcm"))
    assert len(files) == 4 * 3 * 12
    for f in files:
        r = subprocess.run([str(DCIODVFY), str(f)], capture_output=True, text=True)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
        assert r.returncode == 0 and not errors, (f, errors)


def test_dicom_round_trip_adc_in_physical_units(exported):
    import highdicom as hd

    site, res = exported
    case_dir = res.path / "payload" / "cases" / "SYN-0001"
    dss = [pydicom.dcmread(p) for p in sorted((case_dir / "dicom" / "adc").glob("*.dcm"))]
    ds = dss[0]
    assert ds.SyntheticData == "YES" and ds.PatientIdentityRemoved == "YES"
    assert ds.BurnedInAnnotation == "NO" and "SYNTHETIC" in ds.ImageType
    assert len(ds.DeidentificationMethod) <= 64
    rw = ds.RealWorldValueMappingSequence[0]
    assert rw.MeasurementUnitsCodeSequence[0].CodeValue == "um2/s"
    um2s = np.stack([d.pixel_array.T * float(rw.RealWorldValueSlope) for d in dss], axis=2)
    source = sorted(list_cases(site["ws"] / "cases" / "synthetic"))[0]
    expected = read_case(source).volumes["adc"].array * ADC_MAX_UM2_S
    assert np.abs(um2s - expected).max() <= 0.5 + 1e-3  # half a quantisation step
    # geometry: highdicom reads the series back on the case grid
    vol = hd.get_volume_from_series(dss, dtype=np.float32)
    assert vol.spatial_shape == (12, 24, 24)
    assert dss[0].StudyInstanceUID in res.manifest["uids"]
    uids = {d.StudyInstanceUID for d in dss} | {d.FrameOfReferenceUID for d in dss}
    assert uids <= set(res.manifest["uids"])


def test_review_and_import_round_trip(exported, tmp_path):
    from coordinator.trust.importer import import_bundle
    from coordinator.trust.store import add_trusted
    from shared.errors import InputError
    from site_agent.export.review import review_bundle

    site, res = exported
    rev = review_bundle(res.path, site["ws"], public_keys(site["ws"]), tmp_path / "review")
    assert rev.ok and (tmp_path / "review" / "review.md").is_file()
    assert (tmp_path / "review" / "montage.png").is_file()
    coord = tmp_path / "coord"
    add_trusted(coord, "aurora", site["ws"] / "keys" / "site-key.pub")
    out = import_bundle(coord, res.path)
    assert out.cases == 4 and out.site == "aurora"
    cases = list_cases(out.folder / "cases")
    assert len(cases) == 4
    imported = read_case(cases[0])
    assert imported.meta.origin == "synthetic" and imported.meta.label.cspca in (0, 1)
    source = sorted(list_cases(site["ws"] / "cases" / "synthetic"))[0]
    ref = read_case(source)
    for s in ("t2w", "hbv", "adc"):
        np.testing.assert_allclose(imported.volumes[s].array, ref.volumes[s].array, atol=1e-5)
        np.testing.assert_allclose(imported.volumes[s].affine, ref.volumes[s].affine, atol=1e-6)
    with pytest.raises(InputError, match="already imported"):
        import_bundle(coord, res.path)


def test_memorised_copies_are_flagged_and_the_retry_bound_refuses(tmp_path):
    site = make_site(tmp_path, novel=0, copies=4)
    ws = site["ws"]
    with pytest.raises(PrivacyGateError, match=r"4 of 4 synthetic cases \(100%\)") as exc:
        export_synthetic(ws, 2, site["signer"], source="store", positive_fraction=0.5, max_rounds=1)
    assert "train on more cases" in (exc.value.hint or "")
    assert not (ws / "exports").exists() or not any((ws / "exports").iterdir())
    rep = audit.verify(ws, public_keys(ws))
    assert rep.ok and rep.events == {"export-refused": 1}
    entry = json.loads((ws / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["details"]["memorisation"]["flagged_fraction"] == 1.0


def test_copies_are_replaced_by_clean_samples(tmp_path):
    site = make_site(tmp_path, novel=2, copies=2)
    res = export_synthetic(
        site["ws"], 2, site["signer"], source="store", positive_fraction=0.5, max_rounds=2
    )
    memo = res.manifest["privacy"]["memorisation"]
    assert memo["flagged"] == 2 and memo["screened"] == 4 and memo["replacement_rounds"] == 1
    assert memo["flagged_fraction"] == 0.5


def test_phi_finding_leaves_no_bundle(tmp_path, monkeypatch):
    from site_agent.export import dicom_writer

    site = make_site(tmp_path, novel=2)
    monkeypatch.setattr(dicom_writer, "DERIVATION", "Derived from study of DOE^JOHNATHAN")
    out = tmp_path / "bundle"
    with pytest.raises(PrivacyGateError, match="PHI scan refused"):
        export_synthetic(
            site["ws"], 2, site["signer"], source="store", positive_fraction=0.5, out=out
        )
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
    with pytest.raises(PrivacyGateError, match="PHI scan refused"):
        export_synthetic(
            site["ws"],
            2,
            site["signer"],
            source="store",
            positive_fraction=0.5,
            out=out,
            tar=True,
        )
    assert not out.exists()


def test_missing_denylist_refuses(tmp_path):
    site = make_site(tmp_path, novel=2)
    (site["ws"] / "secrets" / "identifiers.json").unlink()
    with pytest.raises(PrivacyGateError, match="no source identifiers"):
        export_synthetic(site["ws"], 2, site["signer"], source="store", positive_fraction=0.5)


def test_tar_bundle_imports(exported, tmp_path):
    from coordinator.trust.importer import import_bundle
    from coordinator.trust.store import add_trusted
    from shared.bundle.format import pack_tar

    site, res = exported
    tar = pack_tar(res.path, tmp_path / "b.tar")
    add_trusted(tmp_path / "coord", "aurora", site["ws"] / "keys" / "site-key.pub")
    assert import_bundle(tmp_path / "coord", tar).cases == 4
    shutil.rmtree(tmp_path / "coord")


def test_export_files_are_pydicoms_own_bytes(tmp_path, monkeypatch):
    """The export writer encodes each series' shared header once (``ElementCache``); every file
    must still be byte for byte what pydicom's ``dcmwrite`` writes for the whole data set."""
    from shared.dicom.element_cache import ElementCache
    from shared.volume import Volume
    from site_agent.export import dicom_writer
    from tests.dicom_support import save_whole_with_pydicom

    def whole_with_pydicom(self, header, slice_ds, syntax, path) -> None:
        save_whole_with_pydicom(header, slice_ds, syntax, path, dicom_writer.IMPLEMENTATION_VERSION)

    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([0.7, 0.8, 3.0]) @ np.array(
        [[1.0, 0, 0], [0, 0.99, -0.14], [0, 0.14, 0.99]]
    )
    affine[:3, 3] = [-10.0, 5.0, 20.0]
    vols = {
        seq: Volume(rng.random((24, 20, 6)).astype(np.float32) * 2, affine)
        for seq in ("t2w", "hbv", "adc")
    }

    def write(folder):
        uids = iter(f"2.25.{n}" for n in range(1, 100))  # the same UIDs for both writers
        return dicom_writer.write_case_dicom(folder, vols, "SYN-0001", lambda: next(uids))

    ours = write(tmp_path / "ours")
    monkeypatch.setattr(ElementCache, "write_slice", whole_with_pydicom)
    theirs = write(tmp_path / "pydicom")
    for seq in ("t2w", "hbv", "adc"):
        assert len(ours[seq]) == 6
        for a, b in zip(ours[seq], theirs[seq], strict=True):
            assert a.read_bytes() == b.read_bytes(), a
