"""Keys, the signed bundle format (tampering in every way), tar packing, audit log, import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.bundle.format import (
    canonical_json,
    open_bundle,
    pack_tar,
    verify_bundle,
    write_signed_manifest,
)
from shared.bundle.signing import fingerprint
from shared.errors import InputError, IntegrityError
from site_agent.export import audit
from site_agent.export.keys import init_keys, load_signer, public_keys
from tests.test_bundle_support import PASSPHRASE


@pytest.fixture
def signer(tmp_path):
    return init_keys(tmp_path / "ws", "aurora", PASSPHRASE)


def test_keys_round_trip_and_wrong_passphrase(tmp_path, signer):
    ws = tmp_path / "ws"
    again = load_signer(ws, PASSPHRASE)
    assert again.fingerprint == signer.fingerprint == fingerprint(again.public_key)
    assert len(signer.fingerprint) == 64
    assert (ws / "keys" / "site-key.pem").stat().st_mode & 0o077 == 0
    assert b"ENCRYPTED PRIVATE KEY" in (ws / "keys" / "site-key.pem").read_bytes()
    with pytest.raises(InputError, match="wrong passphrase"):
        load_signer(ws, "not the passphrase")
    with pytest.raises(InputError, match="already exists"):
        init_keys(ws, "aurora", PASSPHRASE)
    with pytest.raises(InputError, match="no site key"):
        load_signer(tmp_path / "elsewhere", PASSPHRASE)


def _bundle(tmp_path: Path, signer) -> Path:
    root = tmp_path / "b"
    (root / "payload" / "cases").mkdir(parents=True)
    (root / "payload" / "labels.csv").write_text("case_id,cspca\nSYN-0001,1\n")
    (root / "payload" / "cases" / "a.bin").write_bytes(bytes(range(256)))
    write_signed_manifest(root, {"bundle_id": "0" * 32, "site": "aurora"}, signer.sign)
    return root


def _keys(signer):
    return {signer.fingerprint: signer.public_key}


def test_manifest_is_canonical_and_verifies(tmp_path, signer):
    root = _bundle(tmp_path, signer)
    data = (root / "manifest.json").read_bytes()
    assert canonical_json(json.loads(data)) == data
    vb = verify_bundle(root, _keys(signer))
    assert vb.key_fingerprint == signer.fingerprint
    assert {f["path"] for f in vb.manifest["files"]} == {
        "payload/labels.csv",
        "payload/cases/a.bin",
    }


def _flip_payload(root):
    p = root / "payload" / "cases" / "a.bin"
    b = bytearray(p.read_bytes())
    b[10] ^= 1
    p.write_bytes(bytes(b))


def _flip_manifest(root):
    p = root / "manifest.json"
    p.write_bytes(p.read_bytes().replace(b'"site":"aurora"', b'"site":"aurorb"'))


def _extra(root):
    (root / "payload" / "extra.txt").write_text("x")


def _missing(root):
    (root / "payload" / "labels.csv").unlink()


def _truncate(root):
    p = root / "payload" / "cases" / "a.bin"
    p.write_bytes(p.read_bytes()[:100])


def _unsigned(root):
    (root / "manifest.sig").unlink()


def _link(root):
    (root / "payload" / "cases" / "a.bin").unlink()
    (root / "payload" / "cases" / "a.bin").symlink_to("/etc/hostname")


@pytest.mark.parametrize(
    "tamper", [_flip_payload, _flip_manifest, _extra, _missing, _truncate, _unsigned, _link]
)
def test_tampering_is_refused(tmp_path, signer, tamper):
    root = _bundle(tmp_path, signer)
    tamper(root)
    with pytest.raises(IntegrityError):
        verify_bundle(root, _keys(signer))


def test_dotdot_path_in_a_signed_manifest_is_refused(tmp_path, signer):
    root = tmp_path / "b"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    manifest = {
        "format": "bpmri-bundle",
        "format_version": 1,
        "files": [{"path": "../outside.txt", "size": 6, "sha256": "0" * 64}],
    }
    data = canonical_json(manifest)
    (root / "manifest.json").write_bytes(data)
    (root / "manifest.sig").write_bytes(signer.sign(data))
    with pytest.raises(IntegrityError, match="unsafe path"):
        verify_bundle(root, _keys(signer))


def test_other_key_and_newer_format_are_refused(tmp_path, signer):
    root = _bundle(tmp_path, signer)
    other = init_keys(tmp_path / "other", "borealis", PASSPHRASE)
    with pytest.raises(IntegrityError, match="signature"):
        verify_bundle(root, _keys(other))
    manifest = json.loads((root / "manifest.json").read_bytes())
    manifest["format_version"] = 99
    data = canonical_json(manifest)
    (root / "manifest.json").write_bytes(data)
    (root / "manifest.sig").write_bytes(signer.sign(data))
    with pytest.raises(InputError, match="newer"):
        verify_bundle(root, _keys(signer))


def test_tar_round_trip_and_unsafe_tar(tmp_path, signer):
    import io
    import tarfile

    root = _bundle(tmp_path, signer)
    tar = pack_tar(root, tmp_path / "b.tar")
    with open_bundle(tar) as unpacked:
        verify_bundle(unpacked, _keys(signer))
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(IntegrityError), open_bundle(evil):
        pass
    assert not (tmp_path / "escape.txt").exists()


def test_audit_chain_detects_edits_deletions_and_insertions(tmp_path, signer):
    ws = tmp_path / "ws"
    for i in range(3):
        audit.append(ws, signer, "export", {"bundle_id": str(i)})
    keys = public_keys(ws)
    assert audit.verify(ws, keys).ok
    log = ws / "audit" / "audit.jsonl"
    lines = log.read_bytes().splitlines()
    edited = lines[1].replace(b'"bundle_id":"1"', b'"bundle_id":"9"')
    log.write_bytes(b"\n".join([lines[0], edited, lines[2]]) + b"\n")
    rep = audit.verify(ws, keys)
    assert not rep.ok and any("line 2" in p for p in rep.problems)
    log.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")  # middle deleted
    assert not audit.verify(ws, keys).ok
    log.write_bytes(b"\n".join(lines[:2]) + b"\n")  # last deleted: the signed head says so
    assert any("head.json" in p for p in audit.verify(ws, keys).problems)
    log.write_bytes(b"\n".join(lines) + b"\n")
    assert audit.verify(ws, keys).ok


def test_import_refuses_unpinned_key_and_unknown_site(tmp_path, signer):
    from coordinator.trust.importer import import_bundle
    from coordinator.trust.store import add_trusted

    root = _bundle(tmp_path, signer)
    coord = tmp_path / "coord"
    with pytest.raises(IntegrityError, match="no site key is pinned"):
        import_bundle(coord, root)
    other = init_keys(tmp_path / "other", "borealis", PASSPHRASE)
    add_trusted(coord, "borealis", tmp_path / "other" / "keys" / "site-key.pub")
    with pytest.raises(IntegrityError, match="signature"):
        import_bundle(coord, root)
    # the right key pinned under another site name: the manifest's site must match
    add_trusted(coord, "cascade", tmp_path / "ws" / "keys" / "site-key.pub")
    with pytest.raises(IntegrityError, match="claims site"):
        import_bundle(coord, root)
    assert not (coord / "imports").exists()
    with pytest.raises(InputError, match="not the one given"):
        add_trusted(coord, "aurora", tmp_path / "ws" / "keys" / "site-key.pub", other.fingerprint)
    shutil.rmtree(root)
