"""``site-agent keys|export|review|audit``: the export gate's commands (parse and print only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shared.cli_support import err, handle_errors, make_group, out, print_json
from shared.workspace_lock import locks_workspace, reads_workspace

WS_OPT = typer.Option("--workspace", "-w", help="Site workspace.")


def _ask_passphrase(env: str, what: str, confirm: bool) -> str:
    """From the environment variable ``env``, else a prompt; never the command line."""
    import os

    value = os.environ.get(env)
    if value is not None:
        return value
    if not typer.get_text_stream("stdin").isatty():
        from shared.errors import InputError

        raise InputError(f"no {what} passphrase: set {env} or run in a terminal")
    return typer.prompt(f"{what} passphrase", hide_input=True, confirmation_prompt=confirm)


def _passphrase(confirm: bool = False) -> str:
    from site_agent.export.keys import PASSPHRASE_ENV

    return _ask_passphrase(PASSPHRASE_ENV, "site key", confirm)


def _reviewer_passphrase(name: str, confirm: bool = False) -> str:
    from site_agent.export.reviewer_keys import REVIEWER_PASSPHRASE_ENV

    return _ask_passphrase(REVIEWER_PASSPHRASE_ENV, f"reviewer {name}'s key", confirm)


def _signer(workspace: Path):
    from site_agent.export.keys import load_signer, site_identity

    site_identity(workspace)  # a missing key says so before asking for a passphrase
    return load_signer(workspace, _passphrase())


@handle_errors
@locks_workspace()
def keys_init(
    site: Annotated[
        str | None, typer.Option("--site", help="Site id printed on bundles (e.g. aurora).")
    ] = None,
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
    reviewer: Annotated[
        str | None,
        typer.Option(
            "--reviewer",
            help="Create this privacy reviewer's own key instead (keys/reviewers/NAME.pem; "
            "passphrase from SITE_AGENT_REVIEWER_PASSPHRASE or a prompt).",
        ),
    ] = None,
) -> None:
    """Create the site's Ed25519 signing key (private key encrypted with a passphrase from
    SITE_AGENT_KEY_PASSPHRASE or a prompt). Send WORKSPACE/keys/site-key.pub to the
    coordinator and read the fingerprint to them over another channel. Refuses when a key
    exists: replace one with `keys rotate`. With --reviewer NAME: a privacy reviewer's own
    key (keys/reviewers/NAME.pem + .pub), which signs `review --approve/--reject`; send
    NAME.pub to the coordinator (`trust add-reviewer`)."""
    from shared.errors import InputError
    from site_agent.export.keys import PUBLIC, check_no_key, check_site_id, init_keys, key_dir

    if reviewer is not None:
        if site is not None:
            raise InputError("give --site (the site key) or --reviewer NAME, not both")
        _reviewer_key_init(workspace, reviewer)
        return
    if site is None:
        raise InputError(
            "give --site SITE to create the site key, or --reviewer NAME for a reviewer's key"
        )
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


def _reviewer_key_init(workspace: Path, name: str) -> None:
    from site_agent.export.keys import site_identity
    from site_agent.export.reviewer_keys import (
        check_no_reviewer_key,
        init_reviewer_key,
        reviewer_files,
    )

    site_identity(workspace)  # no site key, a bad name or an existing key: before the prompt
    check_no_reviewer_key(workspace, name)
    key = init_reviewer_key(workspace, name, _reviewer_passphrase(name, confirm=True))
    out.print(
        f"reviewer {name}: public key {reviewer_files(workspace, name)[1]}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"fingerprint (SHA-256 of the raw key): {key.fingerprint}", highlight=False, soft_wrap=True
    )


@handle_errors
@locks_workspace(create=False)
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
@reads_workspace()
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
        err.print(f"weights: {p['weights']}", markup=False, highlight=False)
    out.print(f"signed bundle: {res.path}", markup=False)
    out.print(f"manifest SHA-256: {res.manifest_sha256}", highlight=False)


def _hold_for_approval(res) -> None:
    """An export the site's policy holds: the folder is written and logged, not released."""
    from shared.errors import PrivacyGateError

    n = res.required_approvals
    if n:
        raise PrivacyGateError(
            f"bundle written to {res.path} for review, not released: 0 of {n} approval(s) "
            f"present, {n} needed (WORKSPACE/export-policy.toml)",
            hint="each reviewer runs `site-agent review BUNDLE --approve --reviewer NAME`; "
            "then `site-agent export pack BUNDLE` packs it for hand-over",
        )


