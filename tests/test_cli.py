"""The command lines as a user meets them: help, results, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from coordinator.cli.main import app as coordinator_app
from site_agent.cli.main import app as site_app

runner = CliRunner()


@pytest.mark.parametrize(
    ("app", "args"),
    [
        (site_app, ["--help"]),
        (site_app, ["phantom", "--help"]),
        (site_app, ["scan", "--help"]),
        (site_app, ["ingest", "--help"]),
        (coordinator_app, ["--help"]),
        (coordinator_app, ["ingest", "--help"]),
    ],
)
def test_help(app, args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from site_agent.cli.main import app; import coordinator.cli.main; "
        "heavy = [m for m in ('torch', 'monai', 'flwr', 'numpy', 'pydicom', 'SimpleITK') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_phantom_scan_ingest_roundtrip(tmp_path):
    r = runner.invoke(
        site_app,
        [
            "phantom",
            "--out",
            str(tmp_path / "ph"),
            "--cases",
            "2",
            "--institution",
            "cascade",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cases"] == 2
    r = runner.invoke(
        site_app,
        ["scan", "--dicom-dir", str(tmp_path / "ph" / "dicom"), "--json", "--workers", "1"],
    )
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert [s["complete"] for s in report["studies"]] == [True, True]
    r = runner.invoke(
        site_app,
        [
            "ingest",
            "--dicom-dir",
            str(tmp_path / "ph" / "dicom"),
            "--labels",
            str(tmp_path / "ph" / "labels.csv"),
            "-w",
            str(tmp_path / "ws"),
            "--json",
            "--workers",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["ingested"]) == 2
    r = runner.invoke(
        coordinator_app,
        [
            "ingest",
            "--picai-dir",
            str(tmp_path / "ph" / "picai"),
            "-w",
            str(tmp_path / "cw"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["ingested"]) == 2


@pytest.mark.parametrize(
    ("app", "args", "code", "message"),
    [
        (site_app, ["scan", "--dicom-dir", "/nonexistent/x"], 3, "DICOM folder not found"),
        (
            site_app,
            ["phantom", "--out", "{tmp}/p", "--institution", "nowhere"],
            3,
            "unknown institution preset",
        ),
        (site_app, ["ingest", "--dicom-dir", "{tmp}", "--profile", "huge"], 3, "unknown profile"),
        (site_app, ["ingest", "--dicom-dir", "{tmp}"], 6, "no study in"),
        (
            site_app,
            ["ingest", "--dicom-dir", "{tmp}", "--labels", "{tmp}/none.csv"],
            3,
            "cannot read labels file",
        ),
        (coordinator_app, ["ingest", "-w", "{tmp}/w"], 3, "exactly one of"),
        (coordinator_app, ["ingest", "--picai-dir", "{tmp}"], 3, "t2w.mha"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(app, args, code, message, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1
