"""A reviewer's sign-off (issue 14, points 2 and 3): reviewer keys, signed approvals and
rejections in the bundle, a site export policy that holds a bundle until enough reviewers
approved it, and a coordinator that pins reviewers and can require their approvals. Real keys
and signatures, both CLIs in process; every bad input is one line, a documented exit code and,
at the site, an audit entry."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from shared.bundle.format import canonical_json, verify_bundle
from shared.errors import EXIT_INPUT, EXIT_INTEGRITY, EXIT_PRIVACY
from tests.audit_support import Apps, export_store, make_site, one_line_error

REVIEWER_PASSPHRASE = "reviewer's own phrase"


@pytest.fixture
def apps(monkeypatch) -> Apps:
    monkeypatch.setenv("SITE_AGENT_REVIEWER_PASSPHRASE", REVIEWER_PASSPHRASE)
    return Apps(monkeypatch)


@pytest.fixture
def site(tmp_path, apps):
    """A site with reviewers alice and bob and one exported (folder) bundle."""
    s = make_site(tmp_path, novel=6)
    for name in ("alice", "bob"):
        res = apps.site_agent("keys", "init", "--reviewer", name, "-w", s["ws"])
        assert res.exit_code == 0, res.output
    s["bundle"] = export_store(s["ws"], s["signer"]).path
    return s


def _events(ws) -> list[dict]:
    lines = (ws / "audit" / "audit.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


def _last(ws, event: str) -> dict:
    return next(e for e in reversed(_events(ws)) if e["event"] == event)


def _decide(apps, s, name: str, *extra: str, bundle=None):
    return apps.site_agent(
        "review", bundle or s["bundle"], "-w", s["ws"], "--reviewer", name, *extra
    )


def _pin(apps, s, coord, *reviewers: str) -> None:
    apps.pin(s["ws"], coord)
    for name in reviewers:
        pub = s["ws"] / "keys" / "reviewers" / f"{name}.pub"
        fp = json.loads(pub.with_suffix(".json").read_text())["fingerprint"]
        res = apps.coordinator(
            "trust", "add-reviewer", pub, "--site", "aurora", "--name", name,
            "--fingerprint", fp, "-w", coord,
        )  # fmt: skip
        assert res.exit_code == 0 and fp in res.output, res.output


# --------------------------------------------------------------------------- reviewer keys


def test_reviewer_key_is_the_reviewers_own_and_never_replaced(apps, site):
    ws = site["ws"]
    folder = ws / "keys" / "reviewers"
    assert {p.name for p in folder.iterdir()} == {
        f"{n}.{e}" for n in ("alice", "bob") for e in ("pem", "pub", "json")
    }
    assert (folder / "alice.pem").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (folder / "alice.pem").read_bytes()
    ident = json.loads((folder / "alice.json").read_text())
    assert ident["reviewer"] == "alice" and ident["site"] == "aurora"
    line = one_line_error(apps.site_agent("keys", "init", "--reviewer", "alice", "-w", ws), 3)
    assert "already has a key" in line
    for bad in ("../x", "Alice", "a", "a.b", "x" * 41):
        line = one_line_error(apps.site_agent("keys", "init", "--reviewer", bad, "-w", ws), 3)
        assert "not valid" in line
    both = apps.site_agent("keys", "init", "--reviewer", "carol", "--site", "aurora", "-w", ws)
    one_line_error(both, 3)
    one_line_error(apps.site_agent("keys", "init", "-w", ws), 3)  # neither --site nor --reviewer


def test_reviewer_key_needs_a_site_key_and_a_passphrase(apps, tmp_path):
    s = make_site(tmp_path, keys=False)
    line = one_line_error(apps.site_agent("keys", "init", "--reviewer", "alice", "-w", s["ws"]), 3)
    assert "no site key" in line
    s2 = make_site(tmp_path / "two")
    env = {"SITE_AGENT_REVIEWER_PASSPHRASE": None}
    res = apps.site_agent("keys", "init", "--reviewer", "alice", "-w", s2["ws"], env=env)
    assert "SITE_AGENT_REVIEWER_PASSPHRASE" in one_line_error(res, 3)
    assert not (s2["ws"] / "keys" / "reviewers" / "alice.pem").exists()


def test_site_key_rotation_keeps_the_reviewer_keys(apps, site):
    ws = site["ws"]
    before = (ws / "keys" / "reviewers" / "alice.pub").read_bytes()
    assert apps.site_agent("keys", "rotate", "-w", ws).exit_code == 0
    assert (ws / "keys" / "reviewers" / "alice.pub").read_bytes() == before
    assert _decide(apps, site, "alice", "--approve").exit_code == 0


# --------------------------------------------------------------------------- the flow


def test_held_export_is_released_once_enough_reviewers_approved(apps, tmp_path):
    s = make_site(tmp_path, novel=6)
    ws = s["ws"]
    for name in ("alice", "bob"):
        assert apps.site_agent("keys", "init", "--reviewer", name, "-w", ws).exit_code == 0
    (ws / "export-policy.toml").write_text("required_approvals = 2\n")
    out = tmp_path / "out" / "aurora.tar"
    res = apps.site_agent(
        "export", "synthetic", "--n", "2", "-w", ws, "--source", "store", "--tar",
        "--positive-fraction", "0.5", "--max-rounds", "0", "--out", out,
    )  # fmt: skip
    assert res.exit_code == EXIT_PRIVACY, res.output
    assert "0 of 2 approval(s) present, 2 needed" in res.output
    bundle = tmp_path / "out" / "aurora"  # the folder to review; no tar yet
    assert bundle.is_dir() and not out.exists()
    assert _last(ws, "export")["details"]["required_approvals"] == 2

    line = one_line_error(apps.site_agent("export", "pack", bundle, "-w", ws), EXIT_PRIVACY)
    assert "0 valid approval(s) of 2 required" in line and "alice, bob" in line
    res = apps.site_agent("review", bundle, "-w", ws, "--approve", "--reviewer", "alice", "--html")
    assert res.exit_code == 0, res.output
    assert "approved by alice" in res.output and "1 valid (alice)" in res.output
    record = json.loads((bundle / "approvals" / "alice.json").read_bytes())
    manifest = (bundle / "manifest.json").read_bytes()
    import hashlib

    assert record["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert record["decision"] == "approved" and record["reviewer"] == "alice"
    assert len((bundle / "approvals" / "alice.sig").read_bytes()) == 64
    # the bundle's own signature still verifies: approvals/ is the one folder outside it
    from site_agent.export.keys import public_keys

    verify_bundle(bundle, public_keys(ws))
    entry = _last(ws, "approval")["details"]
    assert entry["bundle_id"] == record["bundle_id"] and entry["reviewer"] == "alice"
    line = one_line_error(apps.site_agent("export", "pack", bundle, "-w", ws), EXIT_PRIVACY)
    assert "1 valid approval(s) of 2 required (alice)" in line and "from bob" in line

    assert (
        apps.site_agent("review", bundle, "-w", ws, "--approve", "--reviewer", "bob").exit_code == 0
    )
    res = apps.site_agent("export", "pack", bundle, "-w", ws)
    assert res.exit_code == 0, res.output
    assert out.is_file() and "2 valid (alice, bob), 2 required" in res.output
    release = _last(ws, "release")["details"]
    assert release["approvals"] == ["alice", "bob"] and release["tar"] == "aurora.tar"
    assert apps.site_agent("audit", "verify", "-w", ws).exit_code == 0
    events = [e["event"] for e in _events(ws)]
    assert events.count("release-refused") == 2 and events.count("approval") == 2

    # the coordinator pins both reviewers and requires two approvals
    coord = tmp_path / "coord"
    _pin(apps, s, coord, "alice", "bob")
    res = apps.coordinator("import", out, "-w", coord, "--require-approvals", "2")
    assert res.exit_code == 0, res.output
    assert "2 valid (alice, bob), 2 required" in res.output
    index = json.loads((coord / "imports" / "index.json").read_text())
    (entry,) = index["bundles"].values()
    assert entry["approvals"] == ["alice", "bob"] and entry["required_approvals"] == 2
    kept = coord / entry["folder"] / "approvals"
    assert {p.name for p in kept.iterdir()} == {"alice.json", "alice.sig", "bob.json", "bob.sig"}


def test_review_page_lists_the_approvals_and_their_audit_entries(apps, site, tmp_path):
    ws, bundle = site["ws"], site["bundle"]
    assert _decide(apps, site, "alice", "--approve").exit_code == 0
    # a copied-in approval from elsewhere shows as not valid, with why
    rec = json.loads((bundle / "approvals" / "alice.json").read_bytes())
    rec["manifest_sha256"] = "0" * 64
    (bundle / "approvals" / "bob.json").write_bytes(canonical_json(rec | {"reviewer": "bob"}))
    (bundle / "approvals" / "bob.sig").write_bytes(b"\0" * 64)
    from site_agent.export.keys import public_keys
    from site_agent.export.review import review_bundle

    rev = review_bundle(bundle, ws, public_keys(ws), ws / "rev", html=True)
    assert [(a.reviewer, a.status) for a in rev.approvals] == [
        ("alice", "valid"),
        ("bob", "invalid"),
    ]
    assert (
        "approvals: alice approved: valid; bob approved: invalid"
        in (rev.report_dir / "review.md").read_text()
    )
    # what a data-protection officer sees, in a real browser
    from tests.browser_support import assert_self_contained, render

    r = render(rev.html_path, tmp_path / "browser")
    status = r.facts["approvals-status"]
    assert status["visible"] and "1 valid approval(s) are present" in status["text"]
    assert "valid: signed by this reviewer's key over this manifest" in r.text
    assert "NOT VALID (invalid): made for another bundle" in r.text
    assert r.highlighted["bad"] == 1  # bob's row
    audit_part = r.text[r.text.index("Audit log entries for this bundle") :]
    assert "approval" in audit_part and "reviewer: alice" in audit_part
    assert_self_contained(r)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl on this machine")
def test_an_approval_verifies_without_this_toolkit(apps, site):
    assert _decide(apps, site, "alice", "--approve").exit_code == 0
    b = site["bundle"]
    res = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
         site["ws"] / "keys" / "reviewers" / "alice.pub", "-rawin",
         "-in", b / "approvals" / "alice.json", "-sigfile", b / "approvals" / "alice.sig"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0 and "Verified Successfully" in res.stdout, res.stdout + res.stderr


def test_rejection_stops_release_and_import(apps, site, tmp_path):
    ws = site["ws"]
    line = one_line_error(_decide(apps, site, "bob", "--reject"), EXIT_INPUT)
    assert "--reason" in line
    res = _decide(apps, site, "bob", "--reject", "--reason", "too few positives to be useful")
    assert res.exit_code == 0, res.output
    assert _last(ws, "approval")["details"]["decision"] == "rejected"
    line = one_line_error(apps.site_agent("export", "pack", site["bundle"], "-w", ws), 5)
    assert "rejected by reviewer bob" in line and "too few positives" in line
    coord = tmp_path / "coord"
    _pin(apps, site, coord, "bob")
    # a rejection by a pinned reviewer refuses the import even when none is required
    line = one_line_error(apps.coordinator("import", site["bundle"], "-w", coord), 4)
    assert "rejected by reviewer bob" in line


def test_import_names_whose_approval_is_missing(apps, site, tmp_path):
    assert _decide(apps, site, "alice", "--approve").exit_code == 0
    coord = tmp_path / "coord"
    _pin(apps, site, coord, "alice", "bob")
    res = apps.coordinator("import", site["bundle"], "-w", coord, "--require-approvals", "2")
    line = one_line_error(res, EXIT_INTEGRITY)
    assert "1 valid approval(s) of 2 required (alice); no valid approval from bob" in line
    # the coordinator's own policy file does the same without the option
    (coord / "import-policy.toml").write_text("required_approvals = 2\n")
    one_line_error(apps.coordinator("import", site["bundle"], "-w", coord), EXIT_INTEGRITY)
    res = apps.coordinator("import", site["bundle"], "-w", coord, "--require-approvals", "1")
    assert res.exit_code == 0, res.output


def test_policy_files_are_checked_before_any_work(apps, site, tmp_path):
    ws = site["ws"]
    (ws / "export-policy.toml").write_text("required_aprovals = 2\n")
    res = apps.site_agent("export", "synthetic", "--n", "2", "-w", ws, "--source", "store")
    assert "unknown setting" in one_line_error(res, 3)
    (ws / "export-policy.toml").write_text("required_approvals = -1\n")
    assert "whole number" in one_line_error(
        apps.site_agent("export", "pack", site["bundle"], "-w", ws), 3
    )
    coord = tmp_path / "coord"
    apps.pin(ws, coord)
    (coord / "import-policy.toml").write_text("required_approvals = [")
    one_line_error(apps.coordinator("import", site["bundle"], "-w", coord), 3)


# --------------------------------------------------------------------------- bad input


def test_tampered_approval_is_refused_at_site_and_coordinator(apps, site, tmp_path):
    ws, bundle = site["ws"], site["bundle"]
    assert _decide(apps, site, "alice", "--approve").exit_code == 0
    path = bundle / "approvals" / "alice.json"
    rec = json.loads(path.read_bytes())
    path.write_bytes(canonical_json(rec | {"time": "2030-01-01T00:00:00+00:00"}))
    line = one_line_error(apps.site_agent("export", "pack", bundle, "-w", ws), EXIT_INTEGRITY)
    assert "approvals/alice.json is not a valid approval" in line and "altered" in line
    refused = _last(ws, "release-refused")["details"]
    assert refused["bundle_id"] == rec["bundle_id"] and "altered" in refused["refused_because"]
    coord = tmp_path / "coord"
    _pin(apps, site, coord, "alice")
    line = one_line_error(apps.coordinator("import", bundle, "-w", coord), EXIT_INTEGRITY)
    assert "altered" in line
    # an edit that is not even canonical JSON is caught as such
    path.write_bytes(json.dumps(rec, indent=1).encode())
    line = one_line_error(apps.coordinator("import", bundle, "-w", coord), EXIT_INTEGRITY)
    assert "not in canonical form" in line
    assert not (coord / "imports").exists()


def test_approval_by_an_unpinned_reviewer(apps, site, tmp_path):
    assert _decide(apps, site, "alice", "--approve").exit_code == 0
    coord = tmp_path / "coord"
    _pin(apps, site, coord, "bob")  # alice is not pinned here
    res = apps.coordinator("import", site["bundle"], "-w", coord, "--require-approvals", "1")
    line = one_line_error(res, EXIT_INTEGRITY)
    assert "approved decision of alice cannot be checked" in line
    assert "no key is known here for reviewer alice" in line
    # a coordinator that takes no part in sign-off imports it and says what it did not check
    other = tmp_path / "other"
    apps.pin(site["ws"], other)
    res = apps.coordinator("import", site["bundle"], "-w", other)
    assert res.exit_code == 0, res.output
    assert "1 approval(s) not checked" in res.output
    # an approval signed by another key than the one pinned under that name
    third = tmp_path / "third"
    _pin(apps, site, third, "alice")
    (site["ws"] / "keys" / "reviewers" / "alice.pem").unlink()
    for suffix in ("pub", "json"):
        (site["ws"] / "keys" / "reviewers" / f"alice.{suffix}").unlink()
    assert apps.site_agent("keys", "init", "--reviewer", "alice", "-w", site["ws"]).exit_code == 0
    assert _decide(apps, site, "alice", "--approve").exit_code == 0
    line = one_line_error(apps.coordinator("import", site["bundle"], "-w", third), 4)
    assert "not the key known for alice" in line


def test_approval_copied_from_another_bundle_is_refused(apps, site, tmp_path):
    ws = site["ws"]
    other = export_store(ws, site["signer"], out=tmp_path / "other-bundle").path
    assert _decide(apps, site, "alice", "--approve", bundle=other).exit_code == 0
    shutil.copytree(other / "approvals", site["bundle"] / "approvals")
    line = one_line_error(apps.site_agent("export", "pack", site["bundle"], "-w", ws), 4)
    assert "made for another bundle" in line and "cannot be copied" in line
    # refused at the coordinator too, even one that pinned nobody and requires nothing
    coord = tmp_path / "coord"
    apps.pin(ws, coord)
    line = one_line_error(apps.coordinator("import", site["bundle"], "-w", coord), 4)
    assert "made for another bundle" in line


def test_wrong_reviewer_passphrase_is_refused_and_logged(apps, site):
    env = {"SITE_AGENT_REVIEWER_PASSPHRASE": "not the phrase"}
    res = apps.site_agent(
        "review", site["bundle"], "-w", site["ws"], "--approve", "--reviewer", "alice", env=env
    )
    assert "wrong passphrase for the key of reviewer alice" in one_line_error(res, EXIT_INPUT)
    refused = _last(site["ws"], "approval-refused")["details"]
    assert refused["reviewer"] == "alice" and refused["decision"] == "approved"
    assert (
        refused["bundle_id"]
        == json.loads((site["bundle"] / "manifest.json").read_bytes())["bundle_id"]
    )
    assert not (site["bundle"] / "approvals").exists()


def test_approving_a_bundle_that_fails_verification_is_refused_and_logged(apps, site):
    bundle = site["bundle"]
    labels = bundle / "payload" / "labels.csv"
    labels.write_text(labels.read_text() + "SYN-9999,1\n")
    res = _decide(apps, site, "alice", "--approve")
    assert "SHA-256 differs" in one_line_error(res, EXIT_INTEGRITY) or "size differs" in res.output
    refused = _last(site["ws"], "approval-refused")["details"]
    assert "differs from the manifest" in refused["refused_because"]
    assert not (bundle / "approvals").exists()
    # a stray file outside approvals/ still fails the bundle's own verification
    labels.write_text(labels.read_text().replace("SYN-9999,1\n", ""))
    (bundle / "approvals-notes.txt").write_text("hello")
    one_line_error(_decide(apps, site, "alice", "--approve"), EXIT_INTEGRITY)


def test_decisions_are_written_into_a_folder_only(apps, site, tmp_path):
    from shared.bundle.format import pack_tar

    tar = pack_tar(site["bundle"], tmp_path / "b.tar")
    line = one_line_error(_decide(apps, site, "alice", "--approve", bundle=tar), EXIT_INPUT)
    assert "is a file" in line
    assert _last(site["ws"], "approval-refused")["details"]["bundle"] == "b.tar"


def test_decision_options_fail_fast(apps, site):
    ws, b = site["ws"], site["bundle"]
    cases = [
        (["--reviewer", "alice"], "go with --approve or --reject"),
        (["--approve"], "needs --reviewer"),
        (["--approve", "--reject", "--reviewer", "alice"], "not both"),
        (["--approve", "--reviewer", "Alice"], "not valid"),
        (["--approve", "--reviewer", "carol"], "no key for reviewer carol"),
        (["--approve", "--reviewer", "alice", "--public-key", ws / "keys" / "site-key.pub"],
         "leave out --public-key"),
    ]  # fmt: skip
    before = len(_events(ws))
    for args, text in cases:
        line = one_line_error(apps.site_agent("review", b, "-w", ws, *args), EXIT_INPUT)
        assert text in line, (args, line)
    assert len(_events(ws)) == before  # refused before anything was verified or asked


def test_a_reason_with_a_source_identifier_never_leaves(apps, site):
    from tests.test_bundle_support import SOURCE_IDS

    res = _decide(apps, site, "bob", "--reject", "--reason", f"looks like {SOURCE_IDS[0]}")
    assert "source identifier" in one_line_error(res, EXIT_PRIVACY)
    assert not (site["bundle"] / "approvals").exists()


def test_trust_add_reviewer_bad_input(apps, site, tmp_path):
    coord = tmp_path / "coord"
    coord.mkdir()
    pub = site["ws"] / "keys" / "reviewers" / "alice.pub"
    add = ("trust", "add-reviewer", pub, "--site", "aurora", "-w", coord)
    line = one_line_error(apps.coordinator(*add, "--name", "alice"), 3)
    assert "not pinned" in line  # the site's key comes first
    apps.pin(site["ws"], coord)
    assert "--name" in one_line_error(apps.coordinator(*add), 3)
    assert "not valid" in one_line_error(apps.coordinator(*add, "--name", "../alice"), 3)
    res = apps.coordinator(*add, "--name", "alice", "--fingerprint", "ab" * 32)
    assert "not the one given" in one_line_error(res, 3)
    assert apps.coordinator(*add, "--name", "alice").exit_code == 0
    bob = site["ws"] / "keys" / "reviewers" / "bob.pub"
    res = apps.coordinator("trust", "add-reviewer", bob, "--site", "aurora", "--name", "alice",
                           "-w", coord)  # fmt: skip
    assert "already pinned to another key" in one_line_error(res, 3)
    listed = json.loads(apps.coordinator("trust", "list", "-w", coord).output)
    assert set(listed["aurora"]["reviewers"]) == {"alice"}
