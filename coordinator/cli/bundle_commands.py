"""``coordinator trust add|rotate|list`` and ``coordinator import`` (parse and print only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json

WS_OPT = typer.Option("--workspace", "-w", help="Coordinator workspace.")


@handle_errors
def trust_add(
    public_key: Annotated[Path, typer.Argument(help="The site's public key file (site-key.pub).")],
    site: Annotated[str, typer.Option("--site", help="The site's id (as in its bundles).")],
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Fingerprint read out by the site.")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace")] = False,
    workspace: Annotated[Path, WS_OPT] = Path("coordinator-workspace"),
) -> None:
    """Pin a site's public key (compare the printed fingerprint with the site's)."""
    from coordinator.trust.store import add_trusted

    entry = add_trusted(workspace, site, public_key, fingerprint, replace)
    out.print(f"pinned {site}: fingerprint {entry['fingerprint']}", highlight=False, soft_wrap=True)


@handle_errors
def trust_rotate(
    handover: Annotated[
        Path, typer.Argument(help="The site's key hand-over (keys/handovers/*.json).")
    ],
    site: Annotated[str, typer.Option("--site", help="The site's id (as in its bundles).")],
    fingerprint: Annotated[
        str | None,
        typer.Option(
            "--fingerprint",
            help="The new key's fingerprint as the site read it out; required when the "
            "hand-over is not signed by the pinned key (the site lost its private key).",
        ),
    ] = None,
    workspace: Annotated[Path, WS_OPT] = Path("coordinator-workspace"),
) -> None:
    """Pin a site's new key from its signed key hand-over: accepted when the currently pinned
    key signed it (or, after a lost private key, with --fingerprint confirmed out of band).
    The old key stays pinned as retired, so bundles it signed before the hand-over still
    import. Exit 4 when the hand-over does not verify or is not signed by the pinned key."""
    from coordinator.trust.store import rotate_trusted

    entry = rotate_trusted(workspace, site, handover, fingerprint)
    old = entry["retired"][-1]
    out.print(
        f"pinned {site}: fingerprint {entry['fingerprint']} "
        f"(retired {old['fingerprint'][:16]}..., valid until {old['not_after']})",
        highlight=False,
        soft_wrap=True,
    )


@handle_errors
def trust_list(workspace: Annotated[Path, WS_OPT] = Path("coordinator-workspace")) -> None:
    """Print the pinned site keys."""
    from coordinator.trust.store import trusted_sites

    print_json(trusted_sites(workspace))


@handle_errors
def import_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or tar.")],
    workspace: Annotated[Path, WS_OPT] = Path("coordinator-workspace"),
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Verify a bundle against the pinned keys and every file hash, then import its synthetic
    cases (case format) or weights into WORKSPACE/imports/SITE/BUNDLE-ID. Exit 4 when the
    bundle is unsigned, tampered or signed by an unpinned key."""
    from coordinator.trust.importer import import_bundle

    res = import_bundle(workspace, bundle)
    if json_out:
        print_json(res.__dict__ | {"folder": str(res.folder)})
        return
    what = f"{res.cases} synthetic case(s)" if res.kind == "synthetic" else f"weights {res.weights}"
    err.print(f"[green]verified[/] bundle {res.bundle_id[:8]} from {res.site}")
    out.print(f"imported {what} into {res.folder}")


def register(app: typer.Typer) -> None:
    trust = typer.Typer(help="Pinned site keys.", no_args_is_help=True)
    trust.command("add")(trust_add)
    trust.command("rotate")(trust_rotate)
    trust.command("list")(trust_list)
    app.add_typer(trust, name="trust")
    app.command("import")(import_cmd)
