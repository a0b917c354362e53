"""The PI-CAI layout of the same phantoms gives the same cases as the DICOM path."""

from __future__ import annotations

import numpy as np

from coordinator.ingest.picai import ingest_picai
from shared.case_format import list_cases, read_case
from shared.dicom.scan import scan
from shared.ingest.dicom_ingest import ingest_scan
from shared.phantom.consortium import write_marksheet
from shared.phantom.institutions import get_institution
from shared.profiles import get_profile


def test_picai_and_dicom_paths_agree(phantom_sites, tmp_path):
    site = phantom_sites["external"]
    profile = get_profile("tiny")
    write_marksheet(site.root / "picai" / "marksheet.csv", get_institution("external"), site.truths)
    rep = ingest_picai(
        site.root / "picai", site.root / "picai" / "marksheet.csv", tmp_path / "coord", profile
    )
    assert len(rep.ingested) == len(site.truths) and not rep.failed
    dic = ingest_scan(scan(site.dicom, workers=1), tmp_path / "site", profile, None)
    assert len(dic.ingested) == 1
    a = read_case(list_cases(tmp_path / "coord" / "cases" / "external")[0])
    b = read_case(list_cases(tmp_path / "site" / "cases" / "real")[0])
    assert a.meta.label.cspca == site.truths[0].cspca
    np.testing.assert_allclose(a.volumes["t2w"].affine, b.volumes["t2w"].affine, atol=1e-3)
    for s in ("t2w", "hbv", "adc"):
        r = np.corrcoef(a.volumes[s].array.ravel(), b.volumes[s].array.ravel())[0, 1]
        assert r > 0.99, (s, r)
    sheet = site.root / "picai" / "marksheet.csv"
    again = ingest_picai(site.root / "picai", sheet, tmp_path / "coord", profile)
    assert again.ingested == [] and again.unchanged == rep.ingested  # nothing rebuilt
    unlabeled = ingest_picai(site.root / "picai", None, tmp_path / "coord", profile)
    assert unlabeled.unlabeled == rep.ingested  # the label changed: the case is rebuilt
