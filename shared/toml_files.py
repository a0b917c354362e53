"""Reading the toolkit's TOML configs with one-line errors (study, federation, site policy)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from shared.errors import InputError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse ``path``; a missing file or bad TOML becomes an ``InputError`` naming ``what``."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{what} {path} is not valid TOML: {exc}") from None
