"""Helpers for the key life-cycle and audit-anchoring tests: both CLIs as typer apps, a quick
store-sourced export, and the one-line error check. Holds no tests of its own."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from shared.cli_support import make_app
from tests.test_bundle_support import PASSPHRASE, make_site

__all__ = ["PASSPHRASE", "Apps", "export_store", "make_site", "one_line_error"]


class Apps:
    """``site-agent`` and ``coordinator`` (their key, export, audit, trust and import
    commands) run in process, with the key passphrase in the environment."""

    def __init__(self, monkeypatch) -> None:
        from coordinator.cli import bundle_commands
        from site_agent.cli import export_commands

        monkeypatch.setenv("SITE_AGENT_KEY_PASSPHRASE", PASSPHRASE)

        self.site: typer.Typer = make_app("site-agent", "test")
        export_commands.register(self.site)
        self.coord: typer.Typer = make_app("coordinator", "test")
        bundle_commands.register(self.coord)
        self.runner = CliRunner()

    def site_agent(self, *args: str | Path, env: dict[str, str] | None = None) -> Result:
        return self.runner.invoke(self.site, [str(a) for a in args], env=env)

    def coordinator(self, *args: str | Path) -> Result:
        return self.runner.invoke(self.coord, [str(a) for a in args])

    def pin(self, ws: Path, coord: Path) -> None:
        """Pin the site's current public key at the coordinator (``trust add``)."""
        res = self.coordinator(
            "trust", "add", ws / "keys" / "site-key.pub", "--site", "aurora", "-w", coord
        )
        assert res.exit_code == 0, res.output


def export_store(ws: Path, signer, out: Path | None = None):
    """One signed synthetic bundle of two stored cases (no generation, no training)."""
    from site_agent.export.synthetic import export_synthetic

    return export_synthetic(
        ws, 2, signer, out=out, source="store", positive_fraction=0.5, max_rounds=0
    )


def one_line_error(res: Result, code: int) -> str:
    """Assert exit ``code`` with one ``error:`` line (a hint line may follow) and no
    traceback; return that line."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    assert all(ln.startswith(("error:", "hint:")) for ln in lines), res.output
    return errors[0]
