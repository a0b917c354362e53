"""Pinned privacy reviewers: ``coord-ws/trust/reviewers.json`` ({site: {name: {fingerprint,
key_file, added}}}) and ``coord-ws/trust/reviewers/<site>/<name>.pub``.

A reviewer is pinned like a site key, out of band: the site sends the reviewer's public key
(``WS/keys/reviewers/NAME.pub``) and reads its fingerprint to the coordinator. Only approvals
signed by a reviewer pinned for the bundle's site count at import
(``coordinator.trust.approvals``). The site itself must be pinned first: a reviewer signs for
one site.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coordinator.trust.store import TRUST, check_site_name, load_confirmed_key, trusted_sites
from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.bundle.approval import check_reviewer_name
from shared.bundle.signing import fingerprint, load_public_key, public_key_pem
from shared.errors import InputError

INDEX = TRUST / "reviewers.json"


def _index(workspace: Path) -> dict[str, dict[str, dict[str, str]]]:
    path = Path(workspace) / INDEX
    if not path.is_file():
        return {}
    try:
        reviewers = json.loads(path.read_text())["reviewers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read the reviewer pins {path}: {exc}") from None
    if not isinstance(reviewers, dict):
        raise InputError(f"cannot read the reviewer pins {path}: not an object")
    return reviewers


def pinned_reviewer_entries(workspace: Path) -> dict[str, dict[str, dict[str, str]]]:
    """{site: {name: {fingerprint, key_file, added}}}."""
    return _index(workspace)


def add_reviewer(
    workspace: Path,
    site: str,
    name: str,
    public_key: Path,
    expect_fingerprint: str | None = None,
    replace: bool = False,
) -> dict[str, str]:
    """Pin reviewer ``name`` of ``site`` to ``public_key``; returns the entry (its fingerprint
    to compare with what the site read out). Another key for a pinned name needs
    ``replace``."""
    check_site_name(site)
    check_reviewer_name(name)
    key, fp = load_confirmed_key(public_key, expect_fingerprint, "the reviewer's public key")
    if site not in trusted_sites(workspace):
        raise InputError(
            f"site {site} is not pinned: a reviewer signs for a pinned site",
            hint=f"pin the site key first: coordinator trust add SITE-KEY.pub --site {site}",
        )
    index = _index(workspace)
    old = index.get(site, {}).get(name)
    if old and old.get("fingerprint") != fp and not replace:
        raise InputError(
            f"reviewer {name} of {site} is already pinned to another key "
            f"({str(old.get('fingerprint'))[:16]}...)",
            hint="confirm the new key with the site, then add --replace (approvals signed by "
            "the old key stop counting)",
        )
    key_file = f"reviewers/{site}/{name}.pub"
    atomic_write_bytes(Path(workspace) / TRUST / key_file, public_key_pem(key))
    entry = {
        "fingerprint": fp,
        "key_file": key_file,
        "added": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    index.setdefault(site, {})[name] = entry
    atomic_write_json(Path(workspace) / INDEX, {"reviewers": index})
    return entry


def pinned_reviewers(workspace: Path, site: str) -> dict[str, Ed25519PublicKey]:
    """{name: key} of the reviewers pinned for ``site`` (each re-checked against its
    fingerprint: a key file changed since pinning is refused)."""
    out: dict[str, Ed25519PublicKey] = {}
    for name, entry in _index(workspace).get(site, {}).items():
        key = load_public_key(Path(workspace) / TRUST / entry["key_file"])
        if fingerprint(key) != entry.get("fingerprint"):
            raise InputError(
                f"the pinned key file of reviewer {name} of {site} no longer matches its "
                "fingerprint",
                hint="pin the reviewer again with `coordinator trust add-reviewer ... --replace`",
            )
        out[name] = key
    return out
