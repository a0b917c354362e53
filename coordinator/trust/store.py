"""Pinned site keys: ``coord-ws/trust/trusted.json`` ({site: fingerprint, key file, added})
and ``coord-ws/trust/keys/<site>.pub``. A key is pinned out of band (the site reads its
fingerprint to the coordinator); only bundles signed by a pinned key are imported."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.atomic import atomic_write_json
from shared.bundle.signing import fingerprint, load_public_key
from shared.errors import InputError

TRUST = Path("trust")
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")


def _index_path(workspace: Path) -> Path:
    return Path(workspace) / TRUST / "trusted.json"


def trusted_sites(workspace: Path) -> dict[str, dict[str, str]]:
    path = _index_path(workspace)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["sites"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read the trust store {path}: {exc}") from None


def add_trusted(
    workspace: Path,
    site: str,
    public_key: Path,
    expect_fingerprint: str | None = None,
    replace: bool = False,
) -> dict[str, str]:
    """Pin ``public_key`` for ``site``; returns the entry (with the fingerprint to compare with
    what the site read out). A different key for a pinned site needs ``replace``."""
    if not _SITE_RE.match(site):
        raise InputError(f"site name {site!r} is not valid", hint="2-40 of a-z, 0-9 and '-'")
    key = load_public_key(public_key)
    fp = fingerprint(key)
    if expect_fingerprint and expect_fingerprint.lower().replace(":", "") != fp:
        raise InputError(
            f"fingerprint of {public_key} is {fp}, not the one given",
            hint="ask the site for its public key again; do not pin this one",
        )
    sites = trusted_sites(workspace)
    old = sites.get(site)
    if old and old["fingerprint"] != fp and not replace:
        raise InputError(
            f"site {site} is already pinned to another key ({old['fingerprint'][:16]}...)",
            hint="confirm the new key with the site, then add --replace",
        )
    folder = Path(workspace) / TRUST / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(public_key, folder / f"{site}.pub")
    entry = {
        "fingerprint": fp,
        "key_file": f"keys/{site}.pub",
        "added": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    sites[site] = entry
    atomic_write_json(_index_path(workspace), {"sites": sites})
    return entry


def trusted_keys(workspace: Path) -> dict[str, tuple[str, Ed25519PublicKey]]:
    """{fingerprint: (site, key)} of every pinned key (re-checked against its fingerprint)."""
    out: dict[str, tuple[str, Ed25519PublicKey]] = {}
    for site, entry in trusted_sites(workspace).items():
        key = load_public_key(Path(workspace) / TRUST / entry["key_file"])
        if fingerprint(key) != entry["fingerprint"]:
            raise InputError(f"the pinned key file of {site} no longer matches its fingerprint")
        out[entry["fingerprint"]] = (site, key)
    return out
