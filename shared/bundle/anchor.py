"""The site's audit-log head, recorded outside the log so a wiped or shortened log shows.

A head is ``{seq, hash}``: how many entries the site's signed audit log held and the SHA-256
of the last entry's line (64 zeros for an empty log). The site records the head it had

* in every bundle manifest (``audit_head``, signed with the manifest; the export's own entry
  follows it, at ``seq + 1`` or later),
* in every federation reply (a ConfigRecord ``audit-head``; the reply's entry follows it),
* in every key hand-over.

The coordinator keeps the heads it saw per site; ``contradiction`` tells whether a new head
fits them. Heads may arrive out of order (bundles imported in another order than exported),
so they are compared by the time the site stated with each: a record stated later must not
sit at an earlier position of the log, one stated earlier not at a later one, and two at the
same position must carry the same hash.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from shared.errors import IntegrityError

AUDIT_HEAD_FIELD = "audit_head"  # in a bundle manifest
AUDIT_HEAD_RECORD = "audit-head"  # ConfigRecord name in a federation reply
GENESIS = "0" * 64
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AuditHead:
    """How many entries a site's audit log held (``seq``) and the hash of the last one;
    ``time``, when known, is when the head was read (under the log's lock, so heads read later
    never sit earlier in the log): what records are ordered by."""

    seq: int
    hash: str
    time: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "hash": self.hash}
        if self.time is not None:
            out["time"] = self.time
        return out

    @classmethod
    def parse(cls, obj: Any, where: str = "audit head") -> AuditHead:
        """Read ``{seq, hash}``; anything else is an ``IntegrityError`` (it came signed)."""
        if not isinstance(obj, dict):
            raise IntegrityError(f"{where} is not an object")
        seq, digest = obj.get("seq"), obj.get("hash")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise IntegrityError(f"{where} has an invalid sequence number {seq!r}")
        if not isinstance(digest, str) or not _HASH.match(digest):
            raise IntegrityError(f"{where} has an invalid hash")
        if (seq == 0) != (digest == GENESIS):
            raise IntegrityError(f"{where}: only an empty log has the all-zero hash")
        time = obj.get("time")
        if time is not None and parse_time(time) is None:
            raise IntegrityError(f"{where} has an unreadable time")
        return cls(seq, digest, time)


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO-8601 time as an aware UTC datetime, or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def contradiction(seen: list[dict[str, Any]], head: AuditHead, stated: str | None) -> str | None:
    """Why ``head`` (stated by the site at time ``stated``) cannot come from the same log as
    the ``seen`` records (``{seq, hash, stated, source}``), or None when it fits them."""
    t_new = parse_time(stated)
    for rec in seen:
        seq, digest, src = int(rec["seq"]), str(rec["hash"]), str(rec.get("source", "a record"))
        if seq == head.seq and digest != head.hash:
            return (
                f"its audit head puts another entry {seq} in the site's log than {src} "
                "did: the log was rewritten"
            )
        t_old = parse_time(rec.get("stated"))
        if t_new is None or t_old is None or t_new == t_old:
            continue
        if t_new > t_old and head.seq < seq:
            return (
                f"its audit head went backwards: the site's log held {head.seq} entries when "
                f"it was made, but {seq} at {src}, made earlier: the log was truncated or wiped"
            )
        if t_new < t_old and head.seq > seq:
            return (
                f"its audit head ({head.seq} entries) is ahead of {src} ({seq}), which was "
                "made later: the log was rewritten"
            )
    return None
