"""Ingest: cases on the profile grid, labels joined by every key, no identifiers, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.case_format import list_cases, read_case
from shared.dicom.scan import scan
from shared.errors import InputError
from shared.ingest import dicom_ingest
from shared.ingest.dicom_ingest import ingest_scan
from shared.ingest.labels import read_labels
from shared.profiles import get_profile

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def ingested(phantom_sites, tmp_path_factory):
    out = {}
    for name, site in phantom_sites.items():
        ws = tmp_path_factory.mktemp(f"ws-{name}")
        result = scan(site.dicom, workers=1)
        report = ingest_scan(
            result, ws, TINY, read_labels(site.root / "labels.csv"), site.root / "masks"
        )
        out[name] = (ws, report, site)
    return out


@pytest.mark.parametrize("institution", ["aurora", "borealis", "cascade", "external"])
def test_cases_have_grid_labels_and_no_identifiers(ingested, institution):
    ws, report, site = ingested[institution]
    assert report.failed == [] and report.unlabeled == [] and report.unmatched_label_rows == []
    cases = list_cases(ws / "cases" / "real")
    assert len(cases) == len(site.truths)
    truth = {t.cspca for t in site.truths}
    seen = set()
    for folder in cases:
        case = read_case(folder, with_mask=True)
        for s in ("t2w", "hbv", "adc"):
            vol = case.volumes[s]
            assert vol.shape == TINY.grid.size
            np.testing.assert_allclose(vol.spacing, TINY.grid.spacing, atol=1e-4)
            assert np.isfinite(vol.array).all()
        assert case.meta.label.source == "histopathology"
        seen.add(case.meta.label.cspca)
        text = (folder / "case.json").read_text()
        for t in site.truths:  # no names, IDs, accession numbers, UIDs or dates
            for ident in (t.patient_id, t.accession, t.study_uid, t.study_date):
                assert ident not in text
                assert ident not in folder.name
        assert "Hospital" not in text and "Clinic" not in text
    assert seen == truth


def test_lesions_keep_their_contrast_after_ingest(ingested):
    """Co-registration check: in positive cases the lesion mask (from the T2 grid) sits where
    hbv is bright and ADC is low, in every vendor's data."""
    n = 0
    for ws, _, _ in ingested.values():
        for folder in list_cases(ws / "cases" / "real"):
            case = read_case(folder, with_mask=True)
            if not case.meta.label.cspca or "lesion" not in case.volumes:
                continue
            m = case.volumes["lesion"].array > 0
            if m.sum() < 2:
                continue
            ring = _dilate(m, 2) & ~m
            adc = case.volumes["adc"].array
            hbv = case.volumes["hbv"].array
            assert np.median(adc[m]) * 3000 < 1250  # restricted (um2/s)
            assert np.median(adc[m]) < np.median(adc[ring])
            assert np.median(hbv[m]) > np.median(hbv[ring])
            n += 1
    assert n >= 2


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(m, iterations=r)


def test_rerun_skips_unchanged_and_relabel_rebuilds(phantom_sites, tmp_path):
    site = phantom_sites["borealis"]
    result = scan(site.dicom, workers=1)
    first = ingest_scan(result, tmp_path, TINY, read_labels(site.root / "labels.csv"))
    again = ingest_scan(result, tmp_path, TINY, read_labels(site.root / "labels.csv"))
    assert len(first.ingested) == len(site.truths)
    assert again.ingested == [] and sorted(again.unchanged) == sorted(first.ingested)
    no_labels = ingest_scan(result, tmp_path, TINY, None)  # labels removed: cases rebuilt
    assert sorted(no_labels.ingested) == sorted(first.ingested)
    assert sorted(no_labels.unlabeled) == sorted(first.ingested)
    reports = sorted((tmp_path / "reports").glob("ingest-*.json"))
    assert len(reports) == 3 and json.loads(reports[-1].read_text())["unlabeled"]


def test_interrupted_write_leaves_no_half_case(phantom_sites, tmp_path, monkeypatch):
    site = phantom_sites["external"]
    result = scan(site.dicom, workers=1)
    calls = {"n": 0}
    real_save = dicom_ingest.write_case.__globals__["save_nifti"]

    def flaky(vol, path, dtype=np.float32):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_save(vol, path, dtype)

    monkeypatch.setitem(dicom_ingest.write_case.__globals__, "save_nifti", flaky)
    report = ingest_scan(result, tmp_path, TINY, None)
    assert report.ingested == [] and "disk full" in report.failed[0]["reason"]
    store = tmp_path / "cases" / "real"
    assert list(store.iterdir()) == []  # neither the case nor a temporary folder remains
    monkeypatch.undo()
    assert len(ingest_scan(result, tmp_path, TINY, None).ingested) == 1


def test_label_sheet_errors_name_the_row(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("AccessionNumber,isup\nA1,2\nA2,seven\n")
    with pytest.raises(InputError, match="row 3: isup must be a number"):
        read_labels(p)
    p.write_text("Name,isup\nX,1\n")
    with pytest.raises(InputError, match="no key column"):
        read_labels(p)
    p.write_text("PatientID;Study Date;PIRADS\n007;2024-03-18;4\n007;2024-03-18;2\n")
    sheet = read_labels(p)
    assert sheet.key == "patient_date"
    label = sheet.lookup("", "", "007", "20240318")[1]
    assert (label.cspca, label.source) == (1, "pirads")
    assert "duplicate key" in sheet.problems[0]


def test_unmatched_rows_are_reported(phantom_sites, tmp_path):
    site = phantom_sites["aurora"]
    labels = tmp_path / "labels.csv"
    labels.write_text((site.root / "labels.csv").read_text() + "1.2.3.4.5,1,3,5\n")
    report = ingest_scan(scan(site.dicom, workers=1), tmp_path / "ws", TINY, read_labels(labels))
    assert report.unmatched_label_rows == [len(site.truths) + 2]


def test_profile_grids_are_centred_on_the_prostate(ingested):
    ws, _, _ = ingested["cascade"]
    case = read_case(list_cases(ws / "cases" / "real")[0], with_mask=True)
    assert case.meta.provenance["centred_on"] == "prostate mask"
    gland = case.volumes["prostate"].array > 0  # kept for evaluation: the gland is centred
    assert case.meta.has_prostate_mask and gland.sum() > 50
    centre = np.argwhere(gland).mean(axis=0)
    assert np.all(np.abs(centre - (np.array(gland.shape) - 1) / 2) < 1.5)
    assert Path(ws / "profile.json").is_file()
