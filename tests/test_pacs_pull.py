"""``site-agent pull`` against a real Orthanc (DICOMweb and DIMSE) loaded with phantom studies.

A pull must give the same cases as ingesting the phantom folder directly, fetch only candidate
series, resume without refetching, and turn every failure into one line and a documented exit
code with nothing half-written and nothing outside the workspace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.case_format import list_cases, read_case
from shared.dicom.scan import scan
from shared.ingest.dicom_ingest import ingest_scan
from shared.phantom.consortium import generate_study
from shared.phantom.institutions import get_institution
from shared.profiles import get_profile
from site_agent.ingest.credentials import Credentials
from site_agent.ingest.dicomweb import DicomWebSource
from site_agent.ingest.dimse import DimseConfig, DimseSource
from site_agent.ingest.incoming import inspect_instance
from site_agent.ingest.pull import PullEvents, pull
from site_agent.ingest.sources import Limits, PacsUnreachable, StudyQuery
from tests.orthanc_support import AGENT_AE, PACS_AE, PASSWORD, USER, OrthancServer, require_orthanc

TINY = get_profile("tiny")
FAST = Limits(concurrency=2, timeout_s=10, retries=1, backoff_s=0.05)
# Siemens enhanced multi-b, Siemens classic one series per b, GE JPEG-Lossless (private b).
STUDIES = [
    ("aurora", 0, {"enhanced": True, "multi_b": True}),
    ("aurora", 1, {"syntax": "implicit", "multi_b": False}),
    ("borealis", 0, {"syntax": "jpeg-lossless", "multi_b": False}),
]
SITE_AGENT = [sys.executable, "-m", "site_agent.cli.main"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pacs-site")
    for inst, index, force in STUDIES:
        generate_study(root, get_institution(inst), TINY, 0, index, force=force)
    return root


@pytest.fixture(scope="module")
def pacs(site: Path, tmp_path_factory: pytest.TempPathFactory):
    require_orthanc()
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        server.upload_tree(site / "dicom")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def direct(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("ws-direct")
    report = ingest_scan(scan(site / "dicom", workers=1), ws, TINY, None)
    assert len(report.ingested) == len(STUDIES)
    return ws


def _web(pacs: OrthancServer, password: str = PASSWORD) -> DicomWebSource:
    return DicomWebSource(pacs.dicomweb, Credentials(USER, password), FAST)


def _dimse(pacs: OrthancServer, retrieve: str = "get", calling: str = AGENT_AE) -> DimseSource:
    cfg = DimseConfig(
        "127.0.0.1", pacs.dicom_port, PACS_AE, calling, retrieve, None, pacs.agent_port, "127.0.0.1"
    )
    return DimseSource(cfg, FAST)


def _run(source, ws: Path, **kw):  # type: ignore[no-untyped-def]
    try:
        return pull(source, ws, [StudyQuery()], FAST, **kw)
    finally:
        source.close()


def _assert_same_cases(direct: Path, ws: Path) -> None:
    """Ingest ws/incoming with the direct workspace's salt: same case ids, voxels, geometry."""
    (ws / "secrets").mkdir(exist_ok=True)
    shutil.copy(direct / "secrets" / "salt", ws / "secrets" / "salt")
    ingest_scan(scan(ws / "incoming", workers=1), ws, TINY, None)
    ours = {p.name: p for p in list_cases(ws / "cases" / "real")}
    ref = {p.name: p for p in list_cases(direct / "cases" / "real")}
    assert sorted(ours) == sorted(ref)
    for cid in ref:
        a, b = read_case(ours[cid]), read_case(ref[cid])
        for seq in ("t2w", "hbv", "adc"):
            np.testing.assert_array_equal(a.volumes[seq].array, b.volumes[seq].array)
            np.testing.assert_allclose(a.volumes[seq].affine, b.volumes[seq].affine, atol=1e-9)


def _only_candidates(ws: Path) -> None:
    """Nothing fetched is a localizer, sagittal T2 or dynamic series."""
    result = scan(ws / "incoming", workers=1)
    for study in result.studies:
        assert study.complete, study.problems
        for v in study.volumes:
            assert not v.reason.startswith(("localizer", "dynamic", "sagittal")), v.reason
            assert "sagittal" not in v.reason, v.reason


