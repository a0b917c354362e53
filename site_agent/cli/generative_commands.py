"""``site-agent train`` and ``site-agent generate``: the on-premises generative model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json, stderr_is_terminal
from shared.workspace_lock import locks_workspace

if TYPE_CHECKING:
    from shared.profiles import Profile

STAGE_NAMES = {
    "autoencoder": "autoencoder",
    "latents": "encoding latents",
    "diffusion": "diffusion model",
    "sampling": "sampling",
}
# Stages that resume from a checkpoint: their first callback after a resume carries the
# checkpoint's step and no loss (site_agent.generative.trainloop.run_training).
RESUMABLE = ("autoencoder", "diffusion")


def _resumed(seen: set[str], stage: str, step: int, loss: float | None) -> bool:
    """Whether this first callback of ``stage`` announces a resume from a checkpoint."""
    first = stage not in seen
    seen.add(stage)
    return first and stage in RESUMABLE and step > 0 and loss is None


@contextmanager
def stage_progress(enabled: bool, terminal: bool | None = None) -> Iterator[object]:
    """One rich bar per stage with loss, steps/s and ETA on a terminal; plain timestamped
    lines otherwise (a service manager's journal, a log file). Either way a resumed stage
    says "resumed STAGE from step N". Yields the pipeline's callback."""
    if not enabled:
        yield None
        return
    seen: set[str] = set()
    if not (stderr_is_terminal() if terminal is None else terminal):
        from shared.progress_log import ProgressLog

        log = ProgressLog()

        def plain(stage: str, step: int, total: int, loss: float | None) -> None:
            resumed = _resumed(seen, stage, step, loss)
            log.update(STAGE_NAMES.get(stage, stage), step, total, loss, resumed=resumed)

        yield plain
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class StepsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed:.2f} steps/s" if task.speed else "")

    prog = Progress(
        TextColumn("[bold]{task.description:18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        StepsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
    tasks: dict[str, int] = {}

    def cb(stage: str, step: int, total: int, loss: float | None) -> None:
        if _resumed(seen, stage, step, loss):
            prog.console.print(
                f"resumed {STAGE_NAMES.get(stage, stage)} from step {step} of {total}",
                markup=False,
                highlight=False,
            )
        if stage not in tasks:
            tasks[stage] = prog.add_task(STAGE_NAMES.get(stage, stage), total=total, loss="-")
        fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
        prog.update(tasks[stage], completed=step, total=total, **fields)

    with prog:
        yield cb


def with_steps(prof: Profile, autoencoder: int | None, diffusion: int | None) -> Profile:
    """The profile with its training lengths overridden (None keeps the profile's)."""
    import dataclasses

    if autoencoder:
        prof = dataclasses.replace(
            prof, autoencoder=dataclasses.replace(prof.autoencoder, steps=autoencoder)
        )
    if diffusion:
        prof = dataclasses.replace(
            prof, diffusion=dataclasses.replace(prof.diffusion, train_steps=diffusion)
        )
    return prof


def _check_train_inputs(
    dicom_dir: Path | None,
    labels: Path | None,
    masks: Path | None,
    workspace: Path,
    autoencoder_weights: Path | None,
) -> None:
    """Refuse what would fail later, before torch is imported or anything is written."""
    from shared.case_format import list_cases
    from shared.errors import InputError

    if autoencoder_weights is not None and not autoencoder_weights.exists():
        raise InputError(f"autoencoder weights not found: {autoencoder_weights}")
    if dicom_dir is None:
        ignored = [f"--{n}" for n, v in (("labels", labels), ("masks", masks)) if v is not None]
        if ignored:
            raise InputError(
                f"{' and '.join(ignored)} only apply while ingesting: give --dicom-dir too",
                hint="or leave them out to train on the cases already in the workspace",
            )
        store = workspace / "cases" / "real"
        if not list_cases(store):
            raise InputError(
                f"no ingested cases in {store}",
                hint="give --dicom-dir (and --labels) to ingest first, or run `site-agent ingest`",
            )


@handle_errors
@locks_workspace(create=lambda kw: kw["dicom_dir"] is not None)
def train(
    dicom_dir: Annotated[
        Path | None,
        typer.Option(
            "--dicom-dir",
            help="DICOM export to scan and ingest first (unchanged studies are "
            "reused). Leave out to train on an already-ingested workspace.",
        ),
    ] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Label CSV (see ingest).")] = None,
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Site workspace.")] = Path(
        "workspace"
    ),
    profile: Annotated[str, typer.Option("--profile", help="tiny, cpu or paper.")] = "tiny",
    autoencoder_weights: Annotated[
        Path | None,
        typer.Option(
            "--autoencoder-weights",
            help="Optional local pretrained AutoencoderKL weights (nothing is ever downloaded).",
        ),
    ] = None,
    masks: Annotated[Path | None, typer.Option("--masks", help="See ingest --help.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    autoencoder_steps: Annotated[
        int | None,
        typer.Option(
            "--autoencoder-steps", min=1, help="Override the profile's autoencoder steps."
        ),
    ] = None,
    diffusion_steps: Annotated[
        int | None,
        typer.Option("--diffusion-steps", min=1, help="Override the profile's diffusion steps."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Ingest (if --dicom-dir), then train the autoencoder and the label-conditioned latent
    diffusion model on the site's real cases. Resumable: rerun the same command after an
    interruption. Nothing leaves the site."""
    from shared.profiles import get_profile
    from site_agent.cli.ingest_flow import run_dicom_ingest

    prof = with_steps(get_profile(profile), autoencoder_steps, diffusion_steps)
    _check_train_inputs(dicom_dir, labels, masks, workspace, autoencoder_weights)
    if dicom_dir is not None:
        import os

        run_dicom_ingest(
            dicom_dir,
            labels,
            workspace,
            prof.name,
            masks,
            None,
            os.cpu_count() or 1,
            json_out,
            store="real",
        )
    from site_agent.generative.pipeline import model_dir, train_generative  # torch: after checks

    with stage_progress(not json_out) as cb:
        summary = train_generative(
            workspace,
            prof,
            seed=seed,
            progress=cb,  # type: ignore[arg-type]
            autoencoder_weights=autoencoder_weights,
        )
    if json_out:
        print_json(summary)
        return
    cases = summary["cases"]
    fid = summary.get("fidelity", {}).get("summary", "")
    out.print(
        f"trained on {cases['total']} cases ({cases['positive']} csPCa-positive, "
        f"{cases['negative']} negative), profile {prof.name}; "
        f"{cases.get('held_out', 0)} real case(s) held out for the privacy screen"
    )
    if fid:
        gate = summary["fidelity"].get("min_retention") or 0
        note = (
            f"gate: at least {gate:.0%} on {', '.join(summary['fidelity']['gated_sequences'])}"
            if gate > 0
            else f"gate off in profile {prof.name}"
        )
        out.print(
            f"lesion-contrast retention of the autoencoder: {fid} ({note})",
            markup=False,
            highlight=False,
        )
    out.print(
        f"autoencoder: {model_dir(workspace, 'autoencoder')} ({summary['autoencoder']['status']})",
        markup=False,
    )
    out.print(
        f"diffusion model: {model_dir(workspace, 'diffusion')} ({summary['diffusion']['status']})",
        markup=False,
    )
    out.print(f"report: {workspace / 'reports' / 'generative-training.json'}", markup=False)


@handle_errors
@locks_workspace(create=False)
def generate(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of synthetic cases.")],
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Site workspace.")] = Path(
        "workspace"
    ),
    positive_fraction: Annotated[
        float,
        typer.Option(
            "--positive-fraction",
            min=0.0,
            max=1.0,
            help="Fraction conditioned on csPCa (0.5 beat the site's prevalence on validation "
            "in benchmarks/synthetic_value.py).",
        ),
    ] = 0.5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    sampler: Annotated[
        str | None,
        typer.Option(
            "--sampler",
            help="rflow (Euler) or rflow-heun (second order) for rflow models; ddim, or "
            "ddpm (the 1000-step baseline) for DDPM models. Default: the one the model was "
            "trained with (its profile's then; cpu: rflow-heun, 3 steps).",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Sampling steps (rflow-heun: n steps cost 2n - 1 network passes). Default: the "
            "model's with its own sampler, 50 with another.",
        ),
    ] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="Classifier-free guidance scale.")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the case folders as JSON.")
    ] = False,
) -> None:
    """Write N synthetic cases (case format, origin synthetic, with their conditioning label)
    to WORKSPACE/cases/synthetic. Rerunning with the same settings reuses finished batches."""
    from site_agent.generative.pipeline import generate as run_generate
    from site_agent.generative.pipeline import synthetic_store

    with stage_progress(not json_out) as cb:
        folders = run_generate(
            workspace,
            n,
            positive_fraction,
            seed=seed,
            sampler=sampler,
            guidance=guidance,
            steps=steps,
            progress=cb,
        )  # type: ignore[arg-type]
    report = _fidelity_after_generate(workspace)
    if json_out:
        print_json({"cases": [str(f) for f in folders], "fidelity_report": report})
    else:
        out.print(f"{len(folders)} synthetic cases in {synthetic_store(workspace)}", markup=False)
        if report:
            out.print(f"fidelity report (stays on site): {report}", markup=False)


def _fidelity_after_generate(workspace: Path) -> str | None:
    """Write the fidelity report when there is enough to compare; say why not otherwise."""
    from rich.markup import escape

    from shared.errors import InputError
    from site_agent.generative.fidelity_report import write_fidelity_report

    try:
        return str(write_fidelity_report(workspace)["paths"]["markdown"])
    except InputError as exc:
        err.print(f"[yellow]no fidelity report:[/] {escape(exc.message)}", highlight=False)
        return None


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("generate")(generate)
