"""Case identifiers: salted hashes of the study UID; the salt never leaves the workspace."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from shared.atomic import atomic_write_text

SALT_FILE = Path("secrets") / "salt"


def load_or_create_salt(workspace: Path) -> bytes:
    """The workspace's secret salt (created on first use, readable by the owner only)."""
    path = workspace / SALT_FILE
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write_text(path, secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)
    return bytes.fromhex(path.read_text().strip())


def case_id(salt: bytes, key: str) -> str:
    """``case-`` + 16 hex digits of HMAC-SHA256(salt, key): stable per site, not reversible."""
    return "case-" + hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()[:16]
