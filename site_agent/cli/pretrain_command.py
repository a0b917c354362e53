"""``site-agent pretrain``: train the csPCa classifier on the site's own cases (on premises)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json, progress_bar
from shared.workspace_lock import locks_workspace


@handle_errors
@locks_workspace(create=False)
def pretrain_cmd(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Site workspace.")] = Path(
        "workspace"
    ),
    sequences: Annotated[
        str, typer.Option("--sequences", help="bpmri (t2w, hbv, adc) or t2w.")
    ] = "bpmri",
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="real (the real-source condition) or reconstructed (real cases passed through "
            "the site's autoencoder: the control that separates generation from denoising).",
        ),
    ] = "real",
    profile: Annotated[str, typer.Option("--profile", help="tiny, cpu or paper.")] = "tiny",
    steps: Annotated[
        int | None, typer.Option("--steps", help="Training steps (default: the profile's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the saved config as JSON.")
    ] = False,
) -> None:
    """Pretrain the classifier on the site's real cases (real-source condition) or on their
    autoencoder reconstructions (reconstructed-source control); weights (safetensors + config)
    go to WORKSPACE/models/classifier-SOURCE-SEQUENCES and stay on site until exported through
    the privacy gate."""
    from shared.case_format import list_cases
    from shared.classifier.data import BPMRI, T2_ONLY
    from shared.classifier.pretrain import pretrain
    from shared.classifier.training import TrainConfig
    from shared.errors import InputError
    from shared.profiles import get_profile

    if sequences not in ("bpmri", "t2w"):
        raise InputError(f"--sequences must be bpmri or t2w, not {sequences!r}")
    seqs = BPMRI if sequences == "bpmri" else T2_ONLY
    prof = get_profile(profile)
    if source not in ("real", "reconstructed"):
        raise InputError(f"--source must be real or reconstructed, not {source!r}")
    if source == "reconstructed":
        from site_agent.generative.reconstruct import reconstruct_cases

        folders = reconstruct_cases(workspace)
    else:
        folders = list_cases(workspace / "cases" / "real")
    if not folders:
        raise InputError(
            f"no ingested cases in {workspace / 'cases' / 'real'}",
            hint="run `site-agent ingest` first",
        )
    c = prof.classifier
    cfg = TrainConfig(
        network=c.network,
        in_channels=len(seqs),
        steps=steps or c.pretrain_steps,
        batch_size=c.batch_size,
        lr=c.lr_pretrain,
        eval_every=max(5, (steps or c.pretrain_steps) // 12),
        seed=seed,
    )
    dest = workspace / "models" / f"classifier-{source}-{sequences}"
    with progress_bar("pretraining classifier", cfg.steps, enabled=not json_out) as advance:
        config = pretrain(
            folders,
            seqs,
            cfg,
            dest,
            {"condition": f"{source}-source", "profile": prof.name},
            progress=lambda step, rec: advance(1),
        )
    if json_out:
        print_json(config)
    else:
        err.print(
            f"trained on {config['cases']} cases ({config['positives']} positive); "
            f"best validation AP {config['val_ap']:.3f} at step {config['best_step']}"
        )
        out.print(f"weights in {dest}", markup=False)
