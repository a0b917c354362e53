"""The audit heads the coordinator has seen per site: ``coord-ws/trust/audit-heads.json``.

Each bundle manifest (and each key hand-over) states the head of the site's signed audit log
when it was made (``shared.bundle.anchor``). Kept here, they catch at the coordinator what the
site's own ``audit verify`` catches there: a log that was wiped or cut back (its head went
backwards) or rebuilt (another entry at a position already seen). A record that contradicts
them is refused before anything is imported; it is remembered only once its import succeeded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json
from shared.bundle.anchor import AuditHead, contradiction, parse_time
from shared.errors import InputError, IntegrityError

HEADS = Path("trust") / "audit-heads.json"


def seen_heads(workspace: Path) -> dict[str, dict[str, Any]]:
    """{site: {"highest": record, "seen": [record, ...]}}, record = {seq, hash, stated,
    source}."""
    path = Path(workspace) / HEADS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["sites"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def check_head(
    workspace: Path, site: str, head: AuditHead | None, stated: str | None, source: str
) -> None:
    """Raise ``IntegrityError`` when ``head`` (stated by ``site`` at ``stated`` in
    ``source``) cannot come from the log the earlier records came from."""
    seen = seen_heads(workspace).get(site, {}).get("seen", [])
    if head is None:
        # a record without a head made after one with a head: the site went back to a tool
        # that does not anchor its log, or the head was stripped before signing
        t = parse_time(stated)
        before = [parse_time(r.get("stated")) for r in seen]
        if any(t is None or (b is not None and b < t) for b in before):
            raise IntegrityError(
                f"{source} from {site} carries no audit head, but earlier records from "
                f"{site} did: refused"
            )
        return
    why = contradiction(seen, head, stated)
    if why:
        raise IntegrityError(f"{source} from {site} is refused: {why}")


def record_head(
    workspace: Path, site: str, head: AuditHead | None, stated: str | None, source: str
) -> None:
    """Remember ``head`` for ``site`` (after the record carrying it was accepted)."""
    if head is None:
        return
    sites = seen_heads(workspace)
    mine = sites.setdefault(site, {"seen": []})
    rec = head.to_json() | {"stated": stated, "source": source}
    mine["seen"].append(rec)
    if head.seq >= int(mine.get("highest", {}).get("seq", -1)):
        mine["highest"] = rec
    atomic_write_json(Path(workspace) / HEADS, {"sites": sites})
