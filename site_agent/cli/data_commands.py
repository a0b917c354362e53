"""``site-agent phantom | scan | ingest``: from a DICOM folder to the case store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shared.cli_support import handle_errors, out, print_json, progress_bar
from shared.workspace_lock import locks_workspace
from site_agent.cli.ingest_flow import run_dicom_ingest, scan_with_progress

DicomDir = Annotated[
    Path,
    typer.Option(
        "--dicom-dir",
        help="Folder with the DICOM export (searched recursively).",
        show_default=False,
    ),
]
Workspace = Annotated[Path, typer.Option("--workspace", "-w", help="Site workspace folder.")]
Profile = Annotated[str, typer.Option("--profile", help="tiny, cpu or paper.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON report on stdout.")]
Workers = Annotated[int, typer.Option("--workers", help="Parallel processes (0 = all cores).")]


def _workers(n: int) -> int:
    import os

    return n if n > 0 else (os.cpu_count() or 1)


@handle_errors
def phantom(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the phantom site to.")],
    cases: Annotated[int, typer.Option("--cases", min=1, help="Number of studies.")] = 20,
    institution: Annotated[
        str,
        typer.Option(
            "--institution",
            help="Preset: aurora (Siemens 3T), borealis (GE 1.5T), cascade "
            "(Philips 3T), external (Philips 1.5T).",
        ),
    ] = "aurora",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (deterministic output).")] = 0,
    profile: Profile = "tiny",
    workers: Workers = 0,
    json_out: Json = False,
) -> None:
    """Write phantom bpMRI studies as a scanner would export them (DICOM), plus labels.csv,
    truth masks and the same cases in the PI-CAI layout. Phantom data checks the machinery;
    it carries no clinical truth."""
    from shared.phantom.consortium import generate_site
    from shared.phantom.institutions import get_institution
    from shared.profiles import get_profile

    get_institution(institution)
    get_profile(profile)
    with progress_bar(f"phantom {institution}", cases, enabled=not json_out) as advance:
        truths = generate_site(
            out_dir, cases, institution, seed, profile, progress=advance, workers=_workers(workers)
        )
    summary = {
        "out": str(out_dir),
        "institution": institution,
        "cases": len(truths),
        "positives": sum(t.cspca for t in truths),
        "files": sum(t.n_files for t in truths),
        "profile": profile,
        "seed": seed,
    }
    if json_out:
        print_json(summary)
    else:
        out.print(
            f"wrote {summary['cases']} studies ({summary['positives']} csPCa-positive, "
            f"{summary['files']} DICOM files) to {out_dir}/dicom; labels in "
            f"{out_dir}/labels.csv; PI-CAI copy in {out_dir}/picai",
            markup=False,
        )


def print_scan_table(result) -> None:  # result: ScanResult
    from rich.table import Table

    # Header strings (series descriptions, reasons, paths) are data: escaped, never markup.
    table = Table(title=escape(f"bpMRI found in {result.root} ({result.n_files} files)"))
    for col in ("study", "vendor", "t2w", "hbv", "adc", "status"):
        table.add_column(col)

    def cell(s, role: str) -> str:
        v = s.chosen.get(role)
        if v is None:
            return "[red]-[/]"
        extra = f" b={v.b_value:g}" if role == "hbv" else ""
        extra += " (calc)" if v.computed else ""
        return escape(f"{v.description}{extra} [{v.n_frames}]")

    for s in result.studies:
        status = "[green]ok[/]" if s.complete else "[red]" + escape("; ".join(s.problems)) + "[/]"
        table.add_row(
            "…" + s.study_uid[-12:],
            escape(s.manufacturer),
            cell(s, "t2w"),
            cell(s, "hbv"),
            cell(s, "adc"),
            status,
        )
    out.print(table)
    if result.skipped:
        reasons = Counter(s.reason for s in result.skipped)
        t2 = Table(title=f"{len(result.skipped)} file(s) skipped")
        t2.add_column("reason")
        t2.add_column("files", justify="right")
        t2.add_column("example")
        for reason, n in reasons.most_common():
            ex = next(s.path for s in result.skipped if s.reason == reason)
            t2.add_row(escape(reason), str(n), escape(str(ex)))
        out.print(t2)


@handle_errors
def scan_cmd(
    dicom_dir: DicomDir,
    mapping: Annotated[
        Path | None,
        typer.Option(
            "--mapping",
            help='Optional JSON {"t2w"|"hbv"|"adc": regex on SeriesDescription} '
            "to override the automatic choice.",
        ),
    ] = None,
    workers: Workers = 0,
    json_out: Json = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List every volume and its class.")
    ] = False,
) -> None:
    """Find the axial T2, high-b DWI and ADC of every study (headers only) and list every
    skipped file with its reason."""
    result = scan_with_progress(dicom_dir, mapping, _workers(workers), json_out)
    if json_out:
        print_json(result.to_json())
        return
    print_scan_table(result)
    if verbose:
        for s in result.studies:
            out.print(f"[bold]{escape(s.study_uid)}[/]")
            for v in s.volumes:
                out.print(f"  {v.key:45s} {v.kind:6s} {v.reason}", markup=False, highlight=False)
    n_ok = sum(s.complete for s in result.studies)
    out.print(f"{n_ok} of {len(result.studies)} studies have t2w, hbv and adc.")


@handle_errors
@locks_workspace()
def ingest(
    dicom_dir: DicomDir,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="CSV keyed by StudyInstanceUID, AccessionNumber or PatientID+"
            "StudyDate, with cspca/isup/pirads columns. Optional.",
        ),
    ] = None,
    workspace: Workspace = Path("workspace"),
    profile: Profile = "tiny",
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="Folder with <StudyInstanceUID>_prostate.nii.gz (centring) and "
            "_lesion.nii.gz (evaluation) masks. Optional.",
        ),
    ] = None,
    mapping: Annotated[Path | None, typer.Option("--mapping", help="See `scan --help`.")] = None,
    workers: Workers = 0,
    json_out: Json = False,
) -> None:
    """Build one case per study (t2w, hbv, adc on the profile grid) in WORKSPACE/cases/real.
    Re-running skips cases already ingested from the same inputs."""
    report = run_dicom_ingest(
        dicom_dir,
        labels,
        workspace,
        profile,
        masks,
        mapping,
        _workers(workers),
        json_out,
        store="real",
    )
    if json_out:
        print_json(report.to_json())


def register(app: typer.Typer) -> None:
    app.command("phantom")(phantom)
    app.command("scan")(scan_cmd)
    app.command("ingest")(ingest)
