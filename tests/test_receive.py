"""``site-agent receive``: a C-STORE SCP with a calling-AE allowlist and a quota, writing the
same ``incoming/`` layout as pull (pushes come from a real Orthanc and from pynetdicom)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from shared.phantom.consortium import generate_study
from shared.phantom.institutions import get_institution
from shared.profiles import get_profile
from site_agent.ingest.dimse import MR_STORAGE, transfer_syntaxes
from site_agent.ingest.receive import ReceiveConfig, start_receiver
from tests.orthanc_support import AGENT_AE, OrthancServer, free_port, require_orthanc


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("recv-site")
    generate_study(
        root, get_institution("aurora"), get_profile("tiny"), 0, 1, force={"syntax": "explicit"}
    )
    files = sorted(p for p in (root / "dicom").rglob("*") if p.is_file())
    return [f for f in files if "t2_tse_tra" in str(f.parent)]  # one series is enough


def _push(files: list[Path], port: int, calling: str) -> list[int]:
    """C-STORE ``files`` from ``calling``; the status of each (or [] if rejected)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for cls in MR_STORAGE:
        ae.add_requested_context(cls, transfer_syntaxes())
    assoc = ae.associate("127.0.0.1", port, ae_title=AGENT_AE)
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def _receiver(tmp_path: Path, **kw):  # type: ignore[no-untyped-def]
    port = free_port()
    cfg = ReceiveConfig(port, AGENT_AE, ("PACS1",), "127.0.0.1", kw.get("quota"))
    server, stats = start_receiver(cfg, tmp_path)
    return port, server, stats


def test_allowlisted_sender_lands_in_incoming_others_are_rejected(study_files, tmp_path):
    port, server, stats = _receiver(tmp_path)
    try:
        assert _push(study_files[:2], port, "STRANGER") == []  # association rejected
        assert _push(study_files, port, "PACS1") == [0] * len(study_files)
        assert _push(study_files[:1], port, "PACS1") == [0]  # resent: acknowledged, not rewritten
    finally:
        server.shutdown()
    assert stats.stored == len(study_files) and stats.duplicates == 1
    got = sorted((tmp_path / "incoming").rglob("*.dcm"))
    assert len(got) == len(study_files)
    ds = pydicom.dcmread(study_files[0])
    want = tmp_path / "incoming" / ds.StudyInstanceUID / ds.SeriesInstanceUID
    assert (want / f"{ds.SOPInstanceUID}.dcm").is_file()


def test_repeated_uid_with_other_content_and_quota_are_refused(study_files, tmp_path):
    size = study_files[0].stat().st_size
    port, server, stats = _receiver(tmp_path, quota=int(size * 2.5))
    try:
        assert _push(study_files[:1], port, "PACS1") == [0]
        twin = pydicom.dcmread(study_files[1])
        twin.SOPInstanceUID = pydicom.dcmread(study_files[0]).SOPInstanceUID
        twin.file_meta.MediaStorageSOPInstanceUID = twin.SOPInstanceUID
        twin_path = tmp_path / "twin.dcm"
        twin.save_as(twin_path)
        assert _push([twin_path], port, "PACS1") == [0xC210]
        statuses = _push(study_files[1:4], port, "PACS1")
        assert statuses[:2] == [0, 0xA700]  # the quota holds 2.5 files
    finally:
        server.shutdown()
    assert any("repeats with different content" in p for p in stats.problems)
    assert any("quota" in p for p in stats.problems)
    assert not [p for p in (tmp_path / "incoming").rglob(".*")]


def test_orthanc_pushes_with_c_store_and_the_cli_stops_cleanly(study_files, tmp_path):
    require_orthanc()
    port = free_port()
    server = OrthancServer(tmp_path / "pacs")
    server.extra_modalities = {"receiver": [AGENT_AE, "127.0.0.1", port]}
    server.start()
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "site_agent.cli.main", "receive", "-w", str(tmp_path / "ws"),
           "--port", str(port), "--bind", "127.0.0.1", "--allow", "TESTPACS"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        server.upload(study_files)
        ids = server._session().get(server.url + "/instances", timeout=10).json()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait for the SCP to listen
            r = server._session().post(
                f"{server.url}/modalities/receiver/echo", data="{}", timeout=10
            )
            if r.status_code == 200:
                break
            time.sleep(0.2)
        r = server._session().post(
            f"{server.url}/modalities/receiver/store", json={"Resources": ids}, timeout=60
        )
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        server.stop()
    assert proc.returncode == 0, err
    assert f"received {len(study_files)} instance(s)" in out
    assert len(list((tmp_path / "ws" / "incoming").rglob("*.dcm"))) == len(study_files)


def test_receive_without_allowlist_is_one_line_exit_3(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "site_agent.cli.main", "receive", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "--allow" in proc.stderr