def _no_partials(ws: Path) -> None:
    for p in (ws / "incoming").rglob("*"):
        assert not p.name.startswith("."), f"half-written file left: {p}"
        if p.is_file():
            inspect_instance(p.read_bytes())


def test_dicomweb_pull_gives_the_same_cases_and_only_candidates(pacs, direct, tmp_path):
    report = _run(_web(pacs), tmp_path)
    assert len(report.usable_studies) == len(STUDIES) and not report.failures
    assert report.instances_fetched < report.study_instances / 2
    modes = sorted(p["mode"] for p in report.plans)
    assert modes == ["selected"] * 3, report.plans
    _only_candidates(tmp_path)
    _no_partials(tmp_path)
    _assert_same_cases(direct, tmp_path)
    again = _run(_web(pacs), tmp_path)  # resumable: nothing is fetched twice
    assert again.instances_fetched == 0 and again.instances_present == report.instances_planned


def test_dimse_get_pull_gives_the_same_cases(pacs, direct, tmp_path):
    report = _run(_dimse(pacs, "get"), tmp_path)
    assert len(report.usable_studies) == len(STUDIES) and not report.failures
    # C-FIND carries no functional groups: the enhanced study is fetched whole, with a reason.
    whole = [p for p in report.plans if p["mode"] == "whole-study"]
    assert len(whole) == 1 and "functional groups" in whole[0]["reason"]
    assert report.instances_fetched < report.study_instances
    _assert_same_cases(direct, tmp_path)


def test_dimse_move_pull_fetches_what_get_fetches(pacs, tmp_path):
    get_ws, move_ws = tmp_path / "get", tmp_path / "move"
    _run(_dimse(pacs, "get"), get_ws)
    report = _run(_dimse(pacs, "move"), move_ws)
    assert not report.failures and len(report.usable_studies) == len(STUDIES)

    def files(ws: Path) -> list[str]:
        return sorted(str(p.relative_to(ws)) for p in ws.joinpath("incoming").rglob("*.dcm"))

    assert files(get_ws) == files(move_ws)


def test_dry_run_writes_nothing(pacs, tmp_path):
    report = _run(_web(pacs), tmp_path / "ws", dry_run=True)
    assert report.dry_run and report.instances_planned > 0 and report.instances_fetched == 0
    assert not (tmp_path / "ws").exists()


