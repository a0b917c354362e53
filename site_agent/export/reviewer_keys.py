"""A privacy reviewer's own Ed25519 key, kept at the site beside the site key.

Layout (``WS/keys/reviewers``, folder 0700)::

    NAME.pem    private key, PKCS#8 PEM encrypted with the reviewer's passphrase (file 0600)
    NAME.pub    public key (PEM): what the coordinator pins with ``trust add-reviewer``
    NAME.json   reviewer name, site, fingerprint, creation time

The passphrase is the reviewer's, not the site key's: it comes from
``SITE_AGENT_REVIEWER_PASSPHRASE`` or, in the CLI, a prompt, and is never stored. Like the site
key, a reviewer key is never replaced in place: the approvals it signed would stop verifying.
The public keys here are the ones the site itself counts approvals with (``export pack``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.bundle.approval import check_reviewer_name
from shared.bundle.signing import fingerprint, load_public_key, public_key_pem
from shared.errors import InputError, ToolkitError
from site_agent.export.keys import MIN_PASSPHRASE, REVIEWERS, encrypted_pem, key_dir, site_identity

REVIEWER_PASSPHRASE_ENV = "SITE_AGENT_REVIEWER_PASSPHRASE"


@dataclass
class ReviewerKey:
    """A reviewer's decrypted key: signs approvals and rejections."""

    name: str
    private_key: Ed25519PrivateKey
    fingerprint: str

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


def reviewer_dir(workspace: Path) -> Path:
    return key_dir(workspace) / REVIEWERS


def reviewer_files(workspace: Path, name: str) -> tuple[Path, Path, Path]:
    """(private, public, identity) paths of reviewer ``name`` (checked to be a safe name)."""
    folder = reviewer_dir(workspace)
    check_reviewer_name(name)
    return folder / f"{name}.pem", folder / f"{name}.pub", folder / f"{name}.json"


def check_no_reviewer_key(workspace: Path, name: str) -> None:
    present = [p.name for p in reviewer_files(workspace, name) if p.exists()]
    if present:
        raise InputError(
            f"reviewer {name} already has a key in {reviewer_dir(workspace)} "
            f"({', '.join(present)})",
            hint="a new key in its place would make every approval it signed unverifiable; "
            "choose another reviewer name",
        )


def init_reviewer_key(workspace: Path, name: str, passphrase: str) -> ReviewerKey:
    """Create reviewer ``name``'s key pair in a site workspace (which must have a site key)."""
    ident = site_identity(workspace)  # a reviewer signs for one site: its key must exist
    check_no_reviewer_key(workspace, name)
    if len(passphrase) < MIN_PASSPHRASE:
        raise InputError(f"the key passphrase must have at least {MIN_PASSPHRASE} characters")
    private, public, identity = reviewer_files(workspace, name)
    private.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(private.parent, 0o700)
    key = Ed25519PrivateKey.generate()
    atomic_write_bytes(private, encrypted_pem(key, passphrase))
    os.chmod(private, 0o600)
    atomic_write_bytes(public, public_key_pem(key.public_key()))
    fp = fingerprint(key.public_key())
    atomic_write_json(
        identity,
        {
            "reviewer": name,
            "site": ident.get("site"),
            "fingerprint": fp,
            "algorithm": "Ed25519",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return ReviewerKey(name, key, fp)


def check_reviewer_exists(workspace: Path, name: str) -> None:
    """``InputError`` when reviewer ``name`` has no key here (said before any prompt)."""
    private, _, _ = reviewer_files(workspace, name)
    if not private.is_file():
        raise InputError(
            f"no key for reviewer {name} in {reviewer_dir(workspace)}",
            hint=f"create it with `site-agent keys init --reviewer {name}`",
        )


def load_reviewer_key(workspace: Path, name: str, passphrase: str) -> ReviewerKey:
    """Decrypt reviewer ``name``'s key; a missing key or a wrong passphrase is an
    ``InputError``."""
    check_reviewer_exists(workspace, name)
    private, public, _ = reviewer_files(workspace, name)
    try:
        key = serialization.load_pem_private_key(
            private.read_bytes(), password=passphrase.encode("utf-8")
        )
    except (ValueError, TypeError):
        raise InputError(
            f"wrong passphrase for the key of reviewer {name}",
            hint=f"set {REVIEWER_PASSPHRASE_ENV} or type the passphrase given at "
            f"`site-agent keys init --reviewer {name}`",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{private} is not an Ed25519 private key")
    fp = fingerprint(key.public_key())
    if public.is_file() and fingerprint(load_public_key(public)) != fp:
        raise InputError(f"{public} does not match the private key of reviewer {name}")
    return ReviewerKey(name, key, fp)


def reviewer_public_keys(workspace: Path) -> dict[str, Ed25519PublicKey]:
    """{name: public key} of every reviewer whose public key matches its recorded
    fingerprint (a key file that does not is left out: its approvals do not count)."""
    out: dict[str, Ed25519PublicKey] = {}
    for pub in sorted(reviewer_dir(workspace).glob("*.pub")):
        try:
            name = check_reviewer_name(pub.stem)
            key = load_public_key(pub)
            ident = json.loads((pub.parent / f"{name}.json").read_text())
        except (ToolkitError, OSError, ValueError):
            continue
        if isinstance(ident, dict) and ident.get("fingerprint") == fingerprint(key):
            out[name] = key
    return out


def reviewer_passphrase_from_env() -> str | None:
    return os.environ.get(REVIEWER_PASSPHRASE_ENV)
