"""DICOMweb source: QIDO-RS to find studies, series and instances; WADO-RS to retrieve them.

HTTPS is verified against the site's CA bundle (``ca_bundle``; the system store otherwise).
Plain HTTP is accepted only for a loopback address unless ``allow_http`` is set, so a typo
cannot send a password in clear over the hospital network. Credentials come from
``site_agent.ingest.credentials`` (environment or a 0600 file), never from the command line.

Instance-level metadata comes from a QIDO-RS instance query with only the attributes the
classification needs (small); a series holding multi-frame (enhanced) instances needs its
functional groups, so its full WADO-RS metadata is read instead.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any

from shared.dicom.select import MULTIFRAME_CLASSES, SeriesMeta
from shared.errors import InputError
from site_agent.ingest.credentials import Credentials
from site_agent.ingest.incoming import IncomingStore, InstanceProblem
from site_agent.ingest.sources import (
    AnsweredBadly,
    InstanceDone,
    Limits,
    PacsRefused,
    StudyHit,
    StudyQuery,
    series_entry,
    study_hits,
    with_retries,
)

# Attributes (tags) an instance query asks for: what frame records and plans are made of.
INSTANCE_FIELDS = (
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "00080008",  # ImageType
    "00080060",  # Modality
    "00080070",  # Manufacturer
    "0008103E",  # SeriesDescription
    "00180024",  # SequenceName (Siemens b-value fallback)
    "00189087",  # DiffusionBValue
    "0020000D",  # StudyInstanceUID
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00200032",  # ImagePositionPatient
    "00200037",  # ImageOrientationPatient
    "00200100",  # TemporalPositionIdentifier
    "00280002",  # SamplesPerPixel
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280030",  # PixelSpacing
    "00280100",  # BitsAllocated
)
# What planning reads of an answer: the fields above plus the enhanced functional groups and
# the series-level counts. Everything else (names, dates, ...) is dropped before parsing: it
# is not needed, and parsing it was most of the planning time.
KEEP = {
    *INSTANCE_FIELDS,
    "00201209",  # NumberOfSeriesRelatedInstances
    "00201208",  # NumberOfStudyRelatedInstances
    "00080050",  # AccessionNumber (label join)
    "00100020",  # PatientID (label join)
    "00080020",  # StudyDate (label join)
    "52009229",  # SharedFunctionalGroupsSequence
    "52009230",  # PerFrameFunctionalGroupsSequence
}
RETRY_STATUS = {500, 502, 503, 504}
DICOM_PART = 'multipart/related; type="application/dicom"'


def check_url(url: str, allow_http: bool) -> str:
    """The base URL without a trailing slash; refuses plain HTTP to a non-loopback host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"not a DICOMweb URL: {url!r}", hint="e.g. https://pacs/dicom-web")
    if parts.username or parts.password:
        raise InputError(
            "the DICOMweb URL must not hold credentials",
            hint="use SITE_AGENT_PACS_USER/SITE_AGENT_PACS_PASSWORD or --credentials FILE",
        )
    if parts.scheme == "http" and not allow_http and not _loopback(parts.hostname):
        raise InputError(
            f"refusing plain HTTP to {parts.hostname}: credentials and images would cross the "
            "network unencrypted",
            hint="use https:// with --ca-bundle, or pass --allow-http if the link is protected",
        )
    return url.rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a ``multipart/related`` response (WADO-RS)."""
    boundary = None
    for item in content_type.split(";"):
        key, _, value = item.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise InstanceProblem("WADO-RS answer without a multipart boundary", kind="corrupt")
    delim = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        _head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append(payload)
    return parts


class DicomWebSource:
    """A DICOMweb PACS (``url`` is the service root, e.g. ``https://pacs/dicom-web``)."""

    chunk_size = 8

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        limits: Limits,
        ca_bundle: str | None = None,
        allow_http: bool = False,
    ) -> None:
        import requests

        self.url = check_url(url, allow_http)
        self.label = f"DICOMweb {self.url}"
        self.limits = limits
        self.query_bytes = 0
        self._requests = requests
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc credentials or proxies slipping in
        self.session.headers.update(credentials.headers())
        if ca_bundle is not None:
            self.session.verify = ca_bundle
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=limits.concurrency, pool_maxsize=limits.concurrency
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    # --- HTTP with bounded retries ---------------------------------------------------------
    def _get(self, path: str, params: Any = None, accept: str = "application/dicom+json") -> Any:
        req = self._requests
        transient = (req.ConnectionError, req.Timeout, AnsweredBadly)

        def once() -> Any:
            try:
                r = self.session.get(
                    self.url + path,
                    params=params,
                    headers={"Accept": accept},
                    timeout=self.limits.timeout_s,
                )
            except req.exceptions.SSLError as exc:
                raise PacsRefused(
                    f"TLS verification of {self.url} failed ({str(exc)[:120]})",
                    hint="pass the site's CA bundle with --ca-bundle",
                ) from None
            if r.status_code in RETRY_STATUS:
                raise AnsweredBadly(r)
            return r

        r = with_retries(path.split("?")[0][-60:] or "/", once, self.limits, transient, self.label)
        if r.status_code in (401, 403):
            raise PacsRefused(
                f"{self.label} refused the credentials (HTTP {r.status_code})",
                hint="check SITE_AGENT_PACS_USER/SITE_AGENT_PACS_PASSWORD, "
                "SITE_AGENT_PACS_TOKEN or the --credentials file",
            )
        return r

    def _json(self, path: str, params: Any = None) -> list[dict[str, Any]]:
        r = self._get(path, params)
        if r.status_code == 204:
            return []
        if r.status_code != 200:
            raise PacsRefused(f"{self.label} answered HTTP {r.status_code} to a query ({path})")
        self.query_bytes += len(r.content)
        try:
            data = r.json()
        except ValueError:
            raise PacsRefused(f"{self.label} answered a query with something not JSON") from None
        if not isinstance(data, list):
            raise PacsRefused(f"{self.label} answered a query with JSON that is not a list")
        return data

    # --- queries ----------------------------------------------------------------------------
    def find_studies(self, query: StudyQuery) -> list[StudyHit]:
        params: list[tuple[str, str]] = [("ModalitiesInStudy", "MR")]
        for key, value in (
            ("StudyDate", query.study_date),
            ("StudyDescription", query.description),
            ("AccessionNumber", query.accession),
            ("StudyInstanceUID", query.study_uid),
            ("PatientID", query.patient_id),
        ):
            if value:
                params.append((key, value))
        params += [("includefield", t) for t in ("00201208", "00080050", "00100020", "00080020")]
        return study_hits(_dataset(i) for i in self._json("/studies", params))

    def series_meta(self, study_uid: str) -> list[SeriesMeta]:
        """Series of a study with instance-level metadata: one instance query for the whole
        study (per series only where it came back short), full metadata for enhanced files."""
        study = _q(study_uid)
        out = []
        series = self._json(f"/studies/{study}/series", [("includefield", "00201209")])
        params = [("includefield", t) for t in INSTANCE_FIELDS]
        by_series: dict[str, list[Any]] = {}
        for item in self._json(f"/studies/{study}/instances", params):
            ds = _dataset(item)
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
        for item in series:
            meta = series_entry(_dataset(item))
            if meta is None:
                continue
            uid = meta.series_uid
            insts = by_series.get(uid, [])
            if meta.n_instances is None or len(insts) < meta.n_instances:
                path = f"/studies/{study}/series/{_q(uid)}/instances"
                insts = [_dataset(i) for i in self._json(path, params)]
            if any(str(d.get("SOPClassUID", "")) in MULTIFRAME_CLASSES for d in insts):
                # Functional groups (per-frame geometry, b-values) are only in full metadata.
                insts = [
                    _dataset(i) for i in self._json(f"/studies/{study}/series/{_q(uid)}/metadata")
                ]
            meta.instances = insts
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
        if whole:
            self._fetch_series(study_uid, series_uid, sop_uids, store, done)
            return
        for sop in sop_uids:
            path = f"/studies/{_q(study_uid)}/series/{_q(series_uid)}/instances/{_q(sop)}"
            r = self._get(path, accept=DICOM_PART)
            if r.status_code != 200:
                why = f"the PACS could not serve it (HTTP {r.status_code})"
                done(sop, InstanceProblem(why, "missing"))
                continue
            try:
                parts = parse_multipart(r.headers.get("Content-Type", ""), r.content)
                if len(parts) != 1:
                    raise InstanceProblem(f"{len(parts)} parts where one instance was asked")
                _ids, written = store.put(parts[0], expect=(study_uid, series_uid, sop))
            except InstanceProblem as exc:
                done(sop, exc)
                continue
            done(sop, len(parts[0]) if written else 0)

    def _fetch_series(
        self,
        study_uid: str,
        series_uid: str,
        sop_uids: list[str],
        store: IncomingStore,
        done: InstanceDone,
    ) -> None:
        """One WADO-RS series request; each part is checked and written on its own."""
        r = self._get(f"/studies/{_q(study_uid)}/series/{_q(series_uid)}", accept=DICOM_PART)
        wanted = set(sop_uids)
        if r.status_code == 200:
            try:
                parts = parse_multipart(r.headers.get("Content-Type", ""), r.content)
            except InstanceProblem:
                parts = []
            for part in parts:
                try:
                    ids, written = store.put(part, expect=(study_uid, series_uid, None))
                except InstanceProblem as exc:
                    # A listed instance is asked again alone below, which names it; an
                    # unlisted series has nothing to ask again, so report the part itself.
                    if not sop_uids:
                        done(f"a part of series {series_uid}", exc)
                    continue
                wanted.discard(ids.sop_uid)
                done(ids.sop_uid, len(part) if written else 0)
        if wanted:  # what the series answer lacked: ask instance by instance
            self.fetch(study_uid, series_uid, sorted(wanted), store, done)


def _q(uid: str) -> str:
    return urllib.parse.quote(uid, safe=".")


def _dataset(item: dict[str, Any]) -> Any:
    from pydicom.dataset import Dataset

    # Bulk data (pixels, private UN values) is never fetched for planning.
    kept = {k: v for k, v in item.items() if k in KEEP}
    return Dataset.from_json(kept, bulk_data_uri_handler=lambda *_a: b"")
