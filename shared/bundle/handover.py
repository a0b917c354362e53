"""The signed key hand-over: how a site passes from one signing key to the next.

``site-agent keys rotate`` writes one JSON file::

    {"handover": {format, format_version, site, mode, time,
                  old: {fingerprint, public_key, not_before, not_after},
                  new: {fingerprint, public_key, not_before},
                  audit_head: {seq, hash}},
     "signatures": {"old": base64 | null, "new": base64}}

Both signatures are Ed25519 over the canonical JSON of ``handover``. ``mode`` is ``rotate``
(the old private key signed: whoever trusts the old key may trust the new one) or
``lost-private-key`` (only the new key signed, which proves nothing about who holds it: the
coordinator must confirm the new fingerprint out of band). ``old.not_after`` closes the old
key's validity and ``audit_head`` is the audit log's head at the hand-over, so the old key's
last valid entry is ``audit_head.seq``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.bundle.anchor import AuditHead, parse_time
from shared.bundle.format import canonical_json
from shared.bundle.signing import fingerprint, public_key_pem, verify_signature
from shared.errors import InputError, IntegrityError

HANDOVER_FORMAT = "bpmri-key-handover"
HANDOVER_VERSION = 1
MODE_ROTATE = "rotate"
MODE_LOST = "lost-private-key"
MAX_HANDOVER_BYTES = 64 << 10


@dataclass(frozen=True)
class Handover:
    """A hand-over whose signatures checked out (``signed_by_old`` False: new key only)."""

    site: str
    mode: str
    time: str
    old_fingerprint: str
    old_key: Ed25519PublicKey
    old_not_before: str
    old_not_after: str
    new_fingerprint: str
    new_key: Ed25519PublicKey
    audit_head: AuditHead
    signed_by_old: bool


def handover_body(
    site: str,
    mode: str,
    time: str,
    old_key: Ed25519PublicKey,
    old_not_before: str,
    new_key: Ed25519PublicKey,
    audit_head: AuditHead,
) -> dict[str, Any]:
    """The record both keys sign; the old key's validity ends where the new one's begins."""
    return {
        "format": HANDOVER_FORMAT,
        "format_version": HANDOVER_VERSION,
        "site": site,
        "mode": mode,
        "time": time,
        "old": {
            "fingerprint": fingerprint(old_key),
            "public_key": public_key_pem(old_key).decode("ascii"),
            "not_before": old_not_before,
            "not_after": time,
        },
        "new": {
            "fingerprint": fingerprint(new_key),
            "public_key": public_key_pem(new_key).decode("ascii"),
            "not_before": time,
        },
        "audit_head": audit_head.to_json(),
    }


def sign_handover(
    body: dict[str, Any],
    sign_new: Callable[[bytes], bytes],
    sign_old: Callable[[bytes], bytes] | None,
) -> dict[str, Any]:
    data = canonical_json(body)
    return {
        "handover": body,
        "signatures": {
            "old": base64.b64encode(sign_old(data)).decode() if sign_old else None,
            "new": base64.b64encode(sign_new(data)).decode(),
        },
    }


def read_handover(path: Path) -> dict[str, Any]:
    """The JSON of a hand-over file; a missing, unreadable or foreign file is an
    ``InputError`` (what it says is checked by ``verify_handover``)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_HANDOVER_BYTES:
            raise InputError(f"{path} is too large to be a key hand-over")
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"key hand-over not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a key hand-over file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError):
        raise InputError(
            f"{path} is not a key hand-over (not JSON)",
            hint="give the keys/handovers/*.json file written by `site-agent keys rotate`",
        ) from None
    body = record.get("handover") if isinstance(record, dict) else None
    if not isinstance(body, dict) or body.get("format") != HANDOVER_FORMAT:
        raise InputError(
            f"{path} is not a key hand-over",
            hint="give the keys/handovers/*.json file written by `site-agent keys rotate`",
        )
    return record


def _key(obj: Any, what: str) -> tuple[str, Ed25519PublicKey]:
    if not isinstance(obj, dict) or not isinstance(obj.get("public_key"), str):
        raise IntegrityError(f"key hand-over: {what} key is missing")
    try:
        key = serialization.load_pem_public_key(obj["public_key"].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise IntegrityError(f"key hand-over: the {what} key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityError(f"key hand-over: the {what} key is not an Ed25519 key")
    fp = fingerprint(key)
    if obj.get("fingerprint") != fp:
        raise IntegrityError(f"key hand-over: the {what} key does not match its fingerprint")
    return fp, key


def _signature(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"key hand-over: the {what} key's signature is not base64") from None


def verify_handover(record: dict[str, Any]) -> Handover:
    """Check the structure, both keys against their fingerprints and every signature present;
    raise ``IntegrityError`` otherwise. Whether to trust the result is the caller's call."""
    if not isinstance(record, dict):
        raise IntegrityError("key hand-over is not a JSON object")
    body, sigs = record.get("handover"), record.get("signatures")
    if not isinstance(body, dict) or not isinstance(sigs, dict):
        raise IntegrityError("key hand-over has no body or no signatures")
    if body.get("format") != HANDOVER_FORMAT or body.get("format_version") != HANDOVER_VERSION:
        raise IntegrityError(f"not a version {HANDOVER_VERSION} key hand-over")
    old_fp, old_key = _key(body.get("old"), "old")
    new_fp, new_key = _key(body.get("new"), "new")
    if old_fp == new_fp:
        raise IntegrityError("key hand-over passes a key to itself")
    mode, time = body.get("mode"), body.get("time")
    old, new = body["old"], body["new"]
    times = [parse_time(v) for v in (old.get("not_before"), time, old.get("not_after"))]
    if None in times or parse_time(new.get("not_before")) is None:
        raise IntegrityError("key hand-over has an unreadable validity period")
    if not (times[0] <= times[1] and old["not_after"] == time == new["not_before"]):
        raise IntegrityError("key hand-over: the old key's period does not end at the hand-over")
    head = AuditHead.parse(body.get("audit_head"), "key hand-over audit head")
    data = canonical_json(body)
    if not verify_signature(new_key, _signature(sigs.get("new"), "new"), data):
        raise IntegrityError("key hand-over: the new key's signature does not verify (altered)")
    if mode == MODE_ROTATE:
        if sigs.get("old") is None:
            raise IntegrityError("key hand-over says rotate but the old key did not sign it")
        if not verify_signature(old_key, _signature(sigs["old"], "old"), data):
            raise IntegrityError(
                "key hand-over: the old key's signature does not verify (altered or forged)"
            )
    elif mode == MODE_LOST:
        if sigs.get("old") is not None:
            raise IntegrityError(
                "key hand-over says the private key was lost but carries its signature"
            )
    else:
        raise IntegrityError(f"key hand-over has an unknown mode {mode!r}")
    site = body.get("site")
    if not isinstance(site, str) or not site:
        raise IntegrityError("key hand-over names no site")
    return Handover(
        site=site,
        mode=mode,
        time=time,
        old_fingerprint=old_fp,
        old_key=old_key,
        old_not_before=old["not_before"],
        old_not_after=old["not_after"],
        new_fingerprint=new_fp,
        new_key=new_key,
        audit_head=head,
        signed_by_old=mode == MODE_ROTATE,
    )
