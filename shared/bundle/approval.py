"""A privacy reviewer's signed decision on a bundle: ``approvals/NAME.json`` + ``NAME.sig``.

The one folder a bundle may hold beside what its manifest lists (``format.APPROVALS``): the
site's signature covers the payload, each approval covers the manifest, so approvals are added
after export without touching the site's signature. ``NAME.json`` is canonical JSON
(``format.canonical_json``)::

    {"format": "bpmri-approval", "format_version": 1,
     "bundle_id": "<32 hex>", "site": "aurora",
     "manifest_sha256": "<SHA-256 of manifest.json's exact bytes>",
     "decision": "approved" | "rejected", "reason": "<text>" (optional; always for a rejection),
     "time": "<ISO-8601 UTC>", "reviewer": "NAME", "key_fingerprint": "<SHA-256 of the raw key>"}

``NAME.sig`` is 64 raw bytes: Ed25519 over the exact bytes of ``NAME.json`` with the reviewer's
own key (check it without this toolkit: ``openssl pkeyutl -verify -pubin -inkey NAME.pub
-rawin -in approvals/NAME.json -sigfile approvals/NAME.sig``).

``check_approvals`` judges every file in the folder against the bundle it sits in and the
reviewer keys the caller knows (the site's own, or those a coordinator pinned): *valid*,
*unpinned* (no known key for that reviewer: it proves nothing here) or *invalid* (malformed,
altered, or made for another bundle: copied). It never raises for a bad approval; what to
refuse is the caller's policy (``approval_refusal``).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.atomic import atomic_write_bytes
from shared.bundle.anchor import parse_time
from shared.bundle.format import APPROVALS, canonical_json
from shared.bundle.signing import SIGNATURE_BYTES, fingerprint, verify_signature
from shared.errors import InputError

APPROVAL_FORMAT = "bpmri-approval"
APPROVAL_VERSION = 1
APPROVED, REJECTED = "approved", "rejected"
DECISIONS = (APPROVED, REJECTED)
VALID, UNPINNED, INVALID = "valid", "unpinned", "invalid"
MAX_APPROVAL_BYTES = 16 << 10
MAX_REASON = 1000
# A reviewer name is a file name in every bundle and at the coordinator: lower case (no two
# names that differ only in case on a case-insensitive disk), no dots, no path separators.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{1,39}$")
_HEX32, _HEX64 = re.compile(r"^[0-9a-f]{32}$"), re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {
    "format",
    "format_version",
    "bundle_id",
    "site",
    "manifest_sha256",
    "decision",
    "reason",
    "time",
    "reviewer",
    "key_fingerprint",
}


def check_reviewer_name(name: str | None) -> str:
    """``name`` if it is a valid reviewer name, else ``InputError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(
            f"reviewer name {name!r} is not valid",
            hint="use 2-40 lower-case letters, digits, '-' or '_' (e.g. jdoe): it becomes the "
            "file name of the reviewer's key and approvals",
        )
    return name


def check_reason(reason: str | None, decision: str) -> str | None:
    """The reason as recorded: required for a rejection, one line, bounded."""
    if reason is not None:
        reason = " ".join(reason.split())
    if decision == REJECTED and not reason:
        raise InputError("a rejection needs --reason TEXT (what must change)")
    if reason and len(reason) > MAX_REASON:
        raise InputError(f"the reason is longer than {MAX_REASON} characters")
    return reason or None


