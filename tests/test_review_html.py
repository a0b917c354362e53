"""``site-agent review --html``: the data-protection officer's page, checked in a real browser.

A real bundle (tiny site, two memorised copies flagged and replaced) is reviewed; headless
Chromium renders the page and the assertions read the rendered DOM: the verdict, threshold and
counts are on screen, every figure loaded from the page itself, nothing was fetched, and no
real case id or site identifier appears.
"""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from shared.cli_support import make_app
from site_agent.export.keys import public_keys
from site_agent.export.review import review_bundle
from site_agent.export.synthetic import export_synthetic
from site_agent.privacy.chance import chance_auc
from tests.browser_support import assert_self_contained, render, screenshot
from tests.test_bundle_support import PASSPHRASE, SOURCE_IDS, make_site


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-html")
    site = make_site(root, novel=4, copies=2)
    res = export_synthetic(
        site["ws"], 4, site["signer"], source="store", positive_fraction=0.5, max_rounds=2
    )
    rev = review_bundle(res.path, site["ws"], public_keys(site["ws"]), root / "review", html=True)
    return site, res, rev


def test_review_page_shows_the_verdict_threshold_and_counts_in_a_browser(reviewed, tmp_path):
    _, res, rev = reviewed
    memo = res.manifest["privacy"]["memorisation"]
    assert memo["flagged"] == 2 and memo["screened"] == 6  # the copies, replaced
    assert rev.html_path == rev.report_dir / "review.html"
    r = render(rev.html_path, tmp_path)
    facts = r.facts
    for name in ("verdict", "threshold", "flagged", "screened", "exported", "cases", "site"):
        assert facts[name]["visible"], name
    assert facts["verdict"]["text"].startswith("PASS")
    assert facts["threshold"]["text"] == f"{memo['image_threshold']:.4f}"
    assert facts["flagged"]["text"] == "2" and facts["screened"]["text"] == "6"
    assert facts["exported"]["text"] == "4" and facts["replaced"]["text"] == "2"
    assert facts["phi-findings"]["text"] == "0" and facts["kind"]["text"] == "synthetic"
    # one histogram and one montage per sequence, all decoded from the page itself
    assert len(r.images) == 4 and all(i["visible"] for i in r.images)
    assert_self_contained(r)
    text = r.text
    assert "2 csPCa positive, 2 negative" in text
    assert "held-out real cases" in text and "uniqueness rule" in text
    assert "SyntheticData" in text and "fixed value: YES" in text  # kept element and its rule
    assert "items of RealWorldValueMappingSequence" in text
    assert "audit log verifies" in text and "the manifest reviewed here" in text
    assert res.manifest["bundle_id"] in text
    for secret in ("case-t0", "case-h0", *SOURCE_IDS):  # no real case id, no site identifier
        assert secret not in text
    png = screenshot(rev.html_path, tmp_path / "review-pass.png", r.height)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finding_fails_the_verdict_and_is_highlighted(reviewed, tmp_path):
    """An identifier the site learns after export (here: the synthetic patient name) shows up
    on re-review as findings in red, and the verdict turns to FAIL."""
    from site_agent.privacy.identifiers import record_identifiers

    site, res, _ = reviewed
    ws = tmp_path / "ws"
    shutil.copytree(site["ws"], ws)
    record_identifiers(ws, ["SYNTHETIC^BPMRI"])
    rev = review_bundle(res.path, ws, public_keys(ws), tmp_path / "review", html=True)
    assert not rev.ok
    r = render(rev.html_path, tmp_path / "render")
    assert r.facts["verdict"]["text"].startswith("FAIL — do not release")
    assert r.facts["phi-findings"]["text"] == str(len(rev.findings))
    assert r.highlighted["bad"] == len(rev.findings) > 0 and "source identifier" in r.text
    assert "SYNTHETIC^BPMRI" in r.text  # the rule that kept PatientName, not the finding
    assert_self_contained(r)
    screenshot(rev.html_path, tmp_path / "review-fail.png", 2400)


def test_weights_page_shows_membership_inference_against_its_control(reviewed, tmp_path):
    """The AUC is set beside what an attack with no signal scores on the same group sizes."""
    from shared.html_page import esc
    from site_agent.export.review_html import AuditView, ReviewPage, render_review_html
    from site_agent.privacy.phi_scan import PhiReport

    _, res, _ = reviewed
    m = dict(res.manifest)
    m["kind"], m["counts"] = "weights", {"models": 2}
    m["privacy"] = {
        "weights": {
            "model": "ldm",
            "max_auc": 0.75,
            "membership_inference": {
                "attack": "loss threshold",
                "training_cases": 10,
                "held_out_cases": 4,
                "autoencoder_reconstruction_auc": 0.9,
                "diffusion_denoising_auc": 0.55,
            },
        }
    }
    m["profile"] = '<img src="http://127.0.0.1:9/x.png">'  # a hostile value stays text
    page = ReviewPage(m, "f" * 64, "0" * 64, "a test key", PhiReport(files=3), AuditView())
    path = tmp_path / "weights.html"
    path.write_text(render_review_html(page))
    assert str(esc(m["profile"])) in path.read_text()
    r = render(path, tmp_path / "render")
    ctl = chance_auc(10, 4)
    assert r.facts["verdict"]["text"].startswith("FAIL") and "0.90 above the bound 0.75" in r.text
    assert r.facts["mia-auc"]["text"] == "0.900" and r.facts["mia-bound"]["text"] == "0.75"
    assert f"{ctl.low:.3f} – {ctl.high:.3f}" in r.text
    assert f"{ctl.p_at_least(0.9):.3g}" in r.text
    assert m["profile"] in r.text and r.images == [] and r.refs == []
    assert r.page_requests == [] and r.resources == []


def test_chance_auc_matches_enumeration():
    """The control's exact null distribution equals counting every member/non-member split."""
    import itertools

    m, n = 5, 4
    aucs = []
    for members in itertools.combinations(range(m + n), m):  # ranks held by members
        aucs.append((sum(members) - m * (m - 1) / 2) / (m * n))
    for a in (0.5, 0.75, 0.9, 1.0):
        assert chance_auc(m, n).p_at_least(a) == pytest.approx(
            sum(x >= a - 1e-12 for x in aucs) / len(aucs)
        )
    ctl = chance_auc(10, 4)
    assert ctl.low < 0.5 < ctl.high and ctl.low == pytest.approx(1 - ctl.high)
    big = chance_auc(300, 100)
    assert big.method.startswith("normal") and 0.43 < big.low < 0.5 < big.high < 0.57


def test_cli_review_html(reviewed, tmp_path, monkeypatch):
    from site_agent.cli import export_commands

    site, res, _ = reviewed
    app = make_app("site-agent", "test")
    export_commands.register(app)
    monkeypatch.setenv("SITE_AGENT_KEY_PASSPHRASE", PASSPHRASE)
    out = CliRunner().invoke(
        app,
        ["review", str(res.path), "-w", str(site["ws"]), "--report", str(tmp_path), "--html"],
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "review.html").is_file() and "review.html" in out.output
