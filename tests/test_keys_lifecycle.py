"""Site keys have a life cycle (issue 11, defect 4 and deliver 2): `keys init` never replaces a
key, `keys rotate` retires it with its validity period and a signed hand-over, a lost private
key is recovered by rotation, the audit log checks each entry against the key valid when it
was written, and the coordinator pins the new key from the hand-over."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from tests.audit_support import PASSPHRASE, Apps, export_store, make_site, one_line_error


@pytest.fixture
def apps(monkeypatch) -> Apps:
    return Apps(monkeypatch)


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path, novel=6)


def _fingerprint(ws) -> str:
    return json.loads((ws / "keys" / "site.json").read_text())["fingerprint"]


def _handover(ws):
    found = sorted((ws / "keys" / "handovers").glob("*.json"))
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- defect 4


def test_init_refuses_when_the_private_key_was_lost(apps, site):
    """Defect 4: after keys/site-key.pem is lost, `keys init` overwrote the public key and every
    past audit entry then failed as 'edited or forged'."""
    ws = site["ws"]
    export_store(ws, site["signer"])
    pub_before = (ws / "keys" / "site-key.pub").read_bytes()
    (ws / "keys" / "site-key.pem").unlink()
    line = one_line_error(apps.site_agent("keys", "init", "--site", "aurora", "-w", ws), 3)
    assert "already" in line
    res = apps.site_agent("keys", "init", "--site", "aurora", "-w", ws)
    assert "keys rotate" in res.output
    assert (ws / "keys" / "site-key.pub").read_bytes() == pub_before
    assert apps.site_agent("audit", "verify", "-w", ws).exit_code == 0
    # the missing-key hint no longer sends the user to `keys init`
    res = apps.site_agent("export", "synthetic", "--n", "1", "-w", ws, "--source", "store")
    line = one_line_error(res, 3)
    assert "keys rotate --lost-private-key" in res.output and "keys init`" not in res.output


def test_init_refuses_with_only_the_public_key_or_identity(apps, tmp_path):
    ws = tmp_path / "ws"
    (ws / "keys").mkdir(parents=True)
    (ws / "keys" / "site.json").write_text("{}")
    one_line_error(apps.site_agent("keys", "init", "--site", "aurora", "-w", ws), 3)


# --------------------------------------------------------------------------- rotation at the site


def test_rotate_retires_the_old_key_and_signs_the_handover_with_both(apps, site):
    from shared.bundle.handover import verify_handover
    from site_agent.export import audit

    ws = site["ws"]
    export_store(ws, site["signer"])
    old_fp = _fingerprint(ws)
    res = apps.site_agent("keys", "rotate", "-w", ws)
    assert res.exit_code == 0, res.output
    new_fp = _fingerprint(ws)
    assert new_fp != old_fp and new_fp in res.output
    retired = ws / "keys" / "retired"
    assert (retired / f"{old_fp}.pub").is_file()
    assert not list(retired.glob("*.pem"))  # a retired private key could backdate entries
    period = json.loads((retired / f"{old_fp}.json").read_text())
    assert period["not_before"] <= period["not_after"] and period["last_audit_seq"] == 1
    record = json.loads(_handover(ws).read_text())
    ho = verify_handover(record)
    assert ho.mode == "rotate" and ho.signed_by_old and ho.old_fingerprint == old_fp
    assert ho.new_fingerprint == new_fp and ho.old_not_after == period["not_after"]
    # old entries verify with the retired key, the rotation itself is logged with the new one
    rep = audit.verify(ws)
    assert rep.ok, rep.problems
    assert rep.events == {"export": 1, "key-rotated": 1}
    # the old signer can no longer append
    from shared.errors import IntegrityError

    with pytest.raises(IntegrityError, match="retired"):
        audit.append(ws, site["signer"], "note", {})
    # exports go on with the new key
    from site_agent.export.keys import load_signer

    new = load_signer(ws, PASSPHRASE)
    assert export_store(ws, new).manifest["key_fingerprint"] == new_fp
    assert apps.site_agent("audit", "verify", "-w", ws).exit_code == 0


def test_an_entry_signed_by_a_retired_key_after_its_retirement_fails(site):
    """Whoever kept a copy of the old private key cannot add entries after the hand-over."""
    from shared.bundle.format import canonical_json
    from site_agent.export import audit
    from site_agent.export.key_rotation import rotate_keys

    ws, old = site["ws"], site["signer"]
    export_store(ws, old)
    rotate_keys(ws, PASSPHRASE, PASSPHRASE)
    log = ws / "audit" / "audit.jsonl"
    last = json.loads(log.read_bytes().splitlines()[-1])
    import hashlib

    body = {
        "seq": last["seq"] + 1,
        "time": last["time"],
        "event": "export",
        "details": {"forged": True},
        "prev": hashlib.sha256(log.read_bytes().splitlines()[-1]).hexdigest(),
        "key": old.fingerprint,
    }
    entry = body | {"sig": base64.b64encode(old.sign(canonical_json(body))).decode()}
    with open(log, "ab") as fh:
        fh.write(canonical_json(entry) + b"\n")
    rep = audit.verify(ws)
    assert any("retired" in p for p in rep.problems), rep.problems


def test_lost_private_key_is_recovered_by_rotation(apps, site, tmp_path):
    ws = site["ws"]
    b1 = export_store(ws, site["signer"], tmp_path / "b1")
    old_fp = _fingerprint(ws)
    (ws / "keys" / "site-key.pem").unlink()
    res = apps.site_agent("keys", "rotate", "-w", ws)  # without the flag: says what to do
    assert "--lost-private-key" in one_line_error(res, 3) + res.output
    res = apps.site_agent("keys", "rotate", "--lost-private-key", "-w", ws)
    assert res.exit_code == 0, res.output
    assert "out of band" in res.output
    record = json.loads(_handover(ws).read_text())
    assert record["handover"]["mode"] == "lost-private-key"
    assert record["signatures"]["old"] is None and record["signatures"]["new"]
    res = apps.site_agent("audit", "verify", "-w", ws)
    assert res.exit_code == 0, res.output
    assert (ws / "keys" / "retired" / f"{old_fp}.pub").is_file()
    # the coordinator pins the new key only with its fingerprint confirmed out of band
    coord = tmp_path / "coord"
    shutil.copy(ws / "keys" / "retired" / f"{old_fp}.pub", tmp_path / "old.pub")
    assert (
        apps.coordinator(
            "trust", "add", tmp_path / "old.pub", "--site", "aurora", "-w", coord
        ).exit_code
        == 0
    )
    handover = _handover(ws)
    line = one_line_error(
        apps.coordinator("trust", "rotate", handover, "--site", "aurora", "-w", coord), 4
    )
    assert "not signed by the pinned key" in line
    new_fp = _fingerprint(ws)
    res = apps.coordinator(
        "trust", "rotate", handover, "--site", "aurora", "--fingerprint", "0" * 64, "-w", coord
    )
    one_line_error(res, 4)
    res = apps.coordinator(
        "trust", "rotate", handover, "--site", "aurora", "--fingerprint", new_fp, "-w", coord
    )
    assert res.exit_code == 0, res.output
    # the bundle signed before the loss still imports (the old key stays pinned as retired)
    assert apps.coordinator("import", b1.path, "-w", coord).exit_code == 0


# --------------------------------------------------------------------------- at the coordinator


def test_coordinator_pins_the_new_key_from_the_signed_handover(apps, site, tmp_path):
    from site_agent.export.keys import load_signer

    ws, coord = site["ws"], tmp_path / "coord"
    apps.pin(ws, coord)
    old_fp = _fingerprint(ws)
    b_old = export_store(ws, site["signer"], tmp_path / "b-old")
    assert apps.site_agent("keys", "rotate", "-w", ws).exit_code == 0
    new_fp = _fingerprint(ws)
    b_new = export_store(ws, load_signer(ws, PASSPHRASE), tmp_path / "b-new")
    # smaller defect: a bundle signed by a rotated key names the key it was signed with
    line = one_line_error(apps.coordinator("import", b_new.path, "-w", coord), 4)
    assert "signed by a key other than the one pinned for site aurora" in line
    assert new_fp in line
    res = apps.coordinator("trust", "rotate", _handover(ws), "--site", "aurora", "-w", coord)
    assert res.exit_code == 0, res.output
    trusted = json.loads((coord / "trust" / "trusted.json").read_text())["sites"]["aurora"]
    assert trusted["fingerprint"] == new_fp
    assert [r["fingerprint"] for r in trusted["retired"]] == [old_fp]
    assert apps.coordinator("import", b_new.path, "-w", coord).exit_code == 0
    assert apps.coordinator("import", b_old.path, "-w", coord).exit_code == 0  # by date


def test_coordinator_refuses_a_tampered_or_foreign_handover(apps, site, tmp_path):
    ws, coord = site["ws"], tmp_path / "coord"
    apps.pin(ws, coord)
    assert apps.site_agent("keys", "rotate", "-w", ws).exit_code == 0
    record = json.loads(_handover(ws).read_text())
    record["handover"]["old"]["not_after"] = "2999-01-01T00:00:00+00:00"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(record))
    one_line_error(apps.coordinator("trust", "rotate", bad, "--site", "aurora", "-w", coord), 4)
    # another site's (validly signed) hand-over does not move this site's pin
    other = make_site(tmp_path / "other", novel=0)["ws"]
    assert apps.site_agent("keys", "rotate", "-w", other).exit_code == 0
    res = apps.coordinator("trust", "rotate", _handover(other), "--site", "aurora", "-w", coord)
    one_line_error(res, 4)
    # bad input: a missing file, a file that is not a hand-over
    one_line_error(
        apps.coordinator(
            "trust", "rotate", tmp_path / "nope.json", "--site", "aurora", "-w", coord
        ),
        3,
    )
    (tmp_path / "junk.json").write_text("not json")
    one_line_error(
        apps.coordinator(
            "trust", "rotate", tmp_path / "junk.json", "--site", "aurora", "-w", coord
        ),
        3,
    )


def test_a_retired_key_signs_nothing_dated_after_its_retirement(site, tmp_path):
    """A bundle dated after the hand-over but signed with the old key is refused."""
    from coordinator.trust.importer import import_bundle
    from coordinator.trust.store import add_trusted, rotate_trusted
    from shared.errors import IntegrityError
    from site_agent.export.key_rotation import rotate_keys

    ws, old, coord = site["ws"], site["signer"], tmp_path / "coord"
    add_trusted(coord, "aurora", ws / "keys" / "site-key.pub")
    stolen = old  # a copy of the old private key kept somewhere
    rotate_keys(ws, PASSPHRASE, PASSPHRASE)
    rotate_trusted(coord, "aurora", _handover(ws))
    # rebuild a bundle by hand with the stolen key and a date after the rotation
    from shared.bundle.format import write_signed_manifest

    root = tmp_path / "forged"
    (root / "payload").mkdir(parents=True)
    (root / "payload" / "x.txt").write_text("x")
    manifest = {
        "bundle_id": "f" * 32,
        "kind": "weights",
        "site": "aurora",
        "key_fingerprint": stolen.fingerprint,
        "created": "2999-01-01T00:00:00+00:00",
    }
    write_signed_manifest(root, manifest, stolen.sign)
    with pytest.raises(IntegrityError, match="retired"):
        import_bundle(coord, root)


def test_import_names_the_other_key_of_a_pinned_site(apps, site, tmp_path):
    """Smaller defect: a bundle of a pinned site signed by another key gave the generic
    'altered or signed by another key' error without naming the key."""
    coord = tmp_path / "coord"
    apps.pin(site["ws"], coord)
    other = make_site(tmp_path / "other", novel=4)  # also calls itself aurora, another key
    res = export_store(other["ws"], other["signer"], tmp_path / "b")
    line = one_line_error(apps.coordinator("import", res.path, "-w", coord), 4)
    assert "signed by a key other than the one pinned for site aurora" in line
    assert other["signer"].fingerprint in line
    # a tampered manifest that names the pinned key keeps the tampering message
    (res.path / "manifest.json").write_bytes(
        (res.path / "manifest.json")
        .read_bytes()
        .replace(other["signer"].fingerprint.encode(), site["signer"].fingerprint.encode())
    )
    line = one_line_error(apps.coordinator("import", res.path, "-w", coord), 4)
    assert "altered" in line


def test_two_rotations_chain_back_to_the_first_key(site, tmp_path):
    """Each hand-over links one key to the next: after two rotations every entry still
    verifies against its own key, and the coordinator follows both hand-overs."""
    from coordinator.trust.importer import import_bundle
    from coordinator.trust.store import add_trusted, rotate_trusted
    from site_agent.export import audit
    from site_agent.export.key_rotation import rotate_keys
    from site_agent.export.keys import key_history, load_signer

    ws, coord = site["ws"], tmp_path / "coord"
    add_trusted(coord, "aurora", ws / "keys" / "site-key.pub")
    bundles = [export_store(ws, site["signer"], tmp_path / "b0")]
    for i in (1, 2):
        res = rotate_keys(ws, PASSPHRASE, PASSPHRASE)
        rotate_trusted(coord, "aurora", res.handover)
        bundles.append(export_store(ws, load_signer(ws, PASSPHRASE), tmp_path / f"b{i}"))
    history = key_history(ws)
    assert not history.problems and len(history.periods) == 3
    assert [p.last_seq for p in history.periods.values()] == [None, 3, 1]
    rep = audit.verify(ws)
    assert rep.ok, rep.problems
    assert rep.events == {"export": 3, "key-rotated": 2}
    for b in bundles:  # each bundle under the key that was valid when it was made
        import_bundle(coord, b.path)
    # a hand-over file removed from the site breaks the chain: the oldest entries lose their key
    first = sorted((ws / "keys" / "handovers").glob("*.json"))[0]
    first.unlink()
    assert not audit.verify(ws).ok
