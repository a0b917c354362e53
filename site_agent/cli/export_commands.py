"""``site-agent keys|export|review|audit``: the export gate's commands (parse and print only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json

WS_OPT = typer.Option("--workspace", "-w", help="Site workspace.")


def _passphrase(confirm: bool = False) -> str:
    from site_agent.export.keys import PASSPHRASE_ENV, passphrase_from_env

    value = passphrase_from_env()
    if value is not None:
        return value
    if not typer.get_text_stream("stdin").isatty():
        from shared.errors import InputError

        raise InputError(f"no key passphrase: set {PASSPHRASE_ENV} or run in a terminal")
    return typer.prompt("site key passphrase", hide_input=True, confirmation_prompt=confirm)


def _signer(workspace: Path):
    from site_agent.export.keys import load_signer, site_identity

    site_identity(workspace)  # a missing key says so before asking for a passphrase
    return load_signer(workspace, _passphrase())


@handle_errors
def keys_init(
    site: Annotated[str, typer.Option("--site", help="Site id printed on bundles (e.g. aurora).")],
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
) -> None:
    """Create the site's Ed25519 signing key (private key encrypted with a passphrase from
    SITE_AGENT_KEY_PASSPHRASE or a prompt). Send WORKSPACE/keys/site-key.pub to the
    coordinator and read the fingerprint to them over another channel. Refuses when a key
    exists: replace one with `keys rotate`."""
    from site_agent.export.keys import PUBLIC, check_no_key, check_site_id, init_keys, key_dir

    check_site_id(site)  # bad input fails before the passphrase prompt
    check_no_key(workspace)
    signer = init_keys(workspace, site, _passphrase(confirm=True))
    # soft_wrap: a fingerprint or path cut at the terminal width cannot be copied or compared
    out.print(f"site {signer.site}: public key {key_dir(workspace) / PUBLIC}", soft_wrap=True)
    out.print(
        f"fingerprint (SHA-256 of the raw key): {signer.fingerprint}",
        highlight=False,
        soft_wrap=True,
    )


@handle_errors
def keys_rotate(
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
    lost_private_key: Annotated[
        bool,
        typer.Option(
            "--lost-private-key",
            help="The private key is lost: the hand-over is signed by the new key only and "
            "the coordinator must confirm the new fingerprint out of band.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Retire the site key and make a new one: the old public key goes to keys/retired/ with
    its validity period, a hand-over signed by the old and the new key (the new one only with
    --lost-private-key) goes to keys/handovers/ for the coordinator, and the rotation is
    logged. Past bundles and audit entries keep verifying. The new key takes the passphrase
    from SITE_AGENT_NEW_KEY_PASSPHRASE, else SITE_AGENT_KEY_PASSPHRASE, else a prompt."""
    import os

    from site_agent.export.key_rotation import NEW_PASSPHRASE_ENV, rotate_keys
    from site_agent.export.keys import site_identity

    site_identity(workspace)  # no key: say so before asking for passphrases
    old = None if lost_private_key else _passphrase()
    new = os.environ.get(NEW_PASSPHRASE_ENV) or old
    if new is None:
        new = _passphrase(confirm=True)
    res = rotate_keys(workspace, old, new, lost_private_key)
    if json_out:
        print_json(
            res.__dict__ | {"handover": str(res.handover), "public_key": str(res.public_key)}
        )
        return
    out.print(
        f"site {res.site}: retired key {res.old_fingerprint}", highlight=False, soft_wrap=True
    )
    out.print(f"new public key {res.public_key}", highlight=False, soft_wrap=True)
    out.print(
        f"new fingerprint (SHA-256 of the raw key): {res.new_fingerprint}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"hand-over: {res.handover}", highlight=False, soft_wrap=True)
    if res.mode == "rotate":
        err.print(
            "send the hand-over to the coordinator: coordinator trust rotate HANDOVER "
            f"--site {res.site} (it is signed by the key they pinned)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        err.print(
            "the hand-over is signed by the new key only: read the new fingerprint to the "
            "coordinator out of band; they run coordinator trust rotate HANDOVER "
            f"--site {res.site} --fingerprint {res.new_fingerprint}",
            highlight=False,
            soft_wrap=True,
        )


@handle_errors
def keys_show(workspace: Annotated[Path, WS_OPT] = Path("workspace")) -> None:
    """Print the site id, the key fingerprint and the keys it took over from (with the
    audit-log entries each one may sign)."""
    from site_agent.export.keys import key_history, site_identity

    ident = dict(site_identity(workspace))
    history = key_history(workspace)
    # "earlier_keys" sorts before "fingerprint": the current fingerprint stays the last one printed
    ident["earlier_keys"] = [
        {
            "fingerprint": p.fingerprint,
            "not_before": p.not_before,
            "not_after": p.not_after,
            "audit_entries": [p.first_seq, p.last_seq],
            "handover": p.handover,
        }
        for p in history.periods.values()
        if p.not_after is not None
    ]
    if history.problems:
        ident["problems"] = history.problems
    print_json(ident)


def _print_export(res, json_out: bool) -> None:
    if json_out:
        print_json(
            {
                "bundle": str(res.path),
                "bundle_id": res.bundle_id,
                "manifest_sha256": res.manifest_sha256,
                "counts": res.manifest.get("counts"),
                "privacy": res.manifest.get("privacy"),
            }
        )
        return
    p = res.manifest.get("privacy", {})
    memo = p.get("memorisation")
    if memo:
        err.print(
            f"memorisation screen: {memo['flagged']} of {memo['screened']} flagged "
            f"({memo['flagged_fraction']:.0%}), threshold {memo['image_threshold']:.4f} "
            f"({memo['method']})",
            highlight=False,
        )
    phi = p.get("phi_scan", {})
    err.print(f"PHI scan: {phi.get('files_scanned')} files, 0 findings", highlight=False)
    if "weights" in p:
        err.print(f"weights: {p['weights']}", highlight=False)
    out.print(f"signed bundle: {res.path}")
    out.print(f"manifest SHA-256: {res.manifest_sha256}", highlight=False)


@handle_errors
def export_synthetic_cmd(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of synthetic cases to export.")],
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Bundle path (default WORKSPACE/exports/...).")
    ] = None,
    tar: Annotated[bool, typer.Option("--tar", help="Write one tar file.")] = False,
    source: Annotated[
        str, typer.Option("--source", help="generate (new samples, default) or store.")
    ] = "generate",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    positive_fraction: Annotated[float, typer.Option("--positive-fraction", min=0, max=1)] = 0.4,
    max_rounds: Annotated[
        int, typer.Option("--max-rounds", min=0, help="Replacement rounds for flagged cases.")
    ] = 3,
    quantile: Annotated[
        float, typer.Option("--quantile", help="Flag below this quantile of held-out distances.")
    ] = 0.05,
    dicom_dir: Annotated[
        Path | None,
        typer.Option("--dicom-dir", help="Source DICOM export to harvest identifiers from."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Screen synthetic cases (memorisation, PHI), write them as DICOM + NIfTI with labels, sign
    the bundle and record it in the audit log. Refusals write nothing and are audited."""
    from site_agent.export.synthetic import export_synthetic
    from site_agent.privacy.memorisation import ScreenConfig

    res = export_synthetic(
        workspace,
        n,
        _signer(workspace),
        out=out_path,
        tar=tar,
        source=source,
        seed=seed,
        positive_fraction=positive_fraction,
        max_rounds=max_rounds,
        screen_config=ScreenConfig(quantile=quantile),
        dicom_dir=dicom_dir,
    )
    _print_export(res, json_out)


@handle_errors
def export_weights_cmd(
    model: Annotated[str, typer.Option("--model", help="classifier or ldm.")],
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
    allow_generative: Annotated[
        bool, typer.Option("--allow-generative-weights", help="Required for --model ldm.")
    ] = False,
    model_dir: Annotated[
        Path | None, typer.Option("--model-dir", help="Classifier weights folder.")
    ] = None,
    out_path: Annotated[Path | None, typer.Option("--out")] = None,
    tar: Annotated[bool, typer.Option("--tar")] = False,
    max_mia_auc: Annotated[float, typer.Option("--max-mia-auc")] = 0.75,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Export classifier weights, or (with --allow-generative-weights and a membership-inference
    check) the latent diffusion model, as a signed bundle."""
    from site_agent.export.weights import export_weights

    res = export_weights(
        workspace,
        model,
        _signer(workspace),
        allow_generative=allow_generative,
        model_dir=model_dir,
        out=out_path,
        tar=tar,
        max_mia_auc=max_mia_auc,
    )
    _print_export(res, json_out)


@handle_errors
def review_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or tar.")],
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Verify with this key instead.")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Report folder.")] = None,
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help="Also write review.html: one self-contained page for a data-protection "
            "officer (no network, figures inline).",
        ),
    ] = False,
) -> None:
    """Check a bundle's signature and hashes, re-run the PHI scan, print a summary and write
    review.md (+ montage.png; with --html a self-contained review.html). Exits 5 on any
    finding."""
    from rich.table import Table

    from shared.bundle.signing import fingerprint, load_public_key
    from shared.errors import PrivacyGateError
    from site_agent.export.keys import public_keys
    from site_agent.export.review import review_bundle

    if public_key is not None:
        k = load_public_key(public_key)
        keys = {fingerprint(k): k}
        described = f"the public key in {public_key}"
    else:
        keys = public_keys(workspace)
        described = "the site's public key"
    res = review_bundle(bundle, workspace, keys, report, html=html, key_description=described)
    m = res.manifest
    t = Table(title=f"bundle {m['bundle_id'][:8]} from {m['site']} ({m['kind']})")
    t.add_column("item")
    t.add_column("value")
    t.add_row("signature and hashes", f"valid, {len(m['files'])} files")
    t.add_row("counts", str(m.get("counts")))
    memo = m.get("privacy", {}).get("memorisation")
    if memo:
        t.add_row(
            "memorisation",
            f"{memo['flagged']}/{memo['screened']} flagged, "
            f"threshold {memo['image_threshold']:.4f} ({memo['method']})",
        )
    if "weights" in m.get("privacy", {}):
        t.add_row("weights", str(m["privacy"]["weights"]))
    t.add_row("PHI scan (now)", "passed" if res.ok else f"{len(res.findings)} finding(s)")
    t.add_row("report", str(res.report_dir / "review.md"))
    out.print(t)
    if res.html_path is not None:  # on its own line: a table cell would cut a long path
        out.print(f"review page: {res.html_path}", highlight=False, soft_wrap=True)
    for f in res.findings[:20]:
        err.print(f"  [red]finding[/] {f}", highlight=False)
    if not res.ok:
        raise PrivacyGateError(f"{len(res.findings)} PHI finding(s) in {bundle}")


