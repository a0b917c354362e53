"""``site-agent fidelity``: the fidelity report of synthetic vs real cases, per sequence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


@handle_errors
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
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare WORKSPACE/cases/synthetic with WORKSPACE/cases/real for t2w, hbv and adc
    separately: KID and Fréchet distance on features of the site's own autoencoder (with
    bootstrap intervals and a real-vs-real baseline), intensity statistics, lesion contrast,
    MS-SSIM diversity, and a montage. Writes fidelity.json, fidelity.md and montage.png. The
    montage shows real patients: it stays on site and is never part of an export."""
    from site_agent.generative.fidelity_report import write_fidelity_report

    if not json_out:
        err.print("[dim]encoding cases and computing the report...[/]")
    report = write_fidelity_report(workspace, out_dir, seed=seed, n_boot=n_boot)
    if json_out:
        print_json(report)
        return
    c = report["cases"]
    out.print(
        f"{c['real']['total']} real vs {c['synthetic']['total']} synthetic cases "
        f"(features: {report['encoder']['n_features']} per sequence from the site's autoencoder)",
        highlight=False,
    )
    for s, seq in report["sequences"].items():
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
            highlight=False,
        )
    paths = report["paths"]
    out.print(f"report: {paths['markdown']}", highlight=False, soft_wrap=True)
    out.print(
        f"montage: {paths['montage']} (real patients: stays on site, never exported)",
        highlight=False,
        soft_wrap=True,
    )
