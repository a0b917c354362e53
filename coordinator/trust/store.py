"""Pinned site keys: ``coord-ws/trust/trusted.json`` ({site: fingerprint, key file, added,
retired}) and ``coord-ws/trust/keys/<site>*.pub``. A key is pinned out of band (the site reads
its fingerprint to the coordinator); only bundles signed by a pinned key are imported.

A site's key changes through its signed hand-over (``rotate_trusted``, ``coordinator trust
rotate``): accepted when the currently pinned key signed it, or, for a site that lost its
private key, when the new fingerprint was confirmed out of band. The old key stays pinned as
*retired* with the end of its validity, so bundles it signed before then still import; a
bundle dated later is refused. ``trusted.json`` is rewritten last, in one atomic write: it is
the commit point of every change.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.bundle.signing import fingerprint, load_public_key, public_key_pem
from shared.errors import InputError, IntegrityError

TRUST = Path("trust")
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")


def check_site_name(site: str) -> str:
    if not _SITE_RE.match(site or ""):
        raise InputError(f"site name {site!r} is not valid", hint="2-40 of a-z, 0-9 and '-'")
    return site


def load_confirmed_key(
    public_key: Path, expect_fingerprint: str | None, whose: str
) -> tuple[Ed25519PublicKey, str]:
    """(key, fingerprint) of ``public_key``; ``InputError`` when it is unreadable or its
    fingerprint is not the one read out (``expect_fingerprint``, colons allowed)."""
    key = load_public_key(public_key)
    fp = fingerprint(key)
    if expect_fingerprint and expect_fingerprint.lower().replace(":", "") != fp:
        raise InputError(
            f"fingerprint of {public_key} is {fp}, not the one given",
            hint=f"ask the site for {whose} again; do not pin this one",
        )
    return key, fp


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
    check_site_name(site)
    fp = load_confirmed_key(public_key, expect_fingerprint, "its public key")[1]
    sites = trusted_sites(workspace)
    old = sites.get(site)
    if old and old["fingerprint"] != fp and not replace:
        raise InputError(
            f"site {site} is already pinned to another key ({old['fingerprint'][:16]}...)",
            hint="if the site rotated its key, pin the new one from its signed hand-over "
            "(coordinator trust rotate HANDOVER --site SITE); else confirm the new key with "
            "the site and add --replace",
        )
    now = _now()
    folder = Path(workspace) / TRUST / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    if old and old["fingerprint"] != fp:
        # a replaced key stays pinned as retired from now on: what it signed before verifies
        key_file = f"keys/{site}-{fp[:16]}.pub"
        retired = _retire(old, now, None, "replaced (trust add --replace)")
    else:
        key_file = old["key_file"] if old else f"keys/{site}.pub"
        retired = list(old.get("retired", [])) if old else []
    shutil.copyfile(public_key, Path(workspace) / TRUST / key_file)
    entry: dict[str, Any] = {"fingerprint": fp, "key_file": key_file, "added": now}
    if retired:
        entry["retired"] = retired
    sites[site] = entry
    atomic_write_json(_index_path(workspace), {"sites": sites})
    return entry


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _retire(
    entry: dict[str, Any], not_after: str, not_before: str | None, how: str
) -> list[dict[str, Any]]:
    """The retired list of ``entry`` with its current key added (valid until ``not_after``;
    ``not_before`` only where the site's hand-over states it)."""
    old = {
        "fingerprint": entry["fingerprint"],
        "key_file": entry["key_file"],
        "not_after": not_after,
        "retired": _now(),
        "how": how,
    }
    if not_before:
        old["not_before"] = not_before
    return [*entry.get("retired", []), old]


def rotate_trusted(
    workspace: Path, site: str, handover: Path, expect_fingerprint: str | None = None
) -> dict[str, Any]:
    """Pin the new key of ``site`` from its signed hand-over (see module). A hand-over signed
    by the new key only (the site lost its private key) needs ``expect_fingerprint``, the new
    fingerprint as the site read it out. Raises ``IntegrityError`` for anything that does not
    verify, ``InputError`` for an unreadable file or an unpinned site."""
    from coordinator.trust.anchors import check_head, record_head
    from shared.bundle.handover import read_handover, verify_handover

    check_site_name(site)
    record = read_handover(handover)
    sites = trusted_sites(workspace)
    cur = sites.get(site)
    if cur is None:
        raise InputError(
            f"no key is pinned for site {site}: a hand-over can only move an existing pin",
            hint="pin the key out of band: coordinator trust add SITE-KEY.pub --site " + site,
        )
    ho = verify_handover(record)
    if ho.site != site:
        raise IntegrityError(f"the hand-over is for site {ho.site!r}, not {site}")
    if ho.new_fingerprint == cur["fingerprint"]:
        raise InputError(f"the hand-over's new key is already pinned for {site}")
    if ho.old_fingerprint != cur["fingerprint"]:
        raise IntegrityError(
            f"the hand-over passes on key {ho.old_fingerprint[:16]}..., but {site} is pinned "
            f"to {cur['fingerprint'][:16]}...: it is not signed by the pinned key"
        )
    given = (expect_fingerprint or "").lower().replace(":", "")
    if given and given != ho.new_fingerprint:
        raise IntegrityError(
            f"the hand-over's new key has fingerprint {ho.new_fingerprint}, not the one given",
            hint="ask the site for its fingerprint again; nothing was pinned",
        )
    if not ho.signed_by_old and not given:
        raise IntegrityError(
            f"the hand-over of {site} is not signed by the pinned key (the site lost its "
            f"private key); its new key {ho.new_fingerprint} proves nothing by itself",
            hint="confirm that fingerprint with the site out of band, then rerun with "
            "--fingerprint FINGERPRINT",
        )
    how = "rotated (hand-over signed by the old key)"
    if not ho.signed_by_old:
        how = "rotated (lost private key; new fingerprint confirmed out of band)"
    source = f"key hand-over of {ho.time}"
    check_head(workspace, site, ho.audit_head, ho.time, source)
    key_file = f"keys/{site}-{ho.new_fingerprint[:16]}.pub"
    atomic_write_bytes(Path(workspace) / TRUST / key_file, public_key_pem(ho.new_key))
    entry: dict[str, Any] = {
        "fingerprint": ho.new_fingerprint,
        "key_file": key_file,
        "added": _now(),
        "retired": _retire(cur, ho.old_not_after, ho.old_not_before, how),
    }
    sites[site] = entry
    atomic_write_json(_index_path(workspace), {"sites": sites})
    record_head(workspace, site, ho.audit_head, ho.time, source)
    return entry


@dataclass(frozen=True)
class PinnedKey:
    """A pinned key: the site's current one (``not_after`` None) or a retired one."""

    site: str
    fingerprint: str
    key: Ed25519PublicKey
    not_after: str | None = None


def _load_pinned(workspace: Path, site: str, entry: dict[str, Any]) -> Ed25519PublicKey:
    key = load_public_key(Path(workspace) / TRUST / entry["key_file"])
    if fingerprint(key) != entry["fingerprint"]:
        raise InputError(f"the pinned key file of {site} no longer matches its fingerprint")
    return key


def pinned_keys(workspace: Path) -> dict[str, PinnedKey]:
    """{fingerprint: PinnedKey} of every pinned key, retired ones included (a current pin
    wins when one key is both)."""
    out: dict[str, PinnedKey] = {}
    for site, entry in trusted_sites(workspace).items():
        for old in entry.get("retired", []):
            out.setdefault(
                old["fingerprint"],
                PinnedKey(
                    site, old["fingerprint"], _load_pinned(workspace, site, old), old["not_after"]
                ),
            )
    for site, entry in trusted_sites(workspace).items():
        out[entry["fingerprint"]] = PinnedKey(
            site, entry["fingerprint"], _load_pinned(workspace, site, entry)
        )
    return out


def trusted_keys(workspace: Path) -> dict[str, tuple[str, Ed25519PublicKey]]:
    """{fingerprint: (site, key)} of every currently pinned key (re-checked against its
    fingerprint)."""
    return {fp: (p.site, p.key) for fp, p in pinned_keys(workspace).items() if p.not_after is None}