@handle_errors
def audit_verify_cmd(
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check the audit log's hash chain, each entry's signature against the key valid when it
    was written, the signed head, and that the log is not shorter than the workspace's own
    records (bundle manifests, federation replies, key hand-overs) prove. Exit 4 on any
    problem (--json lists them all), 3 when WORKSPACE is not a site workspace."""
    from shared.errors import IntegrityError
    from site_agent.export import audit

    rep = audit.verify(workspace)
    if json_out:
        print_json({"entries": rep.entries, "events": rep.events, "problems": rep.problems})
    if not rep.ok:
        more = (
            f" (and {len(rep.problems) - 1} more; --json lists them)"
            if len(rep.problems) > 1
            else ""
        )
        raise IntegrityError(
            f"audit log of {workspace} failed verification: {rep.problems[0]}{more}"
        )
    if not json_out:
        out.print(f"audit log intact: {rep.entries} entries {rep.events}", highlight=False)


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="The site's signing key.", no_args_is_help=True)
    keys.command("init")(keys_init)
    keys.command("show")(keys_show)
    keys.command("rotate")(keys_rotate)
    app.add_typer(keys, name="keys")
    export = typer.Typer(help="Signed bundles through the privacy gate.", no_args_is_help=True)
    export.command("synthetic")(export_synthetic_cmd)
    export.command("weights")(export_weights_cmd)
    app.add_typer(export, name="export")
    app.command("review")(review_cmd)
    audit_app = typer.Typer(help="The tamper-evident export log.", no_args_is_help=True)
    audit_app.command("verify")(audit_verify_cmd)
    app.add_typer(audit_app, name="audit")