@handle_errors
@locks_workspace(create=False)
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
    positive_fraction: Annotated[
        float,
        typer.Option("--positive-fraction", min=0, max=1, help="Fraction conditioned on csPCa."),
    ] = 0.5,
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
    _hold_for_approval(res)


@handle_errors
@locks_workspace(create=False)
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
    _hold_for_approval(res)


@handle_errors
@locks_workspace(create=False)
def export_pack_cmd(
    bundle: Annotated[
        Path, typer.Argument(help="The bundle folder `export` wrote and reviewers approved.")
    ],
    workspace: Annotated[Path, WS_OPT] = Path("workspace"),
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Tar to write (default: BUNDLE.tar beside it).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Release a reviewed bundle folder as one tar for hand-over, once it carries the approvals
    WORKSPACE/export-policy.toml requires (required_approvals = N) from the site's reviewers.
    Exit 5 when approvals are missing or a reviewer rejected it; exit 4 when the bundle or an
    approval does not verify (altered, copied from another bundle, unknown reviewer)."""
    from site_agent.export.release import check_pack_args, pack_bundle

    check_pack_args(workspace, bundle, out_path)  # bad input before the passphrase prompt
    res = pack_bundle(workspace, bundle, _signer(workspace), out_path)
    if json_out:
        print_json(res.__dict__ | {"tar": str(res.tar)})
        return
    who = ", ".join(res.approvals) or "none"
    err.print(
        f"approvals: {len(res.approvals)} valid ({who}), {res.required} required",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"released bundle {res.bundle_id[:8]}: {res.tar}", markup=False, soft_wrap=True)


@handle_errors
@locks_workspace(create=False, when=lambda kw: kw["report"] is None)  # else it only reads
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
    approve: Annotated[
        bool,
        typer.Option(
            "--approve",
            help="Sign your approval with your reviewer key (needs --reviewer), once the "
            "bundle verifies and passes the PHI scan.",
        ),
    ] = False,
    reject: Annotated[
        bool, typer.Option("--reject", help="Sign a rejection (needs --reviewer and --reason).")
    ] = False,
    reviewer: Annotated[
        str | None,
        typer.Option("--reviewer", help="Your reviewer name (from keys init --reviewer)."),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why (required with --reject); it travels with the bundle."),
    ] = None,
) -> None:
    """Check a bundle's signature and hashes, re-run the PHI scan, print a summary and write
    review.md (+ montage.png; with --html a self-contained review.html). Exits 5 on any
    finding. With --approve or --reject --reason TEXT and --reviewer NAME, the reviewer's key
    (passphrase from SITE_AGENT_REVIEWER_PASSPHRASE or a prompt) signs the decision over the
    manifest digest into BUNDLE/approvals/NAME.json + .sig and the audit log records it (the
    site key's passphrase is needed for that entry); a refused attempt is logged too."""
    from shared.bundle.signing import fingerprint, load_public_key
    from site_agent.export.approvals import check_decision_args
    from site_agent.export.keys import public_keys
    from site_agent.export.review import review_bundle

    decision = check_decision_args(approve, reject, reviewer, reason)
    if decision is not None:
        _decide(bundle, workspace, report, html, public_key, decision, str(reviewer), reason)
        return
    if public_key is not None:
        k = load_public_key(public_key)
        keys = {fingerprint(k): k}
        described = f"the public key in {public_key}"
    else:
        keys = public_keys(workspace)
        described = "the site's public key"
    res = review_bundle(bundle, workspace, keys, report, html=html, key_description=described)
    _print_review(res, bundle)


def _decide(
    bundle: Path,
    workspace: Path,
    report: Path | None,
    html: bool,
    public_key: Path | None,
    decision: str,
    reviewer: str,
    reason: str | None,
) -> None:
    """``review --approve|--reject``: verify and scan, then sign and log the decision."""
    from shared.bundle.approval import APPROVED
    from shared.errors import InputError, PrivacyGateError
    from site_agent.export.approvals import (
        audited_attempt,
        bundle_folder,
        claimed_bundle,
        record_decision,
    )
    from site_agent.export.keys import public_keys, site_identity
    from site_agent.export.review import review_bundle
    from site_agent.export.reviewer_keys import check_reviewer_exists, load_reviewer_key

    if public_key is not None:
        raise InputError(
            "--approve and --reject verify the bundle with the site's own keys: leave out "
            "--public-key"
        )
    site_identity(workspace)  # no site key, no reviewer key: said before any prompt
    check_reviewer_exists(workspace, reviewer)
    signer = _signer(workspace)  # the audit entry is the site's
    made = []
    details = claimed_bundle(bundle) | {"reviewer": reviewer, "decision": decision}
    with audited_attempt(workspace, signer, "approval-refused", details):
        root = bundle_folder(bundle)
        key = load_reviewer_key(workspace, reviewer, _reviewer_passphrase(reviewer))

        def decide(vb, findings: list[str]) -> None:
            if findings and decision == APPROVED:
                raise PrivacyGateError(
                    f"not approved: {len(findings)} PHI finding(s) in {bundle}, e.g. {findings[0]}",
                    hint="run `site-agent review BUNDLE` to see them all",
                )
            made.append(
                record_decision(
                    workspace, signer, root, key, decision, reason, vb.manifest, vb.manifest_sha256
                )
            )

        res = review_bundle(
            root, workspace, public_keys(workspace), report, html=html, decide=decide
        )
    dec = made[0]
    out.print(
        f"{dec.decision} by {dec.reviewer}: {dec.record} (audit entry {dec.audit_seq})",
        highlight=False,
        soft_wrap=True,
    )
    approved = sorted(
        {str(a.reviewer) for a in res.approvals if a.valid and a.decision == APPROVED}
    )
    err.print(
        f"approvals: {len(approved)} valid ({', '.join(approved) or 'none'}); the export policy "
        f"requires {res.required_approvals}"
        + (
            f"; release with `site-agent export pack {bundle}`"
            if len(approved) >= res.required_approvals and decision == APPROVED
            else ""
        ),
        highlight=False,
        soft_wrap=True,
    )
    _print_review(res, bundle)


def _print_review(res, bundle: Path) -> None:
    """The review's summary table, the page's path and the findings (exit 5 on any)."""
    from rich.table import Table

    from shared.errors import PrivacyGateError

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
    t.add_row(
        "approvals",
        ("; ".join(a.line() for a in res.approvals) or "none")
        + f" (policy: {res.required_approvals} required)",
    )
    t.add_row("report", str(res.report_dir / "review.md"))
    out.print(t)
    if res.html_path is not None:  # on its own line: a table cell would cut a long path
        out.print(f"review page: {res.html_path}", markup=False, highlight=False, soft_wrap=True)
    for f in res.findings[:20]:
        err.print(f"  [red]finding[/] {escape(str(f))}", highlight=False)
    if not res.ok:
        raise PrivacyGateError(f"{len(res.findings)} PHI finding(s) in {bundle}")


@handle_errors
@reads_workspace()
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
    keys = make_group("The site's signing key.")
    keys.command("init")(keys_init)
    keys.command("show")(keys_show)
    keys.command("rotate")(keys_rotate)
    app.add_typer(keys, name="keys")
    export = make_group("Signed bundles through the privacy gate.")
    export.command("synthetic")(export_synthetic_cmd)
    export.command("weights")(export_weights_cmd)
    export.command("pack")(export_pack_cmd)
    app.add_typer(export, name="export")
    app.command("review")(review_cmd)
    audit_app = make_group("The tamper-evident export log.")
    audit_app.command("verify")(audit_verify_cmd)
    app.add_typer(audit_app, name="audit")