def approval_body(
    *,
    bundle_id: str,
    site: str,
    manifest_sha256: str,
    decision: str,
    time: str,
    reviewer: str,
    key_fingerprint: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """The record the reviewer's key signs (see module)."""
    if decision not in DECISIONS:
        raise InputError(f"unknown decision {decision!r}")
    body: dict[str, Any] = {
        "format": APPROVAL_FORMAT,
        "format_version": APPROVAL_VERSION,
        "bundle_id": bundle_id,
        "site": site,
        "manifest_sha256": manifest_sha256,
        "decision": decision,
        "time": time,
        "reviewer": check_reviewer_name(reviewer),
        "key_fingerprint": key_fingerprint,
    }
    if reason:
        body["reason"] = reason
    return body


def approval_paths(root: Path, reviewer: str) -> tuple[Path, Path]:
    folder = Path(root) / APPROVALS
    return folder / f"{reviewer}.json", folder / f"{reviewer}.sig"


def write_approval(root: Path, body: dict[str, Any], sign: Callable[[bytes], bytes]) -> bytes:
    """Write ``approvals/NAME.json`` and its signature into the bundle folder ``root``
    (replacing that reviewer's earlier decision); returns the record's bytes."""
    data = canonical_json(body)
    record, sig = approval_paths(root, body["reviewer"])
    # each file is replaced atomically; between the two a reader sees a mismatched pair and
    # calls it altered, never a decision the reviewer did not sign
    atomic_write_bytes(record, data)
    atomic_write_bytes(sig, sign(data))
    return data


@dataclass(frozen=True)
class ApprovalCheck:
    """One file (pair) in ``approvals/`` as judged against a bundle and known reviewer keys."""

    file: str  # approvals/NAME.json, or the stray file
    status: str  # VALID | UNPINNED | INVALID
    why: str = ""  # for UNPINNED and INVALID
    reviewer: str | None = None
    decision: str | None = None
    reason: str | None = None
    time: str | None = None
    key_fingerprint: str | None = None

    @property
    def valid(self) -> bool:
        return self.status == VALID

    def line(self) -> str:
        who = self.reviewer or self.file
        what = f"{who} {self.decision}" if self.decision else who
        return f"{what}: {self.status}" + (f" ({self.why})" if self.why else "")


def _read_small(path: Path, limit: int) -> bytes | str:
    """The bytes of a small regular file, or why it cannot be an approval file."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size > limit:
        return f"implausibly large ({st.st_size} bytes)"
    try:
        return path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def _parse(data: bytes, name: str) -> dict[str, Any] | str:
    """The record, or why it is not a well-formed approval of reviewer ``name``."""
    try:
        rec = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return "not JSON"
    if not isinstance(rec, dict) or rec.get("format") != APPROVAL_FORMAT:
        return "not an approval record"
    if canonical_json(rec) != data:
        return "not in canonical form (edited)"
    version = rec.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return "invalid format version"
    if version > APPROVAL_VERSION:
        return f"format version {version} is newer than this tool reads"
    if set(rec) - _FIELDS:
        return f"unknown field(s) {sorted(set(rec) - _FIELDS)}"
    if rec.get("reviewer") != name:
        return f"names reviewer {rec.get('reviewer')!r}, not {name!r} as its file name says"
    if rec.get("decision") not in DECISIONS:
        return f"unknown decision {rec.get('decision')!r}"
    if parse_time(rec.get("time")) is None:
        return "unreadable time"
    ok = (
        isinstance(rec.get("bundle_id"), str)
        and _HEX32.match(rec["bundle_id"])
        and isinstance(rec.get("site"), str)
        and isinstance(rec.get("manifest_sha256"), str)
        and _HEX64.match(rec["manifest_sha256"])
        and isinstance(rec.get("key_fingerprint"), str)
        and _HEX64.match(rec["key_fingerprint"])
        and isinstance(rec.get("reason", ""), str)
    )
    if not ok:
        return "a field is missing or malformed"
    if rec["decision"] == REJECTED and not rec.get("reason"):
        return "a rejection without a reason"
    return rec


def _check_one(
    root: Path,
    name: str,
    bundle: tuple[str, str, str],
    reviewers: Mapping[str, Ed25519PublicKey],
) -> ApprovalCheck:
    record, sig_path = approval_paths(root, name)
    rel = f"{APPROVALS}/{record.name}"
    data = _read_small(record, MAX_APPROVAL_BYTES)
    if isinstance(data, str):
        return ApprovalCheck(rel, INVALID, data, reviewer=name)
    if not sig_path.exists() and not sig_path.is_symlink():
        return ApprovalCheck(rel, INVALID, f"{name}.sig is missing", reviewer=name)
    sig = _read_small(sig_path, SIGNATURE_BYTES)
    if isinstance(sig, str):
        return ApprovalCheck(rel, INVALID, f"{name}.sig is {sig}", reviewer=name)
    rec = _parse(data, name)
    if isinstance(rec, str):
        return ApprovalCheck(rel, INVALID, rec, reviewer=name)
    seen = ApprovalCheck(
        rel,
        VALID,
        reviewer=name,
        decision=rec["decision"],
        reason=rec.get("reason"),
        time=rec["time"],
        key_fingerprint=rec["key_fingerprint"],
    )
    bundle_id, site, digest = bundle
    if (rec["bundle_id"], rec["site"], rec["manifest_sha256"]) != bundle:
        return _with(
            seen,
            INVALID,
            f"made for another bundle (bundle {rec['bundle_id'][:8]} of {rec['site']}, manifest "
            f"{rec['manifest_sha256'][:12]}...; this is bundle {bundle_id[:8]} of {site}, "
            f"manifest {digest[:12]}...): an approval cannot be copied to another bundle",
        )
    key = reviewers.get(name)
    if key is None:
        return _with(seen, UNPINNED, f"no key is known here for reviewer {name}")
    known = fingerprint(key)
    if known != rec["key_fingerprint"]:
        return _with(
            seen,
            UNPINNED,
            f"signed with key {rec['key_fingerprint'][:16]}..., not the key known for {name} "
            f"({known[:16]}...)",
        )
    if not verify_signature(key, sig, data):
        return _with(seen, INVALID, f"the signature does not verify with {name}'s key (altered)")
    return seen


def _with(check: ApprovalCheck, status: str, why: str) -> ApprovalCheck:
    return ApprovalCheck(
        check.file,
        status,
        why,
        check.reviewer,
        check.decision,
        check.reason,
        check.time,
        check.key_fingerprint,
    )


def check_approvals(
    root: Path,
    *,
    bundle_id: str,
    site: str,
    manifest_sha256: str,
    reviewers: Mapping[str, Ed25519PublicKey],
) -> list[ApprovalCheck]:
    """Judge every file in ``root/approvals`` (see module); [] when there is no such folder.
    ``reviewers``: {name: public key} of the reviewers whose signatures count here."""
    folder = Path(root) / APPROVALS
    if not folder.exists() and not folder.is_symlink():
        return []
    if folder.is_symlink() or not folder.is_dir():
        return [ApprovalCheck(APPROVALS, INVALID, "not a folder")]
    names: set[str] = set()
    out: list[ApprovalCheck] = []
    for entry in sorted(os.listdir(folder)):
        stem, dot, ext = entry.rpartition(".")
        if dot and ext in ("json", "sig") and _NAME.match(stem):
            names.add(stem)
        else:
            out.append(ApprovalCheck(f"{APPROVALS}/{entry}", INVALID, "not an approval file"))
    for name in sorted(names):
        if not (folder / f"{name}.json").exists() and not (folder / f"{name}.json").is_symlink():
            out.append(
                ApprovalCheck(
                    f"{APPROVALS}/{name}.sig", INVALID, "a signature without its record", name
                )
            )
            continue
        out.append(_check_one(root, name, (bundle_id, site, manifest_sha256), reviewers))
    return out


@dataclass(frozen=True)
class Refusal:
    """Why approvals stop a bundle: ``kind`` is invalid | unpinned | rejected | missing."""

    kind: str
    message: str


def approval_refusal(
    checks: list[ApprovalCheck],
    required: int,
    known: list[str],
    *,
    unpinned_refuse: bool,
    site: str,
) -> Refusal | None:
    """What stops the bundle, the most serious first: an invalid approval (altered, copied,
    malformed), an approval nobody here can check (when ``unpinned_refuse``), a valid
    rejection, or fewer than ``required`` valid approvals from the ``known`` reviewers."""
    bad = [c for c in checks if c.status == INVALID]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return Refusal("invalid", f"{bad[0].file} is not a valid approval: {bad[0].why}{more}")
    unpinned = [c for c in checks if c.status == UNPINNED]
    if unpinned and unpinned_refuse:
        c = unpinned[0]
        return Refusal(
            "unpinned",
            f"the {c.decision} decision of {c.reviewer} cannot be checked: {c.why}",
        )
    for c in checks:
        if c.valid and c.decision == REJECTED:
            return Refusal("rejected", f"rejected by reviewer {c.reviewer} ({c.time}): {c.reason}")
    approved = sorted({c.reviewer for c in checks if c.valid and c.decision == APPROVED})
    if len(approved) >= required:
        return None
    missing = sorted(set(known) - set(approved))
    said = f"{len(approved)} valid approval(s) of {required} required"
    said += f" ({', '.join(str(a) for a in approved)})" if approved else ""
    if missing:
        said += f"; no valid approval from {', '.join(missing)}"
    if len(known) < required:
        said += f"; only {len(known)} reviewer(s) of {site} known here"
    return Refusal("missing", said)


__all__ = [
    "APPROVALS",
    "APPROVED",
    "DECISIONS",
    "INVALID",
    "REJECTED",
    "UNPINNED",
    "VALID",
    "ApprovalCheck",
    "Refusal",
    "approval_body",
    "approval_paths",
    "approval_refusal",
    "check_approvals",
    "check_reason",
    "check_reviewer_name",
    "write_approval",
]
