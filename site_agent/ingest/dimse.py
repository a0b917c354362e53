"""DIMSE source (pynetdicom): C-FIND at study, series and image level; C-GET, or C-MOVE to the
site agent's own storage SCP.

Each fetch unit (one series, or the missing instances of one) runs on its own association, so
``Limits.concurrency`` bounds the associations open at once. C-MOVE needs the PACS to know the
agent's AE title, host and port (``move_ae``/``move_port``); the agent's SCP accepts only the
PACS's AE title and only the instances it asked for. Private tags (some vendors' b-values) are
not returned by C-FIND; the plan fetches such diffusion series whole (``shared.dicom.select``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from shared.dicom.select import SeriesMeta
from site_agent.ingest.incoming import IncomingStore, InstanceProblem
from site_agent.ingest.sources import (
    InstanceDone,
    Limits,
    PacsRefused,
    PacsUnreachable,
    StudyHit,
    StudyQuery,
    series_entry,
    study_hits,
    with_retries,
)

# Instance-level keys asked in C-FIND: what frame records and plans are made of.
IMAGE_KEYS = (
    "SOPClassUID",
    "ImageType",
    "Modality",
    "Manufacturer",
    "SeriesDescription",
    "SequenceName",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "TemporalPositionIdentifier",
    "SeriesNumber",
)
NUMERIC_KEYS = ("Rows", "Columns", "NumberOfFrames", "BitsAllocated", "DiffusionBValue")
MR_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
)
PENDING = (0xFF00, 0xFF01)
STATUS_OK = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210


def quiet_pynetdicom() -> None:
    """pynetdicom logs every rejection and abort at ERROR level; the agent reports them as one
    line itself (``--debug`` shows tracebacks, not this log)."""
    log = logging.getLogger("pynetdicom")
    log.setLevel(logging.CRITICAL)
    log.propagate = False


def transfer_syntaxes() -> list[str]:
    from pydicom.uid import (
        JPEG2000,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        RLELossless,
    )

    # Lossless (and J2K as stored) only: the PACS sends what it holds, no lossy transcoding.
    return [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGLosslessSV1,
        JPEGLossless,
        JPEG2000Lossless,
        JPEG2000,
        JPEGLSLossless,
        RLELossless,
    ]


@dataclass(frozen=True)
class DimseConfig:
    host: str
    port: int
    called_ae: str  # the PACS's AE title
    calling_ae: str = "SITEAGENT"  # ours, as the PACS knows it
    retrieve: str = "get"  # "get" or "move"
    move_ae: str | None = None  # C-MOVE destination (default: calling_ae)
    move_port: int = 11113  # our storage SCP's port for C-MOVE
    move_bind: str = "0.0.0.0"


class _Router:
    """Hands instances arriving at our SCP (C-MOVE) to the fetch unit that asked for them."""

    def __init__(self, store: IncomingStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.waiting: dict[str, tuple[str, str, InstanceDone]] = {}
        self.whole: dict[str, tuple[str, InstanceDone]] = {}  # unlisted series: any instance

    def expect(self, study: str, series: str, sops: list[str], done: InstanceDone) -> None:
        with self.lock:
            for sop in sops:
                self.waiting[sop] = (study, series, done)
            if not sops:
                self.whole[series] = (study, done)

    def forget_series(self, series: str) -> None:
        with self.lock:
            self.whole.pop(series, None)

    def forget(self, sops: list[str]) -> list[str]:
        """Stop waiting for ``sops``; returns those that never arrived."""
        with self.lock:
            return [s for s in sops if self.waiting.pop(s, None) is not None]

    def handle(self, data: bytes, sop: str) -> int:
        with self.lock:
            entry = self.waiting.pop(sop, None)
        if entry is None and self.whole:
            entry = self._in_whole_series(data, sop)
        if entry is None:
            return STATUS_CANNOT_UNDERSTAND  # nothing we asked for: refuse, write nothing
        study, series, done = entry
        return _store_one(self.store, data, (study, series, sop), done)

    def _in_whole_series(self, data: bytes, sop: str) -> tuple[str, str, InstanceDone] | None:
        import io

        import pydicom

        try:
            series = str(
                pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID
            )
        except Exception:  # unreadable: refused like anything we did not ask for
            return None
        with self.lock:
            hit = self.whole.get(series)
        return None if hit is None else (hit[0], series, hit[1])


def _store_one(
    store: IncomingStore, data: bytes, expect: tuple[str, str, str], done: InstanceDone
) -> int:
    try:
        _ids, written = store.put(data, expect=expect)
    except InstanceProblem as exc:
        done(expect[2], exc)
        return STATUS_OUT_OF_RESOURCES if exc.kind == "quota" else STATUS_CANNOT_UNDERSTAND
    done(expect[2], len(data) if written else 0)
    return STATUS_OK


class DimseSource:
    """A DIMSE PACS reached with pynetdicom."""

    chunk_size = 10_000  # one unit per series: one association retrieves it

    def __init__(self, config: DimseConfig, limits: Limits) -> None:
        quiet_pynetdicom()
        if config.retrieve not in ("get", "move"):
            raise PacsRefused(f"--retrieve must be get or move, not {config.retrieve!r}")
        self.config = config
        self.limits = limits
        self.label = f"DIMSE {config.called_ae}@{config.host}:{config.port}"
        self.query_bytes = 0
        self._router: _Router | None = None
        self._server: Any = None
        self._scp_lock = threading.Lock()  # fetch units start the one SCP concurrently

    # --- associations -----------------------------------------------------------------------
    def _ae(self, storage: bool) -> Any:
        from pynetdicom import AE
        from pynetdicom.sop_class import (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelMove,
        )

        ae = AE(ae_title=self.config.calling_ae)
        for name in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, name, self.limits.timeout_s)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        if storage:
            for cls in MR_STORAGE:
                ae.add_requested_context(cls, transfer_syntaxes())
        return ae

    @contextmanager
    def _association(self, what: str, handlers: list[Any] | None = None) -> Iterator[Any]:
        from pynetdicom import build_role

        get = handlers is not None
        ae = self._ae(storage=get)
        roles = [build_role(c, scp_role=True) for c in MR_STORAGE] if get else []

        def connect() -> Any:
            assoc = ae.associate(
                self.config.host,
                self.config.port,
                ae_title=self.config.called_ae,
                ext_neg=roles or None,
                evt_handlers=handlers or None,
            )
            if assoc.is_established:
                return assoc
            if assoc.is_rejected:
                raise PacsRefused(
                    f"{self.label} rejected the association from AE title "
                    f"{self.config.calling_ae!r}",
                    hint="the PACS must list this AE title (and host) as a known modality, "
                    "and --called-ae must be the PACS's own AE title",
                )
            if assoc.is_aborted:  # seen under load where a reject races the socket close
                raise ConnectionError("the association was aborted while it was negotiated")
            raise ConnectionError(
                f"no association (connection refused, reset or no answer within "
                f"{self.limits.timeout_s:g} s)"
            )

        assoc = with_retries(what, connect, self.limits, (ConnectionError,), self.label)
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _find(self, query: Any, what: str) -> list[Any]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        out: list[Any] = []
        with self._association(what) as assoc:
            for status, ds in assoc.send_c_find(query, FIND):
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsUnreachable(f"{self.label} stopped answering during {what}")
                if code in PENDING and ds is not None:
                    out.append(ds)
                elif code not in PENDING and code != STATUS_OK:
                    raise PacsRefused(
                        f"{self.label} refused {what} (status 0x{code:04X})",
                        hint="the PACS must allow C-FIND from this AE title",
                    )
        self.query_bytes += sum(len(str(d)) for d in out)  # a rough size of the answers
        return out

    # --- queries ----------------------------------------------------------------------------
    def find_studies(self, query: StudyQuery) -> list[StudyHit]:
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = query.study_uid or ""
        q.ModalitiesInStudy = "MR"
        q.StudyDate = query.study_date or ""
        q.StudyDescription = query.description or ""
        q.AccessionNumber = query.accession or ""
        q.PatientID = query.patient_id or ""
        q.NumberOfStudyRelatedInstances = None
        return study_hits(self._find(q, "the study query"))

    def series_meta(self, study_uid: str) -> list[SeriesMeta]:
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = ""
        q.SeriesDescription = ""
        q.SeriesNumber = None
        q.Modality = ""
        q.NumberOfSeriesRelatedInstances = None
        out = []
        for ds in self._find(q, "the series query"):
            meta = series_entry(ds)
            if meta is None:
                continue
            uid = meta.series_uid
            qi = Dataset()
            qi.QueryRetrieveLevel = "IMAGE"
            qi.StudyInstanceUID = study_uid
            qi.SeriesInstanceUID = uid
            qi.SOPInstanceUID = ""
            for kw in IMAGE_KEYS:
                setattr(qi, kw, "")
            for kw in NUMERIC_KEYS:
                setattr(qi, kw, None)
            meta.instances = self._find(qi, "the instance query")
            out.append(meta)
        return out

    # --- retrieval --------------------------------------------------------------------------
    def fetch(
        self,
        study_uid: str,
        series_uid: str,
        sop_uids: list[str],
        store: IncomingStore,
        done: InstanceDone,
        whole: bool = False,
    ) -> None:
        from pydicom.dataset import Dataset

        q = Dataset()
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        if sop_uids and not whole:
            q.QueryRetrieveLevel = "IMAGE"
            q.SOPInstanceUID = sop_uids
        else:
            q.QueryRetrieveLevel = "SERIES"
        if self.config.retrieve == "get":
            self._get(q, study_uid, series_uid, sop_uids, store, done)
        else:
            self._move(q, study_uid, series_uid, sop_uids, store, done)

    def _get(
        self,
        q: Any,
        study: str,
        series: str,
        sops: list[str],
        store: IncomingStore,
        done: InstanceDone,
    ) -> None:
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        wanted = set(sops)
        seen: set[str] = set()

        def on_store(event: Any) -> int:
            sop = str(event.request.AffectedSOPInstanceUID)
            if wanted and sop not in wanted:
                return STATUS_CANNOT_UNDERSTAND
            seen.add(sop)
            return _store_one(store, event.encoded_dataset(), (study, series, sop), done)

        handlers = [(evt.EVT_C_STORE, on_store)]
        with self._association("C-GET", handlers) as assoc:
            final = self._drain(assoc.send_c_get(q, GET), "C-GET")
        self._report_missing([s for s in sops if s not in seen], final, done)

    def _move(
        self,
        q: Any,
        study: str,
        series: str,
        sops: list[str],
        store: IncomingStore,
        done: InstanceDone,
    ) -> None:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        router = self._ensure_scp(store)
        router.expect(study, series, sops, done)
        try:
            with self._association("C-MOVE") as assoc:
                dest = self.config.move_ae or self.config.calling_ae
                final = self._drain(assoc.send_c_move(q, dest, MOVE), "C-MOVE")
        finally:
            missing = router.forget(sops)
            router.forget_series(series)
        self._report_missing(missing, final, done)

    def _drain(self, responses: Any, what: str) -> Any:
        final = None
        for status, _ds in responses:
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsUnreachable(f"{self.label} stopped answering during {what}")
            if code not in PENDING:
                final = status
        if final is not None and final.Status == 0xA801:
            raise PacsRefused(
                f"{self.label} does not know the move destination "
                f"{self.config.move_ae or self.config.calling_ae!r}",
                hint="register the agent's AE title, host and --move-port at the PACS",
            )
        # A refusal before any sub-operation (not: some instances failed, reported per SOP).
        subops = sum(
            int(final.get(k, 0) or 0) if final is not None else 0
            for k in ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations")
        )
        if final is not None and final.Status in (0x0122, 0xA900, 0xC000) and subops == 0:
            raise PacsRefused(f"{self.label} refused {what} (status 0x{final.Status:04X})")
        return final

    @staticmethod
    def _report_missing(missing: list[str], final: Any, done: InstanceDone) -> None:
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0) if final else 0
        why = (
            f"the PACS could not send it ({failed} failed sub-operation(s))"
            if failed
            else "the PACS did not send it"
        )
        for sop in missing:
            done(sop, InstanceProblem(why, kind="missing"))

    def _ensure_scp(self, store: IncomingStore) -> _Router:
        with self._scp_lock:
            if self._router is None:
                self._router = self._start_scp(store)
            return self._router

    def _start_scp(self, store: IncomingStore) -> _Router:
        from pynetdicom import AE, evt

        router = _Router(store)
        ae = AE(ae_title=self.config.move_ae or self.config.calling_ae)
        ae.require_calling_aet = [self.config.called_ae]
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, name, self.limits.timeout_s)
        for cls in MR_STORAGE:
            ae.add_supported_context(cls, transfer_syntaxes())

        def on_store(event: Any) -> int:
            sop = str(event.request.AffectedSOPInstanceUID)
            return router.handle(event.encoded_dataset(), sop)

        try:
            self._server = ae.start_server(
                (self.config.move_bind, self.config.move_port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, on_store)],
            )
        except OSError as exc:
            raise PacsRefused(
                f"cannot listen on port {self.config.move_port} for C-MOVE: {exc.strerror or exc}",
                hint="choose a free --move-port (and register it at the PACS)",
            ) from None
        return router

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