def _cli(args: list[str], env_extra: dict[str, str] | None = None, **kw):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_AGENT_PACS")}
    env.update(env_extra or {})
    return subprocess.run(
        [*SITE_AGENT, *args], env=env, capture_output=True, text=True, timeout=120, **kw
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


def test_wrong_password_is_one_line_exit_3(pacs, tmp_path):
    ws = tmp_path / "ws"
    proc = _cli(
        ["pull", "-w", str(ws), "--dicomweb", pacs.dicomweb, "--retries", "0"],
        {"SITE_AGENT_PACS_USER": USER, "SITE_AGENT_PACS_PASSWORD": "wrong"},
    )
    _one_line_error(proc, 3, "refused the credentials (HTTP 401)")
    assert not list(ws.rglob("*.dcm"))


def test_unknown_ae_title_is_one_line_exit_3(pacs, tmp_path):
    proc = _cli(
        [
            "pull",
            "-w",
            str(tmp_path),
            "--dimse",
            f"127.0.0.1:{pacs.dicom_port}",
            "--called-ae",
            PACS_AE,
            "--calling-ae",
            "STRANGER",
            "--retries",  # a rejection is final; retries only absorb a busy machine's hiccup
            "2",
        ]
    )
    _one_line_error(proc, 3, "rejected the association from AE title 'STRANGER'")
    assert not list(tmp_path.rglob("*.dcm"))


def test_filter_matching_nothing_is_exit_6(pacs, tmp_path):
    proc = _cli(
        [
            "pull",
            "-w",
            str(tmp_path),
            "--dicomweb",
            pacs.dicomweb,
            "--study-date",
            "19000101-19001231",
        ],
        {"SITE_AGENT_PACS_USER": USER, "SITE_AGENT_PACS_PASSWORD": PASSWORD},
    )
    _one_line_error(proc, 6, "matched the filter")


def test_password_on_the_command_line_is_not_an_option(pacs, tmp_path):
    proc = _cli(["pull", "-w", str(tmp_path), "--dicomweb", pacs.dicomweb, "--password", "x"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_pull_killed_midway_resumes_without_refetching(pacs, tmp_path):
    env = {"SITE_AGENT_PACS_USER": USER, "SITE_AGENT_PACS_PASSWORD": PASSWORD}
    args = ["pull", "-w", str(tmp_path), "--dicomweb", pacs.dicomweb, "--concurrency", "1"]
    full = {k: v for k, v in os.environ.items() if not k.startswith("SITE_AGENT_PACS")}
    proc = subprocess.Popen(
        [*SITE_AGENT, *args, "--json"], env={**full, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((tmp_path / "incoming").rglob("*.dcm"))) >= 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    before = len(list((tmp_path / "incoming").rglob("*.dcm")))
    rerun = _cli([*args, "--json"], env)
    assert rerun.returncode == 0, rerun.stderr
    import json

    report = json.loads(rerun.stdout)
    assert report["instances_present"] == before
    assert report["instances_fetched"] == report["instances_planned"] - before
    _no_partials(tmp_path)


# --- a PACS that misbehaves: each case its own Orthanc ---------------------------------------
@pytest.fixture
def fresh_pacs(tmp_path_factory: pytest.TempPathFactory):
    require_orthanc()
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-bad")).start()
    try:
        yield server
    finally:
        server.stop()


def _classic_study(site: Path) -> list[Path]:
    """The files of the classic Siemens study (aurora index 1)."""
    folders = sorted((site / "dicom").glob("*/*"))
    for f in folders:
        files = sorted(p for p in f.rglob("*") if p.is_file())
        import pydicom

        if pydicom.dcmread(files[0], stop_before_pixels=True).Manufacturer == "SIEMENS" and (
            "NumberOfFrames" not in pydicom.dcmread(files[0], stop_before_pixels=True)
        ):
            return files
    raise AssertionError("no classic Siemens study in the phantom")


def test_pacs_going_away_mid_transfer_keeps_what_arrived_and_resumes(site, fresh_pacs, tmp_path):
    fresh_pacs.upload(_classic_study(site))
    seen = []

    def vanish(_nbytes: int) -> None:
        seen.append(1)
        if len(seen) == 5:
            fresh_pacs.kill()

    with pytest.raises(PacsUnreachable) as info:
        _run(_web(fresh_pacs), tmp_path, events=PullEvents(instance=vanish))
    assert "did not answer" in info.value.message and "rerun to resume" in info.value.message
    _no_partials(tmp_path)
    kept = len(list((tmp_path / "incoming").rglob("*.dcm")))
    assert kept >= 5
    fresh_pacs.start()  # same storage and ports: the PACS is back
    report = _run(_web(fresh_pacs), tmp_path)
    assert report.instances_present == kept
    assert report.instances_fetched == report.instances_planned - kept
    assert len(report.usable_studies) == 1


def test_corrupt_instance_is_exit_4_and_nothing_half_written(site, fresh_pacs, tmp_path):
    import pydicom

    from shared.errors import IntegrityError

    files = _classic_study(site)
    fresh_pacs.upload(files)
    t2 = next(f for f in files if pydicom.dcmread(f).SeriesDescription == "t2_tse_tra")
    stored = fresh_pacs.stored_file(pydicom.dcmread(t2).SOPInstanceUID)
    data = stored.read_bytes()
    stored.write_bytes(data[: len(data) - 2000])  # the PACS's copy lost its last 2 kB
    with pytest.raises(IntegrityError) as info:
        _run(_web(fresh_pacs), tmp_path)
    assert "could not be stored intact" in info.value.message
    assert not list((tmp_path / "incoming").rglob(f"{pydicom.dcmread(t2).SOPInstanceUID}.dcm"))
    _no_partials(tmp_path)


def test_repeated_sop_uid_with_other_content_is_refused(site, fresh_pacs, tmp_path):
    import pydicom

    from shared.errors import IntegrityError

    files = _classic_study(site)
    t2 = sorted(f for f in files if pydicom.dcmread(f).SeriesDescription == "t2_tse_tra")
    adc = sorted(f for f in files if pydicom.dcmread(f).SeriesDescription.endswith("_ADC"))
    fresh_pacs.upload(f for f in files if f != adc[3])
    twin = pydicom.dcmread(adc[3])  # the ADC slice, under a T2 slice's SOP Instance UID
    twin.SOPInstanceUID = pydicom.dcmread(t2[3]).SOPInstanceUID  # same UID, other content
    twin.file_meta.MediaStorageSOPInstanceUID = twin.SOPInstanceUID
    path = tmp_path / "twin.dcm"
    twin.save_as(path)
    # Orthanc keys instances by patient/study/series/SOP: both series hold the UID.
    fresh_pacs.upload([path])
    with pytest.raises(IntegrityError) as info:
        _run(_dimse(fresh_pacs, "get"), tmp_path / "ws")
    assert "repeats with different content" in info.value.message
    _no_partials(tmp_path / "ws")


def test_series_metadata_that_lies_is_caught(site, fresh_pacs, tmp_path):
    """An ADC series labelled as the axial T2 (and the real T2 missing): classified by its
    ImageType, flagged, nothing fetched, exit 6 with the reason."""
    import pydicom

    from shared.errors import NothingProducedError

    out = tmp_path / "liar"
    out.mkdir()
    uploads = []
    for i, f in enumerate(_classic_study(site)):
        ds = pydicom.dcmread(f)
        if ds.SeriesDescription == "t2_tse_tra":
            continue
        if ds.SeriesDescription.endswith("_ADC"):
            ds.SeriesDescription = "t2_tse_tra"
        ds.save_as(out / f"{i}.dcm")
        uploads.append(out / f"{i}.dcm")
    fresh_pacs.upload(uploads)
    with pytest.raises(NothingProducedError) as info:
        _run(_web(fresh_pacs), tmp_path / "ws")
    assert "no axial T2" in info.value.message
    report = _run(_web(fresh_pacs), tmp_path / "ws2", dry_run=True)
    assert any("suggests t2w but the headers say adc" in n for n in report.notes)
    assert not (tmp_path / "ws" / "incoming").exists() or not list(
        (tmp_path / "ws" / "incoming").rglob("*.dcm")
    )


def test_https_is_verified_against_the_site_ca_bundle(tmp_path):
    """Debian's Orthanc 1.10 crashes on its first HTTPS request (civetweb with OpenSSL 3), so
    TLS is checked against a minimal QIDO-RS server on loopback that knows no study."""
    import http.server
    import ssl
    import threading

    from shared.errors import NothingProducedError
    from site_agent.ingest.sources import PacsRefused
    from tests.orthanc_support import make_tls

    class Empty(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *_a: object) -> None:
            pass

    server_pem, ca = make_tls(tmp_path / "tls")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_pem)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    try:
        trusted = DicomWebSource(url, Credentials(USER, PASSWORD), FAST, ca_bundle=str(ca))
        with pytest.raises(NothingProducedError):  # TLS verified; the server knows no study
            _run(trusted, tmp_path / "ws")
        with pytest.raises(PacsRefused) as info:  # the system store does not know the site CA
            _run(DicomWebSource(url, Credentials(USER, PASSWORD), FAST), tmp_path / "ws2")
        assert "TLS verification" in info.value.message and "--ca-bundle" in (info.value.hint or "")
    finally:
        httpd.shutdown()


def test_plain_http_to_another_host_is_refused(tmp_path):
    proc = _cli(["pull", "-w", str(tmp_path), "--dicomweb", "http://pacs.example/dicom-web"])
    _one_line_error(proc, 3, "refusing plain HTTP")


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(pacs, tmp_path, monkeypatch):
    import errno

    from shared.errors import InputError
    from site_agent.ingest import incoming

    monkeypatch.setattr(incoming.IncomingStore, "free_bytes", lambda self: 1000)
    with pytest.raises(InputError) as info:
        _run(_web(pacs), tmp_path / "small")
    assert "only 0 MB are free" in info.value.message
    assert not list((tmp_path / "small").rglob("*.dcm"))
    monkeypatch.undo()

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(incoming.os, "fsync", full)
    with pytest.raises(InputError) as info:
        _run(_web(pacs), tmp_path / "full")
    assert "is full" in info.value.message and "rerun to resume" in info.value.message
    _no_partials(tmp_path / "full")
    assert not list((tmp_path / "full").rglob("*.dcm"))
