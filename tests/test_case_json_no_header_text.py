"""Issue 11: no header free text (SeriesDescription can hold a patient's name) in case.json."""

from __future__ import annotations

import json

from shared.case_format import list_cases
from shared.dicom.scan import scan
from shared.ingest.dicom_ingest import ingest_scan
from shared.profiles import get_profile


def test_case_json_keeps_the_reason_not_the_series_description(phantom_sites, tmp_path):
    site = phantom_sites["aurora"]
    result = scan(site.dicom, workers=1)
    descriptions = {v.description for s in result.studies for v in s.volumes if v.description}
    ingest_scan(result, tmp_path, get_profile("tiny"), None)
    cases = list_cases(tmp_path / "cases" / "real")
    assert cases
    for folder in cases:
        text = (folder / "case.json").read_text()
        for d in descriptions:
            assert d not in text, f"series description {d!r} reached the case store"
        seqs = json.loads(text)["sequences"]
        assert seqs["adc"]["chosen_because"] in ("ImageType ADC", "description matches ADC")
        assert seqs["hbv"]["chosen_because"].startswith("b=")
        assert isinstance(seqs["t2w"]["series_number"], int)
