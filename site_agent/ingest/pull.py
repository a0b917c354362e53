"""``site-agent pull``: retrieve the bpMRI of chosen studies from the PACS into
``WORKSPACE/incoming``, only the series ingest will use, resumably.

Flow: study queries (date range, description, or the label sheet's keys) → per study, series
and instance metadata → a plan (``shared.dicom.select.plan_study``: the scan's own rules) →
fetch units (a series, or a chunk of it) on at most ``Limits.concurrency`` workers, skipping
every SOP Instance UID already in ``incoming/`` → a header scan of each fetched study that must
choose what the plan chose (otherwise the metadata misled us: the study is fetched whole) →
a report in ``WORKSPACE/reports/pull-*.json``.

Errors raise the toolkit's classes after the report is written: ``PacsRefused`` /
``PacsUnreachable`` (input, exit 3; what was fetched is kept), ``IntegrityError`` (exit 4: an
instance was corrupt, not the one asked for, or a SOP Instance UID repeated with different
content), ``NothingProducedError`` (exit 6: nothing matched or no study can be used).
Nothing is printed here; ``events`` lets the CLI draw progress.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json
from shared.dicom.select import ROLES, StudyPlan, plan_study, verify_choice
from shared.errors import InputError, IntegrityError, NothingProducedError
from shared.ingest.labels import LabelSheet
from site_agent.ingest.incoming import IncomingStore, InstanceProblem
from site_agent.ingest.sources import Limits, PacsSource, StudyHit, StudyQuery

DISK_MARGIN = 1.2  # ask for 20 % more free space than the estimate (headers, compression)


@dataclass
class PullEvents:
    """Callbacks for progress (all optional; called from worker threads too)."""

    studies: Callable[[int], None] | None = None  # studies found
    planned: Callable[[int, int], None] | None = None  # (instances to fetch, estimated bytes)
    instance: Callable[[int], None] | None = None  # one instance done (bytes, 0 if skipped)
    study_planned: Callable[[StudyPlan], None] | None = None


@dataclass
class PullReport:
    source: str
    dry_run: bool
    studies_found: int = 0
    plans: list[dict[str, Any]] = field(default_factory=list)
    instances_planned: int = 0  # instances the plans name
    instances_present: int = 0  # already in incoming/ (resumed)
    instances_fetched: int = 0
    bytes_fetched: int = 0
    query_bytes: int = 0
    study_instances: int = 0  # what the whole studies hold
    estimated_bytes: int = 0
    study_estimated_bytes: int = 0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # query+plan, fetch, verify
    failures: list[dict[str, str]] = field(default_factory=list)
    usable_studies: list[str] = field(default_factory=list)
    unusable_studies: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    incoming: str = ""
    report_path: str | None = None

    @property
    def instances_per_s(self) -> float:
        return self.instances_fetched / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_fetched / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(instances_per_s=self.instances_per_s, mb_per_s=self.mb_per_s)
        return d


def queries_from_labels(sheet: LabelSheet, base: StudyQuery) -> list[StudyQuery]:
    """One study query per label row, keyed as the sheet is (UID, accession, patient + date)."""
    out = []
    for key in sheet.rows:
        if sheet.key == "study_uid":
            out.append(StudyQuery(base.study_date, base.description, study_uid=key[0]))
        elif sheet.key == "accession":
            out.append(StudyQuery(base.study_date, base.description, accession=key[0]))
        else:
            out.append(StudyQuery(key[1], base.description, patient_id=key[0]))
    return out


def _describe(queries: list[StudyQuery]) -> str:
    if len(queries) > 1:
        return f"{len(queries)} label rows"
    q = queries[0]
    parts = [f"{k}={v}" for k, v in q.__dict__.items() if v]
    return ", ".join(parts) or "all MR studies"


class _Tally:
    """Per-instance outcomes, shared by the worker threads."""

    def __init__(self, report: PullReport, events: PullEvents) -> None:
        self.report, self.events = report, events
        self.lock = threading.Lock()
        self.failed_studies: dict[str, str] = {}

    def done(self, study: str, series: str) -> Callable[[str, int | InstanceProblem], None]:
        def record(sop: str, outcome: int | InstanceProblem) -> None:
            with self.lock:
                if isinstance(outcome, InstanceProblem):
                    self.report.failures.append(
                        {
                            "study": study,
                            "series": series,
                            "sop": sop,
                            "kind": outcome.kind,
                            "reason": outcome.message,
                        }
                    )
                    self.failed_studies.setdefault(study, outcome.message)
                elif outcome > 0:
                    self.report.instances_fetched += 1
                    self.report.bytes_fetched += outcome
            if self.events.instance:
                self.events.instance(outcome if isinstance(outcome, int) else 0)

        return record


def pull(
    source: PacsSource,
    workspace: Path,
    queries: list[StudyQuery],
    limits: Limits,
    mapping: dict[str, str] | None = None,
    dry_run: bool = False,
    events: PullEvents | None = None,
    max_studies: int | None = None,
) -> PullReport:
    """Pull the studies ``queries`` find from ``source`` into ``workspace/incoming``."""
    events = events or PullEvents()
    t0 = time.perf_counter()
    store = IncomingStore(workspace, create=not dry_run)
    report = PullReport(source.label, dry_run, incoming=str(store.root))
    hits = _find(source, queries, max_studies)
    report.studies_found = len(hits)
    if events.studies:
        events.studies(len(hits))
    if not hits:
        raise NothingProducedError(
            f"no MR study on {source.label} matched the filter ({_describe(queries)})",
            hint="widen --study-date / --description, or check the label sheet's keys",
        )
    # Planning waits on the PACS's metadata answers: ask for several studies at once.
    with ThreadPoolExecutor(max_workers=max(1, limits.concurrency)) as pool:
        metas = list(pool.map(lambda h: source.series_meta(h.study_uid), hits))
    plans = [plan_study(h.study_uid, m, mapping) for h, m in zip(hits, metas, strict=True)]
    for p in plans:
        report.plans.append(p.summary())
        report.notes += [f"study …{p.study_uid[-12:]}: {n}" for n in p.notes]
        report.study_instances += p.total_instances
        report.estimated_bytes += p.estimated_bytes
        report.study_estimated_bytes += p.whole_estimated_bytes
        if p.mode == "skipped":
            report.unusable_studies.append({"study": p.study_uid, "reason": p.reason})
        if events.study_planned:
            events.study_planned(p)
    active = [p for p in plans if p.mode != "skipped"]
    units = _units(active, store, source.chunk_size)
    report.instances_planned = sum(p.n_fetch for p in active)
    report.instances_present = report.instances_planned - sum(len(u[2]) for u in units)
    report.query_bytes = source.query_bytes
    report.phase_seconds["plan"] = time.perf_counter() - t0
    if dry_run:
        report.seconds = time.perf_counter() - t0
        return report
    try:
        if not active:
            raise NothingProducedError(
                f"none of the {len(plans)} matching studies has t2w, hbv and adc: "
                f"{plans[0].reason}",
                hint="`site-agent pull --dry-run --json` lists every study's reason",
            )
        _check_space(store, active, report)
        if events.planned:
            events.planned(sum(len(u[2]) for u in units), report.estimated_bytes)
        tally = _Tally(report, events)
        t1 = time.perf_counter()
        _run_units(source, units, store, tally, limits)
        t2 = time.perf_counter()
        _verify(source, active, store, tally, limits, mapping)
        report.phase_seconds.update(fetch=t2 - t1, verify=time.perf_counter() - t2)
    finally:
        report.query_bytes = source.query_bytes
        report.seconds = time.perf_counter() - t0
        _write_report(workspace, report)
    _raise_for_outcome(report)
    return report


def _find(source: PacsSource, queries: list[StudyQuery], limit: int | None) -> list[StudyHit]:
    seen: dict[str, StudyHit] = {}
    for q in queries:
        for hit in source.find_studies(q):
            seen.setdefault(hit.study_uid, hit)
            if limit is not None and len(seen) >= limit:
                return list(seen.values())
    return list(seen.values())


# (study, series, SOP UIDs, whole series?); SOP UIDs [] with whole: a series never listed.
Unit = tuple[str, str, list[str], bool]


def _units(plans: list[StudyPlan], store: IncomingStore, chunk: int) -> list[Unit]:
    """Fetch units: a series wanted whole and not begun is one unit (one request or
    association); otherwise the missing instances, ``chunk`` at a time."""
    units: list[Unit] = []
    for p in plans:
        for series, sops in p.fetch.items():
            missing = [s for s in sops if s not in store]
            if series in p.whole_series and len(missing) == len(sops):
                units.append((p.study_uid, series, missing, True))
                continue
            for i in range(0, len(missing), chunk):
                units.append((p.study_uid, series, missing[i : i + chunk], False))
    return units


def _check_space(store: IncomingStore, plans: list[StudyPlan], report: PullReport) -> None:
    need = int(sum(p.estimated_bytes for p in plans) * DISK_MARGIN)
    free = store.free_bytes()
    if need > free:
        raise InputError(
            f"the pull needs about {need / 1e6:.0f} MB but only {free / 1e6:.0f} MB are free "
            f"under {store.root}",
            hint="free space, or pull fewer studies (--limit, --study-date)",
        )


def _run_units(
    source: PacsSource,
    units: list[Unit],
    store: IncomingStore,
    tally: _Tally,
    limits: Limits,
) -> None:
    """Run fetch units on a bounded pool; the first PACS-level error stops the rest."""
    if not units:
        return
    with ThreadPoolExecutor(max_workers=max(1, limits.concurrency)) as pool:
        futures: list[Future[None]] = [
            pool.submit(source.fetch, st, se, sops, store, tally.done(st, se), whole)
            for st, se, sops, whole in units
        ]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        errors = [f.exception() for f in finished if not f.cancelled() and f.exception()]
        if errors:
            wait(pending)
            exc = errors[0]
            if isinstance(exc, InputError):
                r = tally.report
                exc.message += (
                    f"; fetched {r.instances_fetched} of "
                    f"{r.instances_planned - r.instances_present} instance(s) this run, kept in "
                    f"{store.root} (rerun to resume)"
                )
            raise exc  # type: ignore[misc]


def _chosen_sops(folder: Path, mapping: dict[str, str] | None) -> dict[str, set[str]] | str:
    """What a header scan of one fetched study chooses, as SOP UIDs per role (or why none)."""
    from shared.dicom.scan import scan

    if not folder.is_dir():
        return "nothing was fetched"
    result = scan(folder, workers=1, mapping=mapping)
    if not result.studies:
        return "no readable instance was fetched"
    s = result.studies[0]
    if not s.complete:
        return "; ".join(s.problems)
    return {r: {f.sop_uid for f in s.chosen[r].frames} for r in ROLES}


def _verify(
    source: PacsSource,
    plans: list[StudyPlan],
    store: IncomingStore,
    tally: _Tally,
    limits: Limits,
    mapping: dict[str, str] | None,
) -> None:
    """Scan each fetched study; a study whose files disagree with its metadata is fetched whole
    once (its metadata misled the plan), then judged by what the files say."""
    report = tally.report
    for p in plans:
        if p.study_uid in tally.failed_studies:
            reason = f"instances failed: {tally.failed_studies[p.study_uid]}"
            report.unusable_studies.append({"study": p.study_uid, "reason": reason})
            continue
        folder = store.study_dir(p.study_uid)
        chosen = _chosen_sops(folder, mapping)
        disagree = (
            (verify_choice(p, chosen) if isinstance(chosen, dict) else f"{chosen}")
            if p.exact
            else None
        )
        if disagree is not None:
            report.notes.append(
                f"study …{p.study_uid[-12:]}: the files disagree with the query metadata "
                f"({disagree}); fetched whole"
            )
            whole: list[Unit] = [
                (p.study_uid, s.series_uid, [u for u in s.sop_uids() if u not in store], False)
                for s in source.series_meta(p.study_uid)
                if s.modality in ("", "MR")
            ]
            _run_units(source, [u for u in whole if u[2]], store, tally, limits)
            chosen = _chosen_sops(folder, mapping)
        if isinstance(chosen, dict):
            report.usable_studies.append(p.study_uid)
        else:
            report.unusable_studies.append({"study": p.study_uid, "reason": chosen})


def _write_report(workspace: Path, report: PullReport) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = Path(workspace) / "reports" / f"pull-{stamp}.json"
    try:
        atomic_write_json(path, report.to_json())
    except OSError:  # a full disk must not hide the error that says so
        return
    report.report_path = str(path)


def _raise_for_outcome(report: PullReport) -> None:
    if report.failures:
        first = report.failures[0]
        raise IntegrityError(
            f"{len(report.failures)} instance(s) could not be stored intact (first: "
            f"{first['reason']}); {len(report.usable_studies)} study(ies) complete in "
            f"{report.incoming}",
            hint=f"details in {report.report_path}; nothing half-written, rerun to retry",
        )
    if not report.usable_studies:
        first = report.unusable_studies[0] if report.unusable_studies else {"reason": "?"}
        raise NothingProducedError(
            f"no pulled study has t2w, hbv and adc (first: {first['reason']})",
            hint=f"details in {report.report_path}",
        )
