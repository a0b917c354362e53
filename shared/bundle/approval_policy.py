"""How many reviewer approvals a bundle needs: one small TOML file, owned by whoever reads it.

* the site: ``WORKSPACE/export-policy.toml``: ``export`` writes the bundle folder but does not
  pack it for hand-over until enough of the site's reviewers approved it;
* the coordinator: ``WORKSPACE/import-policy.toml``: ``import`` refuses a bundle without enough
  valid approvals from the reviewers it pinned for the bundle's site.

Both hold one key::

    required_approvals = 2      # 0 (the default, also without the file): none needed

Anything else in the file is refused, so a misspelt key cannot silently mean "no approvals".
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from shared.errors import InputError

EXPORT_POLICY = Path("export-policy.toml")
IMPORT_POLICY = Path("import-policy.toml")
MAX_APPROVALS = 20
KEYS = ("required_approvals",)


def check_required(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_APPROVALS:
        raise InputError(
            f"{where}: required_approvals must be a whole number from 0 to {MAX_APPROVALS}, "
            f"not {value!r}"
        )
    return value


def required_approvals(workspace: Path, policy_file: Path) -> int:
    """``required_approvals`` from ``workspace / policy_file`` (0 without the file)."""
    path = Path(workspace) / policy_file
    if not path.exists():
        return 0
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(
            f"cannot read {path}: {exc}", hint="it holds one line: required_approvals = N"
        ) from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise InputError(
            f"{path}: unknown setting(s) {', '.join(unknown)}",
            hint="it holds one line: required_approvals = N",
        )
    return check_required(raw.get("required_approvals", 0), str(path))
