"""The audit log: one signed, hash-chained JSON line per export or refused export.

``WS/audit/audit.jsonl``: each line is canonical JSON of ``{seq, time, event, details, prev,
key, sig}`` where ``prev`` is the SHA-256 of the previous line's bytes (64 zeros for the first),
``key`` the signing key's fingerprint and ``sig`` the base64 Ed25519 signature over the
canonical JSON of the entry without ``sig``. ``WS/audit/head.json`` holds the signed last
sequence number and line hash, so deleting the last entries is caught as well. Editing,
inserting or deleting a line breaks a signature, the chain or the head.

Each entry must be signed by the key valid when it was written (``keys.key_history``: in time
and in log position; a rotated key signs nothing after its hand-over). And the log is
anchored outside itself: every bundle manifest (``audit/manifests/``), every federation reply
the site journals (``federation/replies.jsonl``) and every key hand-over records the head the
log had then (``shared.bundle.anchor``), so a log that was deleted, or cut back and rebuilt,
is caught by the records it no longer matches.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.atomic import atomic_write_bytes
from shared.bundle.anchor import AUDIT_HEAD_FIELD, GENESIS, AuditHead
from shared.bundle.format import canonical_json
from shared.bundle.signing import verify_signature
from shared.errors import InputError, IntegrityError
from site_agent.export.keys import IDENTITY, KeyPeriod, Signer, current_fingerprint, key_dir

LOG = Path("audit") / "audit.jsonl"
HEAD = Path("audit") / "head.json"
MANIFESTS = Path("audit") / "manifests"
REPLIES = Path("federation") / "replies.jsonl"  # the site's own record of federation replies


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@contextlib.contextmanager
def locked(workspace: Path) -> Iterator[None]:
    """Hold the log's lock (one writer at a time; ``flock`` is not re-entrant: call the
    ``*_unlocked`` functions inside)."""
    lock = Path(workspace) / "audit" / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _last(path: Path) -> tuple[int, str]:
    if not path.is_file():
        return 0, GENESIS
    lines = path.read_bytes().splitlines()
    if not lines:
        return 0, GENESIS
    last = json.loads(lines[-1])
    return int(last["seq"]), _line_hash(lines[-1])


def entry_head(entry: Mapping[str, Any]) -> AuditHead:
    """The head the log has right after ``entry`` (as ``append`` returned it)."""
    return AuditHead(int(entry["seq"]), _line_hash(canonical_json(dict(entry))), str(entry["time"]))


def head_unlocked(workspace: Path) -> AuditHead:
    return AuditHead(*_last(Path(workspace) / LOG))


def current_head(workspace: Path) -> AuditHead:
    """The log's head now, stamped with the time it was read (under the lock): recorded in
    manifests and federation replies (see module)."""
    with locked(workspace):
        head = head_unlocked(workspace)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return AuditHead(head.seq, head.hash, now)


def append_unlocked(
    workspace: Path, signer: Signer, event: str, details: Mapping[str, Any]
) -> dict:
    """``append`` for a caller that holds ``locked(workspace)``."""
    current = current_fingerprint(workspace)
    if current is not None and current != signer.fingerprint:
        # a process that loaded the key before a rotation: its entry would fail verification
        raise IntegrityError(
            f"the site key {signer.fingerprint[:16]}... was retired by `site-agent keys "
            "rotate`; nothing is signed with a retired key",
            hint="restart the command so it loads the current key",
        )
    log = Path(workspace) / LOG
    seq, prev = _last(log)
    body = {
        "seq": seq + 1,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "event": event,
        "details": dict(details),
        "prev": prev,
        "key": signer.fingerprint,
    }
    entry = body | {"sig": base64.b64encode(signer.sign(canonical_json(body))).decode()}
    line = canonical_json(entry)
    with open(log, "ab") as fh:
        fh.write(line + b"\n")
    head = {"seq": seq + 1, "hash": _line_hash(line), "key": signer.fingerprint}
    head["sig"] = base64.b64encode(signer.sign(canonical_json(head))).decode()
    atomic_write_bytes(Path(workspace) / HEAD, canonical_json(head) + b"\n")
    return entry


def append(workspace: Path, signer: Signer, event: str, details: Mapping[str, Any]) -> dict:
    """Append one signed entry (``event``: e.g. export, export-refused) and move the head."""
    with locked(workspace):
        return append_unlocked(workspace, signer, event, details)


@dataclass
class AuditReport:
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sig_ok(keys: Mapping[str, Ed25519PublicKey], body: dict, fp: str, sig_b64: str) -> bool:
    key = keys.get(fp)
    if key is None:
        return False
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except (ValueError, TypeError):
        return False
    return verify_signature(key, sig, canonical_json(body))


@dataclass
class _Anchor:
    """A record kept outside the log that proves the log had ``head`` (and, for a bundle,
    an export entry for it)."""

    kind: str  # bundle | reply | handover
    source: str
    head: AuditHead | None
    bundle: tuple[str, str] | None = None  # (bundle id, manifest SHA-256)


def _manifest_anchors(workspace: Path, problems: list[str]) -> list[_Anchor]:
    out: list[_Anchor] = []
    for path in sorted((Path(workspace) / MANIFESTS).glob("*.json")):
        where = f"{MANIFESTS / path.name}"
        try:
            data = path.read_bytes()
            m = json.loads(data)
            head = AuditHead.parse(m[AUDIT_HEAD_FIELD], where) if AUDIT_HEAD_FIELD in m else None
            bundle = (str(m["bundle_id"]), hashlib.sha256(data).hexdigest())
        except (OSError, ValueError, KeyError, TypeError, IntegrityError):
            problems.append(f"{where}: unreadable bundle record")
            continue
        out.append(_Anchor("bundle", f"bundle {bundle[0][:8]} ({where})", head, bundle))
    return out


def _reply_anchors(workspace: Path, problems: list[str]) -> list[_Anchor]:
    path = Path(workspace) / REPLIES
    if not path.is_file():
        return []
    out: list[_Anchor] = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            rec = json.loads(line)
            head = AuditHead.parse(rec[AUDIT_HEAD_FIELD])
            out.append(_Anchor("reply", f"{REPLIES} line {n}", head))
        except (ValueError, KeyError, TypeError, IntegrityError):
            problems.append(f"{REPLIES} line {n}: unreadable")
    return out


def _missing_log_summary(anchors: list[_Anchor], head_seq: int | None) -> str:
    bundles = sum(a.kind == "bundle" for a in anchors)
    replies = sum(a.kind == "reply" for a in anchors)
    handovers = [a.head.seq for a in anchors if a.kind == "handover" and a.head]
    said = []
    if bundles:
        said.append(f"{MANIFESTS} records {bundles} exported bundle(s)")
    if replies:
        said.append(f"{REPLIES} records {replies} federation reply(ies)")
    if handovers:
        said.append(f"{len(handovers)} key hand-over(s) record up to {max(handovers)} entries")
    if head_seq:
        said.append(f"{HEAD} records {head_seq} entries")
    return (
        "the audit log is missing or empty, but the workspace's records prove it had entries: "
        + "; ".join(said)
    )


def _anchor_problems(
    anchors: list[_Anchor], hashes: list[str], entries: list[dict[str, Any]]
) -> list[str]:
    """What the records prove the log held, against what it holds."""
    problems = []
    exported = {
        (str(e["details"].get("bundle_id")), str(e["details"].get("manifest_sha256")))
        for e in entries
        if e.get("event") == "export" and isinstance(e.get("details"), dict)
    }
    for a in anchors:
        if a.head is not None and a.head.seq > len(hashes):
            problems.append(
                f"the log holds {len(hashes)} entries but {a.source} recorded {a.head.seq}: "
                "entries were deleted"
            )
        elif a.head is not None and a.head.seq and hashes[a.head.seq - 1] != a.head.hash:
            problems.append(
                f"entry {a.head.seq} is not the one {a.source} recorded: the log was rewritten"
            )
        if a.bundle is not None and a.bundle not in exported:
            problems.append(
                f"{a.source} has no export entry in the log: entries were deleted or edited"
            )
    return problems


def _check_workspace(workspace: Path) -> None:
    if not workspace.exists():
        raise InputError(f"workspace {workspace} does not exist")
    if not workspace.is_dir():
        raise InputError(f"workspace {workspace} is not a folder")
    if not (key_dir(workspace) / IDENTITY).exists() and not (workspace / "audit").exists():
        raise InputError(
            f"{workspace} is not a site workspace (no keys/{IDENTITY}, no audit/)",
            hint="give the workspace where `site-agent keys init` was run",
        )


def verify(workspace: Path, keys: Mapping[str, Ed25519PublicKey] | None = None) -> AuditReport:
    """Check every line's signature (by the key valid at its position and time), the hash
    chain, sequence numbers, the signed head, and the records outside the log that anchor it.

    ``keys`` (default: the workspace's key history) are the keys signatures are checked with;
    periods come from the workspace's signed hand-overs. A missing or foreign workspace is an
    ``InputError``."""
    from site_agent.export.keys import key_history

    workspace = Path(workspace)
    _check_workspace(workspace)
    report = AuditReport()
    history = key_history(workspace)
    report.problems.extend(history.problems)
    if keys is None:
        keys = history.keys()
    periods: dict[str, KeyPeriod] = history.periods
    log = Path(workspace) / LOG
    lines = log.read_bytes().splitlines() if log.is_file() else []
    prev, seq = GENESIS, 0
    hashes: list[str] = []
    entries: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        hashes.append(_line_hash(line))
        try:
            entry = json.loads(line)
            body = {k: v for k, v in entry.items() if k != "sig"}
            sig = entry["sig"]
        except (ValueError, KeyError, TypeError, AttributeError):
            report.problems.append(f"line {n}: not a valid audit entry")
            prev = _line_hash(line)
            continue
        entries.append(entry)
        if canonical_json(entry) != line:
            report.problems.append(f"line {n}: not in canonical form (edited)")
        if not _sig_ok(keys, body, str(entry.get("key")), sig):
            report.problems.append(f"line {n}: signature does not verify (edited or forged)")
        elif (period := periods.get(str(entry.get("key")))) is not None:
            why = period.problem(n, str(entry.get("time")))
            if why:
                report.problems.append(f"line {n}: {why}")
        if entry.get("prev") != prev:
            report.problems.append(
                f"line {n}: previous-hash link broken (an entry before it was edited, "
                "inserted or deleted)"
            )
        if entry.get("seq") != seq + 1:
            report.problems.append(f"line {n}: sequence {entry.get('seq')} after {seq}")
        seq = entry.get("seq") if isinstance(entry.get("seq"), int) else seq + 1
        prev = _line_hash(line)
        ev = str(entry.get("event"))
        report.events[ev] = report.events.get(ev, 0) + 1
    report.entries = len(lines)
    anchors = _manifest_anchors(workspace, report.problems)
    anchors += _reply_anchors(workspace, report.problems)
    anchors += [
        _Anchor("handover", f"key hand-over {name}", ho.audit_head)
        for name, ho in history.handovers
    ]
    head_path = Path(workspace) / HEAD
    head_seq: int | None = None
    if head_path.is_file():
        try:
            head = json.loads(head_path.read_bytes())
            head_seq = head.get("seq") if isinstance(head.get("seq"), int) else None
            hbody = {k: v for k, v in head.items() if k != "sig"}
            if not _sig_ok(keys, hbody, str(head.get("key")), head["sig"]):
                report.problems.append("head.json: signature does not verify")
            elif head.get("seq") != seq or head.get("hash") != prev:
                report.problems.append(
                    f"head.json records entry {head.get('seq')} but the log ends at {seq}: "
                    "entries were deleted or appended without the key"
                )
        except (ValueError, KeyError, TypeError, AttributeError):
            report.problems.append("head.json: unreadable")
    elif lines:
        report.problems.append("head.json missing: the end of the log cannot be checked")
    proving = [a for a in anchors if a.bundle or (a.head and a.head.seq)]
    if not lines and (head_seq or proving):
        # one line that says what happened, rather than one per record
        report.problems.insert(0, _missing_log_summary(proving, head_seq))
    else:
        report.problems[:0] = _anchor_problems(anchors, hashes, entries)
    return report
