"""``site-agent pull | receive``: bring studies from the hospital PACS into WORKSPACE/incoming."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shared.cli_support import err, handle_errors, out, print_json
from shared.errors import InputError

if TYPE_CHECKING:
    from site_agent.ingest.pull import PullReport
    from site_agent.ingest.sources import PacsSource

_DATE = re.compile(r"^(\d{8})?-?(\d{8})?$")
_AE = re.compile(r"^[ -~]{1,16}$")

Workspace = Annotated[Path, typer.Option("--workspace", "-w", help="Site workspace folder.")]
Json = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]


def _ae(value: str, option: str) -> str:
    if not _AE.match(value) or "\\" in value or not value.strip():
        raise InputError(f"{option} must be 1-16 printable characters, not {value!r}")
    return value.strip()


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--dimse must be HOST:PORT, not {value!r}")
    return host, int(port)


def _source(
    dicomweb: str | None,
    dimse: str | None,
    called_ae: str | None,
    calling_ae: str,
    retrieve: str,
    move_port: int,
    move_ae: str | None,
    credentials: Path | None,
    ca_bundle: Path | None,
    allow_http: bool,
    limits: Any,
) -> PacsSource:
    if (dicomweb is None) == (dimse is None):
        raise InputError("give exactly one of --dicomweb URL or --dimse HOST:PORT")
    if ca_bundle is not None and not ca_bundle.is_file():
        raise InputError(f"CA bundle not found: {ca_bundle}")
    if dicomweb is not None:
        from site_agent.ingest.credentials import load_credentials
        from site_agent.ingest.dicomweb import DicomWebSource

        return DicomWebSource(
            dicomweb,
            load_credentials(credentials),
            limits,
            str(ca_bundle) if ca_bundle else None,
            allow_http,
        )
    from site_agent.ingest.dimse import DimseConfig, DimseSource

    assert dimse is not None
    host, port = _host_port(dimse)
    if called_ae is None:
        raise InputError("--dimse needs --called-ae (the PACS's AE title)")
    if retrieve not in ("get", "move"):
        raise InputError(f"--retrieve must be get or move, not {retrieve!r}")
    cfg = DimseConfig(
        host,
        port,
        _ae(called_ae, "--called-ae"),
        _ae(calling_ae, "--calling-ae"),
        retrieve,
        _ae(move_ae, "--move-ae") if move_ae else None,
        move_port,
    )
    return DimseSource(cfg, limits)


@handle_errors
def pull_cmd(
    workspace: Workspace = Path("workspace"),
    dicomweb: Annotated[
        str | None,
        typer.Option("--dicomweb", help="DICOMweb service root, e.g. https://pacs/dicom-web."),
    ] = None,
    dimse: Annotated[
        str | None, typer.Option("--dimse", help="DIMSE PACS as HOST:PORT (C-FIND + C-GET/MOVE).")
    ] = None,
    called_ae: Annotated[
        str | None, typer.Option("--called-ae", help="The PACS's AE title.")
    ] = None,
    calling_ae: Annotated[
        str, typer.Option("--calling-ae", help="This agent's AE title, as the PACS knows it.")
    ] = "SITEAGENT",
    retrieve: Annotated[
        str, typer.Option("--retrieve", help="get (C-GET) or move (C-MOVE to our own SCP).")
    ] = "get",
    move_port: Annotated[
        int, typer.Option("--move-port", min=1, max=65535, help="Our storage SCP port (C-MOVE).")
    ] = 11113,
    move_ae: Annotated[
        str | None, typer.Option("--move-ae", help="C-MOVE destination AE (default: calling AE).")
    ] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            "--credentials",
            help='0600 JSON file {"username","password"} or {"token"}. Or the environment: '
            "SITE_AGENT_PACS_USER/SITE_AGENT_PACS_PASSWORD or SITE_AGENT_PACS_TOKEN. Never "
            "on the command line.",
        ),
    ] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="The site's CA bundle (PEM) for HTTPS.")
    ] = None,
    allow_http: Annotated[
        bool, typer.Option("--allow-http", help="Allow plain HTTP to a non-loopback host.")
    ] = False,
    study_date: Annotated[
        str | None, typer.Option("--study-date", help="YYYYMMDD, YYYYMMDD-YYYYMMDD or open range.")
    ] = None,
    description: Annotated[
        str | None,
        typer.Option("--description", help="StudyDescription pattern (DICOM wildcards * ?)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Pull the studies of this label CSV (its key column)."),
    ] = None,
    study_uid: Annotated[
        list[str] | None, typer.Option("--study-uid", help="A StudyInstanceUID (repeatable).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N studies.")] = None,
    mapping: Annotated[Path | None, typer.Option("--mapping", help="See `scan --help`.")] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=32, help="Parallel requests/associations.")
    ] = 4,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds per request or DIMSE message.")
    ] = 30.0,
    retries: Annotated[
        int, typer.Option("--retries", min=0, max=10, help="Retries with backoff after a failure.")
    ] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be fetched.")] = False,
    json_out: Json = False,
) -> None:
    """Retrieve bpMRI studies from the PACS into WORKSPACE/incoming, only the series ingest will
    use (the scan's rules on the query metadata; the whole study when the metadata cannot
    decide). Resumable: instances already there are skipped. Then: site-agent train
    --dicom-dir WORKSPACE/incoming."""
    from shared.dicom.scan import load_mapping
    from site_agent.ingest.pull import pull, queries_from_labels
    from site_agent.ingest.sources import Limits, StudyQuery

    if study_date is not None and not (
        _DATE.match(study_date) and any(c.isdigit() for c in study_date)
    ):
        raise InputError(f"--study-date must be YYYYMMDD or YYYYMMDD-YYYYMMDD, not {study_date!r}")
    if study_uid and labels:
        raise InputError("give --study-uid or --labels, not both")
    from site_agent.ingest.incoming import valid_uid

    for uid in study_uid or []:
        if not valid_uid(uid):
            raise InputError(f"--study-uid {uid!r} is not a DICOM UID")
    if workspace.exists() and not workspace.is_dir():
        raise InputError(f"workspace is not a folder: {workspace}")
    mapping_rules = load_mapping(mapping)
    limits = Limits(concurrency, timeout, retries)
    base = StudyQuery(study_date, description)
    if labels is not None:
        from shared.ingest.labels import read_labels

        queries = queries_from_labels(read_labels(labels), base)
        if not queries:
            raise InputError(f"labels file {labels} lists no study")
    elif study_uid:
        queries = [StudyQuery(study_date, description, study_uid=u) for u in study_uid]
    else:
        queries = [base]
    source = _source(
        dicomweb, dimse, called_ae, calling_ae, retrieve, move_port, move_ae,
        credentials, ca_bundle, allow_http, limits,
    )  # fmt: skip
    try:
        with _pull_progress(not json_out) as events:
            report = pull(source, workspace, queries, limits, mapping_rules, dry_run, events, limit)
    finally:
        source.close()
    if json_out:
        print_json(report.to_json())
        return
    _print_report(report)


def _pull_progress(enabled: bool) -> Any:
    """Rich progress: studies planned, then instances with MB/s and ETA."""
    from contextlib import contextmanager

    from site_agent.ingest.pull import PullEvents

    @contextmanager
    def cm() -> Any:
        if not enabled:
            yield PullEvents()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                mb = task.fields.get("bytes", 0) / 1e6
                secs = task.elapsed or 0.0
                return Text(f"{mb:.1f} MB, {mb / secs:.2f} MB/s" if secs > 0 and mb else "")

        prog = Progress(
            TextColumn("[bold]{task.description:10}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
        )
        tasks: dict[str, Any] = {}

        def studies(n: int) -> None:
            tasks["studies"] = prog.add_task("studies", total=n, bytes=0)

        def study_planned(_plan: Any) -> None:
            prog.advance(tasks["studies"])

        def planned(n: int, _bytes: int) -> None:
            tasks["instances"] = prog.add_task("instances", total=n, bytes=0)

        def instance(nbytes: int) -> None:
            t = tasks["instances"]
            done = prog.tasks[t].fields.get("bytes", 0)
            prog.update(t, advance=1, bytes=done + nbytes)

        with prog:
            yield PullEvents(studies, planned, instance, study_planned)

    return cm()


def _print_report(r: PullReport) -> None:
    # Paths and reasons are data: printed as themselves, never read as rich markup.
    from rich.markup import escape

    mode = "would fetch" if r.dry_run else "fetched"
    for plan in r.plans:
        tag = {"selected": "[green]series[/]", "whole-study": "[yellow]whole[/]"}.get(
            plan["mode"], "[red]skip[/]"
        )
        out.print(
            f"{tag} …{plan['study_uid'][-16:]}: {plan['instances']} of {plan['study_instances']} "
            f"instance(s) in {plan['series']} of {plan['study_series']} series — "
            f"{escape(plan['reason'])}",
            highlight=False,
            soft_wrap=True,
        )
    for note in r.notes:
        err.print(f"  [yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if r.dry_run:
        out.print(
            f"{mode} {r.instances_planned - r.instances_present} instance(s) "
            f"({r.instances_present} already in {r.incoming}) of {r.study_instances} in "
            f"{r.studies_found} matching study(ies); about {r.estimated_bytes / 1e6:.1f} of "
            f"{r.study_estimated_bytes / 1e6:.1f} MB of pixel data",
            soft_wrap=True,
            markup=False,
        )
        return
    out.print(
        f"{mode} {r.instances_fetched} instance(s), {r.bytes_fetched / 1e6:.1f} MB in "
        f"{r.seconds:.1f} s ({r.instances_per_s:.1f} instances/s, {r.mb_per_s:.2f} MB/s); "
        f"{r.instances_present} already there; the studies hold {r.study_instances}. "
        f"{len(r.usable_studies)} study(ies) ready in {r.incoming}; report {r.report_path}",
        soft_wrap=True,
        markup=False,
    )
    for u in r.unusable_studies:
        what = escape(f"…{u['study'][-16:]}: {u['reason']}")
        err.print(f"  [yellow]unusable[/] {what}", highlight=False, soft_wrap=True)
    out.print(
        f"next: site-agent train --dicom-dir {r.incoming} -w {Path(r.incoming).parent}",
        soft_wrap=True,
        markup=False,
    )


@handle_errors
def receive_cmd(
    workspace: Workspace = Path("workspace"),
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")
    ] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="Our AE title.")] = "SITEAGENT",
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Calling AE title allowed to send (repeatable; required)."),
    ] = None,
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on.")] = "0.0.0.0",
    quota_gb: Annotated[
        float | None, typer.Option("--quota-gb", min=0.001, help="At most this much in incoming/.")
    ] = None,
) -> None:
    """Run a C-STORE SCP for a PACS that pushes: instances from the allowed AE titles land in
    WORKSPACE/incoming (same layout as pull), checked and written atomically. Stops on Ctrl-C
    or SIGTERM with a summary."""
    import signal
    import threading

    from site_agent.ingest.receive import ReceiveConfig, start_receiver

    if workspace.exists() and not workspace.is_dir():
        raise InputError(f"workspace is not a folder: {workspace}")
    allowed = tuple(_ae(a, "--allow") for a in allow or [])
    quota = int(quota_gb * 1e9) if quota_gb else None
    cfg = ReceiveConfig(port, _ae(ae_title, "--ae-title"), allowed, bind, quota)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    server, stats = start_receiver(cfg, workspace)
    err.print(
        f"receiving as {cfg.ae_title} on {bind}:{port} from {', '.join(allowed)} into "
        f"{workspace / 'incoming'} (Ctrl-C or SIGTERM to stop)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    out.print(
        f"received {stats.stored} instance(s) ({stats.bytes / 1e6:.1f} MB), "
        f"{stats.duplicates} repeated, {stats.refused} refused",
        highlight=False,
        soft_wrap=True,
    )
    for p in sorted(set(stats.problems))[:10]:
        err.print(f"  refused: {p}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("pull")(pull_cmd)
    app.command("receive")(receive_cmd)
