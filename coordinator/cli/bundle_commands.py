"""``coordinator trust add|rotate|list`` and ``coordinator import`` (parse and print only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, make_group, out, print_json
from shared.workspace_lock import locks_workspace, reads_workspace

WS_OPT = typer.Option("--workspace", "-w", help="Coordinator workspace.")


@handle_errors
@locks_workspace()
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
@locks_workspace(create=False)
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
@locks_workspace(create=False)
def trust_add_reviewer(
    public_key: Annotated[
        Path,
        typer.Argument(help="The reviewer's public key (keys/reviewers/NAME.pub at the site)."),
    ],
    site: Annotated[str, typer.Option("--site", help="The reviewer's site (pinned already).")],
    name: Annotated[
        str | None,
        typer.Option("--name", help="The reviewer's name, as in their approvals (required)."),
    ] = None,
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Fingerprint read out by the site.")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace")] = False,
    workspace: Annotated[Path, WS_OPT] = Path("coordinator-workspace"),
) -> None:
    """Pin a site's privacy reviewer (compare the printed fingerprint with the one the site
    reads out, or give it with --fingerprint). Only approvals by pinned reviewers of a
    bundle's site count at import; a rejection by one always refuses the bundle."""
    from coordinator.trust.reviewers import add_reviewer
    from shared.errors import InputError

    if name is None:  # an option, so a forgotten --name is one line like any other input
        raise InputError("give the reviewer's name with --name NAME (as in their approvals)")
    entry = add_reviewer(workspace, site, name, public_key, fingerprint, replace)
    out.print(
        f"pinned reviewer {name} of {site}: fingerprint {entry['fingerprint']}",
        highlight=False,
        soft_wrap=True,
    )


@handle_errors
@reads_workspace()
def trust_list(workspace: Annotated[Path, WS_OPT] = Path("coordinator-workspace")) -> None:
    """Print the pinned site keys (and each site's pinned reviewers)."""
    from coordinator.trust.reviewers import pinned_reviewer_entries
    from coordinator.trust.store import trusted_sites

    sites = trusted_sites(workspace)
    for site, reviewers in pinned_reviewer_entries(workspace).items():
        if site in sites:
            sites[site] = dict(sites[site]) | {"reviewers": reviewers}
    print_json(sites)


@handle_errors
@locks_workspace()
def import_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or tar.")],
    workspace: Annotated[Path, WS_OPT] = Path("coordinator-workspace"),
    json_out: Annotated[bool, typer.Option("--json")] = False,
    require_approvals: Annotated[
        int | None,
        typer.Option(
            "--require-approvals",
            min=0,
            max=20,
            help="Valid approvals by pinned reviewers of the bundle's site needed (default: "
            "required_approvals in WORKSPACE/import-policy.toml, else 0).",
        ),
    ] = None,
) -> None:
    """Verify a bundle against the pinned keys and every file hash, check its reviewers'
    approvals, then import its synthetic cases (case format) or weights into
    WORKSPACE/imports/SITE/BUNDLE-ID. Exit 4 when the bundle is unsigned, tampered or signed by
    an unpinned key, when an approval is altered or copied from another bundle, when a pinned
    reviewer rejected it, or when it lacks the approvals required."""
    from coordinator.trust.importer import import_bundle

    res = import_bundle(workspace, bundle, require_approvals)
    if json_out:
        print_json(res.__dict__ | {"folder": str(res.folder)})
        return
    what = f"{res.cases} synthetic case(s)" if res.kind == "synthetic" else f"weights {res.weights}"
    err.print(f"[green]verified[/] bundle {res.bundle_id[:8]} from {res.site}")
    if res.approvals or res.required_approvals:
        err.print(
            f"approvals: {len(res.approvals)} valid ({', '.join(res.approvals) or 'none'}), "
            f"{res.required_approvals} required",
            highlight=False,
            soft_wrap=True,
        )
    if res.approvals_note:
        err.print(f"note: {res.approvals_note}", markup=False, soft_wrap=True)
    out.print(f"imported {what} into {res.folder}", markup=False)


def register(app: typer.Typer) -> None:
    trust = make_group("Pinned site keys.")
    trust.command("add")(trust_add)
    trust.command("rotate")(trust_rotate)
    trust.command("add-reviewer")(trust_add_reviewer)
    trust.command("list")(trust_list)
    app.add_typer(trust, name="trust")
    app.command("import")(import_cmd)
