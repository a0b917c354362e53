"""``site-agent fidelity``: the fidelity report of synthetic vs real cases, per sequence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli_support import err, handle_errors, out, print_json
from shared.workspace_lock import locks_workspace


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


@handle_errors
@locks_workspace(create=False)
def fidelity(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Site workspace.")] = Path(
        "workspace"
    ),
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Report folder (default WORKSPACE/reports/fidelity)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Bootstrap resamples for the intervals.")
    ] = 200,
    classifier_steps: Annotated[
        int | None,
        typer.Option(
            "--classifier-steps",
            min=1,
            help="Steps of the diagnostics' classifiers (default: the profile's pretraining).",
        ),
    ] = None,
    recompute: Annotated[
        bool,
        typer.Option(
            "--recompute",
            help="Compute the report again even when the stored one was computed from the same "
            "cases, autoencoder, settings and code (by default that one is shown as it is).",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (with reused: true/false).")
    ] = False,
) -> None:
    """Compare WORKSPACE/cases/synthetic with WORKSPACE/cases/real for t2w, hbv and adc
    separately: KID and Fréchet distance on features of the site's own autoencoder (with
    bootstrap intervals and a real-vs-real baseline), intensity statistics, lesion contrast,
    MS-SSIM diversity, a montage, and whether the set is worth exporting (label fidelity,
    train-on-synthetic-test-on-real, precision/recall). Writes fidelity.json, fidelity.md and
    montage.png. The montage shows real patients: it stays on site and is never part of an
    export. A report whose inputs have not changed since it was computed is shown as stored
    (--recompute computes it again)."""
    from shared.case_format import SEQUENCES
    from site_agent.generative.fidelity_report import write_fidelity_report

    if not json_out:
        err.print("[dim]checking the stored report's inputs, computing it if they changed...[/]")
    report = write_fidelity_report(
        workspace,
        out_dir,
        seed=seed,
        n_boot=n_boot,
        classifier_steps=classifier_steps,
        reuse=not recompute,
    )
    if json_out:
        print_json(report)
        return
    if report["reused"]:
        out.print(
            f"up to date: computed {report['created']} from the same cases, autoencoder, "
            "settings and code (--recompute computes it again)",
            highlight=False,
        )
    c = report["cases"]
    out.print(
        f"{c['real']['total']} real vs {c['synthetic']['total']} synthetic cases "
        f"(features: {report['encoder']['n_features']} per sequence from the site's autoencoder)",
        highlight=False,
    )
    for s in SEQUENCES:  # in this order (a stored report's keys are sorted)
        seq = report["sequences"][s]
        d, b = seq["distance"], seq["distance"]["baseline"]
        lc, dv = seq["lesion_contrast"], seq["diversity"]
        ci = d["kid_ci95"]
        ci_txt = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
        auc = "/".join(_num(v["auc"]) for v in (lc["real"], lc["synthetic"]))
        div = "/".join(_num(v["mean"]) for v in (dv["synthetic"], dv["real"]))
        out.print(
            f"{s:>4}: KID {d['kid']:.3g}{ci_txt} (real-vs-real {b['kid_real_vs_real']:.3g}), "
            f"FD {d['frechet']:.3g} (real-vs-real {b['frechet_real_vs_real']:.3g}), "
            f"lesion AUC real/synthetic {auc}, MS-SSIM synthetic/real {div}",
            markup=False,
            highlight=False,
        )
    out.print(_diagnostics_line(report["diagnostics"]), markup=False, highlight=False)
    paths = report["paths"]
    out.print(f"report: {paths['markdown']}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"montage: {paths['montage']} (real patients: stays on site, never exported)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _diagnostics_line(d: dict[str, Any]) -> str:
    """One line: label fidelity and TSTR beside their real references, recall per sequence."""
    from shared.case_format import SEQUENCES

    if "error" in d:
        return f"worth exporting? not computed: {d['error']}"
    lf, t = d["label_fidelity"], d["tstr"]
    per = d["precision_recall"]
    pr = " ".join(
        f"{s} {_num(per[s]['synthetic']['precision'])}/{_num(per[s]['synthetic']['recall'])}"
        for s in SEQUENCES
        if s in per and per[s]["synthetic"]
    )
    return (
        f"worth exporting? label-fidelity AUC {_num(lf['auc_synthetic'])} (held-out real "
        f"{_num(lf['auc_real_heldout'])}), TSTR AUC {_num(t['auc_train_synthetic'])} (train-real "
        f"{_num(t['auc_train_real'])}), precision/recall {pr}"
    )
