"""The site's Ed25519 signing key.

Layout (``WS/keys``, folder 0700)::

    site-key.pem   private key, PKCS#8 PEM encrypted with the passphrase (file 0600)
    site-key.pub   public key, PEM SubjectPublicKeyInfo: what the site sends the coordinator
    site.json      site id, fingerprint (SHA-256 of the raw public key), creation time

The passphrase comes from ``SITE_AGENT_KEY_PASSPHRASE`` or, in the CLI, a prompt; it is never
stored.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.bundle.signing import fingerprint, load_public_key, public_key_pem
from shared.errors import InputError

PASSPHRASE_ENV = "SITE_AGENT_KEY_PASSPHRASE"
KEY_DIR = Path("keys")
PRIVATE = "site-key.pem"
PUBLIC = "site-key.pub"
IDENTITY = "site.json"
MIN_PASSPHRASE = 8
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")


@dataclass
class Signer:
    """The loaded site key: signs manifests and audit entries."""

    site: str
    private_key: Ed25519PrivateKey
    fingerprint: str

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


def key_dir(workspace: Path) -> Path:
    return Path(workspace) / KEY_DIR


def check_site_id(site: str) -> str:
    if not _SITE_RE.match(site or ""):
        raise InputError(
            f"site id {site!r} is not valid",
            hint="use 2-40 lower-case letters, digits or '-' (e.g. aurora), never a hospital "
            "name you would not print on a bundle",
        )
    return site


def init_keys(workspace: Path, site: str, passphrase: str, force: bool = False) -> Signer:
    """Create the site key pair; refuses to replace an existing one unless ``force`` (then the
    old files move to ``keys/retired/<fingerprint>.*`` so old bundles and audit entries still
    verify)."""
    check_site_id(site)
    if len(passphrase) < MIN_PASSPHRASE:
        raise InputError(f"the key passphrase must have at least {MIN_PASSPHRASE} characters")
    folder = key_dir(workspace)
    if (folder / PRIVATE).exists():
        if not force:
            raise InputError(
                f"a site key already exists in {folder}",
                hint="keep it (the coordinator pinned it); --force retires it and makes a new one",
            )
        old = load_public_key(folder / PUBLIC)
        retired = folder / "retired"
        retired.mkdir(parents=True, exist_ok=True)
        fp_old = fingerprint(old)
        os.replace(folder / PUBLIC, retired / f"{fp_old}.pub")
        os.replace(folder / PRIVATE, retired / f"{fp_old}.pem")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
    )
    atomic_write_bytes(folder / PRIVATE, pem)
    os.chmod(folder / PRIVATE, 0o600)
    atomic_write_bytes(folder / PUBLIC, public_key_pem(key.public_key()))
    fp = fingerprint(key.public_key())
    atomic_write_json(
        folder / IDENTITY,
        {
            "site": site,
            "fingerprint": fp,
            "algorithm": "Ed25519",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return Signer(site, key, fp)


def site_identity(workspace: Path) -> dict[str, str]:
    path = key_dir(workspace) / IDENTITY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"no site key in {key_dir(workspace)}", hint="run `site-agent keys init` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def load_signer(workspace: Path, passphrase: str) -> Signer:
    """Decrypt the site key; a wrong passphrase or missing key is an ``InputError``."""
    ident = site_identity(workspace)
    path = key_dir(workspace) / PRIVATE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"site private key missing: {path}", hint="run `site-agent keys init`"
        ) from None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase.encode("utf-8"))
    except (ValueError, TypeError):
        raise InputError(
            f"wrong passphrase for the site key {path}",
            hint=f"set {PASSPHRASE_ENV} or type the passphrase given at `site-agent keys init`",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 private key")
    fp = fingerprint(key.public_key())
    if fp != ident.get("fingerprint"):
        raise InputError(f"{path} does not match the fingerprint recorded in {IDENTITY}")
    return Signer(ident["site"], key, fp)


def public_keys(workspace: Path) -> dict[str, Ed25519PublicKey]:
    """{fingerprint: key} for the current and retired site keys (to verify old signatures)."""
    folder = key_dir(workspace)
    keys: dict[str, Ed25519PublicKey] = {}
    paths = [folder / PUBLIC, *sorted((folder / "retired").glob("*.pub"))]
    for p in paths:
        if p.is_file():
            k = load_public_key(p)
            keys[fingerprint(k)] = k
    return keys


def passphrase_from_env() -> str | None:
    return os.environ.get(PASSPHRASE_ENV)
