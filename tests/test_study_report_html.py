"""``report.html`` beside ``report.md``: the study report as one self-contained page, checked
in a real browser (headless Chromium) from the rendered DOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.study import run as study_run
from coordinator.study.config import load_study_config
from coordinator.study.report import cell_metrics, comparisons, summarise, write_outputs
from tests.browser_support import assert_self_contained, render, screenshot
from tests.federation_support import make_store
from tests.test_study import write_config


@pytest.fixture(scope="module")
def study_out(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A real (tiny) study with test_study's config: 3 conditions x (2 seeds at 1/4 + 1 at 1)."""
    base = tmp_path_factory.mktemp("study-html")
    stores = {
        "external": make_store(base / "external", 40, 1, "real"),
        "synthetic": make_store(base / "synthetic", 20, 2, "synthetic"),
    }
    out = base / "out"
    results = study_run.run_study(load_study_config(write_config(base / "s.toml", stores)), out)
    return out, write_outputs(results, out, phantom=True)


def test_study_report_html_in_a_browser(study_out, tmp_path):
    out, paths = study_out
    assert paths["report_html"] == out / "report.html" and paths["report"].is_file()
    r = render(paths["report_html"], tmp_path)
    assert r.title == "Source-free adaptation study"
    assert (
        r.facts["note"]["visible"] and "phantom data check the machinery" in r.facts["note"]["text"]
    )
    assert len(r.images) == 1 and r.images[0]["visible"] and r.images[0]["width"] > 500
    assert_self_contained(r)
    text = r.text
    for heading in (
        "AUC on the external test set (mean ± sd over seeds)",
        "Average precision (mean ± sd over seeds)",
        "Paired comparisons",
        "Significant differences (seed level, Holm-corrected, α = 0.05)",
        "What these seeds can show",
    ):
        assert heading in text
    # the paper-style table: every condition with its mean ± sd at every fraction, as report.md
    md = paths["report"].read_text()
    for line in md.splitlines():
        if line.startswith(("| none |", "| synthetic-bpmri |", "| synthetic-t2w |")):
            for value in line.strip("| ").split(" | ")[1:]:
                assert value in text
    assert "none vs synthetic-bpmri" in text and "DeLong" in text and "synthetic-t2w" in text
    assert r.facts["significant"]["visible"] and r.facts["significant"]["text"] == "none"
    png = screenshot(paths["report_html"], tmp_path / "study-report.png", r.height)
    assert png.stat().st_size > 0


def _fake_results() -> list[dict]:
    """Cells whose scores make real-source clearly better than none at 10 paired seeds."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 10)
    results = []
    for cond, shift in (("none", 0.0), ("real-source", 2.5)):
        for seed in range(10):
            results.append(
                {
                    "condition": cond,
                    "fraction": 0.0625,
                    "seed": seed,
                    "n_train": 8,
                    "test_ids": [f"c{i}" for i in range(30)],
                    "test_labels": y.tolist(),
                    "test_scores": (rng.normal(0, 1, 30) + shift * y).tolist(),
                    "threshold": 0.0,
                }
            )
    return results


def test_significant_differences_are_stated_and_highlighted(tmp_path):
    from coordinator.study.report import plot
    from coordinator.study.report_html import render_report_html

    results = _fake_results()
    summary = summarise([cell_metrics(r) for r in results])
    comps = comparisons(results, n_boot=200)
    assert comps[0]["auc_p_seed_level_holm"] < 0.05
    plot(summary, tmp_path / "study.png", "phantom data")
    page = tmp_path / "report.html"
    page.write_text(
        render_report_html(summary, comps, "a note", (tmp_path / "study.png").read_bytes())
    )
    r = render(page, tmp_path / "render")
    stated = r.facts["significant"]["text"]
    assert stated.startswith("at 1/16, real-source has the higher AUC") and "Holm p =" in stated
    assert r.highlighted["mark"] == 1  # the comparison row that passed Holm
    assert_self_contained(r)
    screenshot(page, tmp_path / "study-significant.png", r.height)
