"""PACS credentials: from the environment or a file readable by its owner only, never argv.

A command line is visible to every user of the machine (``ps``) and lands in shell histories,
so passwords and tokens are read from:

* ``SITE_AGENT_PACS_TOKEN`` (bearer), or ``SITE_AGENT_PACS_USER`` + ``SITE_AGENT_PACS_PASSWORD``
  (basic), or
* a file named by ``--credentials FILE`` or ``SITE_AGENT_PACS_CREDENTIALS``: JSON
  ``{"username": ..., "password": ...}`` or ``{"token": ...}``, mode 0600 (refused when group or
  others may read it, as ssh refuses a readable key).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError

ENV_USER = "SITE_AGENT_PACS_USER"
ENV_PASSWORD = "SITE_AGENT_PACS_PASSWORD"
ENV_TOKEN = "SITE_AGENT_PACS_TOKEN"
ENV_FILE = "SITE_AGENT_PACS_CREDENTIALS"


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None
    source: str = "none"

    def headers(self) -> dict[str, str]:
        """The HTTP Authorization header (empty without credentials)."""
        import base64

        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        return {}

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(source={self.source!r})"


def load_credentials(path: Path | None = None) -> Credentials:
    """Credentials from ``path`` (or ``$SITE_AGENT_PACS_CREDENTIALS``), else the environment."""
    file = path or (Path(os.environ[ENV_FILE]) if os.environ.get(ENV_FILE) else None)
    if file is not None:
        return _from_file(Path(file))
    if os.environ.get(ENV_TOKEN):
        return Credentials(token=os.environ[ENV_TOKEN], source=f"${ENV_TOKEN}")
    if os.environ.get(ENV_USER):
        return Credentials(
            username=os.environ[ENV_USER],
            password=os.environ.get(ENV_PASSWORD, ""),
            source=f"${ENV_USER}",
        )
    return Credentials()


def _from_file(path: Path) -> Credentials:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read credentials file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"credentials file {path} is readable by other users",
            hint=f"chmod 600 {path}",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"credentials file {path} is not JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"credentials file {path} must hold a JSON object")
    if isinstance(data.get("token"), str) and data["token"]:
        return Credentials(token=data["token"], source=str(path))
    if isinstance(data.get("username"), str) and isinstance(data.get("password", ""), str):
        return Credentials(data["username"], data.get("password", ""), source=str(path))
    raise InputError(
        f"credentials file {path} needs 'username' and 'password', or 'token'",
    )
