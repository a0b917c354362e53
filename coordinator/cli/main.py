"""``coordinator``: the external institution's side of the toolkit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from coordinator.cli import bundle_commands, demo_command, federate_command, study_command
from shared.cli_support import err, handle_errors, make_app, print_json, progress_bar
from shared.errors import EXIT_CODES_HELP, InputError, NothingProducedError
from shared.workspace_lock import locks_workspace

app = make_app(
    "coordinator",
    "Coordinator for prostate bpMRI studies: ingest the external institution's data (DICOM or "
    "the PI-CAI layout), verify and import site bundles, run the source-free adaptation study "
    "and Flower federations. " + EXIT_CODES_HELP,
)


@app.command("ingest")
@handle_errors
@locks_workspace()
def ingest(
    picai_dir: Annotated[
        Path | None,
        typer.Option(
            "--picai-dir", help="PI-CAI layout root (images/<patient>/<patient>_<study>_*.mha)."
        ),
    ] = None,
    marksheet: Annotated[
        Path | None,
        typer.Option("--marksheet", help="PI-CAI marksheet CSV (case_csPCa, case_ISUP)."),
    ] = None,
    dicom_dir: Annotated[
        Path | None,
        typer.Option(
            "--dicom-dir", help="Or: a DICOM export, read exactly as the site agent reads it."
        ),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Label CSV for --dicom-dir.")
    ] = None,
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Coordinator workspace.")
    ] = Path("coordinator-workspace"),
    profile: Annotated[str, typer.Option("--profile", help="tiny, cpu or paper.")] = "tiny",
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Ingest the external institution's cases into WORKSPACE/cases/external, in the same case
    format the sites use."""
    from shared.profiles import get_profile

    prof = get_profile(profile)
    if (picai_dir is None) == (dicom_dir is None):
        raise InputError("give exactly one of --picai-dir or --dicom-dir")
    if picai_dir is not None:
        from coordinator.ingest.picai import ingest_picai

        if marksheet is None and (picai_dir / "marksheet.csv").is_file():
            marksheet = picai_dir / "marksheet.csv"
        n = (
            len(list((picai_dir / "images").glob("*/*_t2w.mha")))
            if (picai_dir / "images").is_dir()
            else None
        )
        with progress_bar("ingesting PI-CAI cases", n, enabled=not json_out) as advance:
            report = ingest_picai(picai_dir, marksheet, workspace, prof, progress=advance)
        if not report.ingested and not report.unchanged:
            raise NothingProducedError(f"no PI-CAI case in {picai_dir} could be ingested")
        result = report.to_json()
    else:
        import os

        from coordinator.ingest.dicom import run_dicom_ingest

        assert dicom_dir is not None
        result = run_dicom_ingest(
            dicom_dir,
            labels,
            workspace,
            profile,
            None,
            None,
            os.cpu_count() or 1,
            True,
            store="external",
        ).to_json()
    if json_out:
        print_json(result)
    else:
        err.print(
            f"[green]{len(result['ingested'])} case(s) ingested[/], "
            f"{len(result['unchanged'])} unchanged, {len(result['failed'])} failed; "
            f"cases in {escape(str(workspace / 'cases' / 'external'))}"
        )


app.command("study")(study_command.study)
app.command("federate")(federate_command.federate)
app.command("demo")(demo_command.demo)
bundle_commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
