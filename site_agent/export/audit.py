"""The audit log: one signed, hash-chained JSON line per export or refused export.

``WS/audit/audit.jsonl``: each line is canonical JSON of ``{seq, time, event, details, prev,
key, sig}`` where ``prev`` is the SHA-256 of the previous line's bytes (64 zeros for the first),
``key`` the signing key's fingerprint and ``sig`` the base64 Ed25519 signature over the
canonical JSON of the entry without ``sig``. ``WS/audit/head.json`` holds the signed last
sequence number and line hash, so deleting the last entries is caught as well. Editing,
inserting or deleting a line breaks a signature, the chain or the head.
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
from shared.bundle.format import canonical_json
from shared.bundle.signing import verify_signature
from site_agent.export.keys import Signer

GENESIS = "0" * 64
LOG = Path("audit") / "audit.jsonl"
HEAD = Path("audit") / "head.json"


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@contextlib.contextmanager
def _locked(workspace: Path) -> Iterator[None]:
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


def append(workspace: Path, signer: Signer, event: str, details: Mapping[str, Any]) -> dict:
    """Append one signed entry (``event``: e.g. export, export-refused) and move the head."""
    log = Path(workspace) / LOG
    with _locked(workspace):
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


def verify(workspace: Path, keys: Mapping[str, Ed25519PublicKey]) -> AuditReport:
    """Check every line's signature, the hash chain, sequence numbers and the signed head."""
    report = AuditReport()
    log = Path(workspace) / LOG
    lines = log.read_bytes().splitlines() if log.is_file() else []
    prev, seq = GENESIS, 0
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            body = {k: v for k, v in entry.items() if k != "sig"}
            sig = entry["sig"]
        except (ValueError, KeyError, TypeError, AttributeError):
            report.problems.append(f"line {n}: not a valid audit entry")
            prev = _line_hash(line)
            continue
        if canonical_json(entry) != line:
            report.problems.append(f"line {n}: not in canonical form (edited)")
        if not _sig_ok(keys, body, str(entry.get("key")), sig):
            report.problems.append(f"line {n}: signature does not verify (edited or forged)")
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
    head_path = Path(workspace) / HEAD
    if head_path.is_file():
        try:
            head = json.loads(head_path.read_bytes())
            hbody = {k: v for k, v in head.items() if k != "sig"}
            if not _sig_ok(keys, hbody, str(head.get("key")), head["sig"]):
                report.problems.append("head.json: signature does not verify")
            elif head.get("seq") != seq or head.get("hash") != prev:
                report.problems.append(
                    f"head.json records entry {head.get('seq')} but the log ends at {seq}: "
                    "entries were deleted or appended without the key"
                )
        except (ValueError, KeyError, TypeError):
            report.problems.append("head.json: unreadable")
    elif lines:
        report.problems.append("head.json missing: the end of the log cannot be checked")
    return report
