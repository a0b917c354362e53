"""What a PACS source offers the pull, whichever protocol it speaks (DICOMweb or DIMSE)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from shared.dicom.select import SeriesMeta
from shared.errors import InputError
from site_agent.ingest.incoming import IncomingStore, InstanceProblem

T = TypeVar("T")

# Called once per instance of a fetch unit: (SOP UID, bytes written or 0 when already there,
# or the problem that kept it out).
InstanceDone = Callable[[str, "int | InstanceProblem"], None]


class PacsUnreachable(InputError):
    """The PACS did not answer (connection refused, reset or timed out) after every retry."""


class AnsweredBadly(Exception):
    """A server error worth retrying (e.g. HTTP 503); when retries run out the answer itself is
    returned, so one unservable instance fails alone instead of the whole pull."""

    def __init__(self, answer: object) -> None:
        super().__init__(f"HTTP {getattr(answer, 'status_code', '?')}")
        self.answer = answer


class PacsRefused(InputError):
    """The PACS answered but refused us: credentials, AE title, TLS or a bad request."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a pull asks of the PACS and how long it waits."""

    concurrency: int = 4  # parallel requests (DICOMweb) or associations (DIMSE)
    timeout_s: float = 30.0  # per request / per DIMSE message
    retries: int = 3  # extra tries after a failure that may pass (network, 5xx)
    backoff_s: float = 0.5  # first wait between tries; doubles each time


@dataclass(frozen=True)
class StudyQuery:
    """One study-level query; a pull may run several (one per accession number, say)."""

    study_date: str | None = None  # "YYYYMMDD-YYYYMMDD", "YYYYMMDD-" or "YYYYMMDD"
    description: str | None = None  # StudyDescription with DICOM wildcards * and ?
    accession: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None


@dataclass
class StudyHit:
    study_uid: str
    accession: str = ""
    patient_id: str = ""
    study_date: str = ""
    n_instances: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def as_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def study_hits(answers: Iterable[Any]) -> list[StudyHit]:
    """Study-level query answers (pydicom datasets, from QIDO-RS or C-FIND) as hits."""
    hits = []
    for ds in answers:
        uid = str(ds.get("StudyInstanceUID", ""))
        if uid:
            hits.append(
                StudyHit(
                    uid,
                    str(ds.get("AccessionNumber", "") or ""),
                    str(ds.get("PatientID", "") or ""),
                    str(ds.get("StudyDate", "") or ""),
                    as_int(ds.get("NumberOfStudyRelatedInstances")),
                )
            )
    return hits


def series_entry(ds: Any) -> SeriesMeta | None:
    """A series-level query answer as ``SeriesMeta`` (instances to be filled in)."""
    uid = str(ds.get("SeriesInstanceUID", ""))
    if not uid:
        return None
    return SeriesMeta(
        uid,
        as_int(ds.get("SeriesNumber")) or 0,
        str(ds.get("SeriesDescription", "") or ""),
        str(ds.get("Modality", "") or ""),
        as_int(ds.get("NumberOfSeriesRelatedInstances")),
    )


class PacsSource(Protocol):
    label: str  # where, for messages ("DICOMweb https://pacs/dicom-web")
    chunk_size: int  # instances per fetch unit (a unit runs on one worker)
    query_bytes: int  # bytes the queries received so far (metadata is not free)

    def find_studies(self, query: StudyQuery) -> list[StudyHit]: ...

    def series_meta(self, study_uid: str) -> list[SeriesMeta]: ...

    def fetch(
        self,
        study_uid: str,
        series_uid: str,
        sop_uids: list[str],
        store: IncomingStore,
        done: InstanceDone,
        whole: bool = False,
    ) -> None:
        """Retrieve ``sop_uids`` of one series into ``store``, calling ``done`` once per
        instance. ``whole``: they are the whole series (or [] when it was never listed), so one
        series-level request may fetch them."""
        ...

    def close(self) -> None: ...


def with_retries(
    what: str,
    fn: Callable[[], T],
    limits: Limits,
    transient: tuple[type[BaseException], ...],
    label: str,
) -> T:
    """Call ``fn``; on a transient failure wait (exponential backoff) and try again, at most
    ``limits.retries`` more times, then raise ``PacsUnreachable`` naming ``what``."""
    delay = limits.backoff_s
    for attempt in range(limits.retries + 1):
        try:
            return fn()
        except transient as exc:
            if attempt == limits.retries:
                if isinstance(exc, AnsweredBadly):  # it answers, just not this: the caller's
                    return exc.answer  # type: ignore[no-any-return]
                raise PacsUnreachable(
                    f"{label} did not answer ({what}: {_short(exc)}) after "
                    f"{limits.retries + 1} tries"
                ) from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{': ' + text[:100] if text else ''}"
