"""The gate's commands through typer: keys, export, review, audit, trust, import; exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shared.cli_support import make_app
from shared.errors import PrivacyGateError
from tests.test_bundle_support import PASSPHRASE, make_site


@pytest.fixture
def apps():
    from coordinator.cli import bundle_commands
    from site_agent.cli import export_commands

    site_app = make_app("site-agent", "test")
    export_commands.register(site_app)
    coord_app = make_app("coordinator", "test")
    bundle_commands.register(coord_app)
    return site_app, coord_app


def test_cli_export_review_audit_trust_import(tmp_path, apps, monkeypatch):
    site_app, coord_app = apps
    monkeypatch.setenv("SITE_AGENT_KEY_PASSPHRASE", PASSPHRASE)
    ws = make_site(tmp_path, novel=4, keys=False)["ws"]
    r = CliRunner()
    res = r.invoke(site_app, ["keys", "init", "--site", "aurora", "-w", str(ws)])
    assert res.exit_code == 0, res.output
    assert "fingerprint" in res.output
    out = tmp_path / "bundle.tar"
    res = r.invoke(
        site_app,
        [
            "export",
            "synthetic",
            "--n",
            "2",
            "-w",
            str(ws),
            "--source",
            "store",
            "--positive-fraction",
            "0.5",
            "--out",
            str(out),
            "--tar",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"]["cases"] == 2 and out.is_file()
    res = r.invoke(site_app, ["review", str(out), "-w", str(ws), "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    res = r.invoke(site_app, ["audit", "verify", "-w", str(ws)])
    assert res.exit_code == 0 and "1 entries" in res.output
    coord = tmp_path / "coord"
    res = r.invoke(coord_app, ["import", str(out), "-w", str(coord)])
    assert res.exit_code == 4  # no key pinned
    pub = ws / "keys" / "site-key.pub"
    res = r.invoke(coord_app, ["trust", "add", str(pub), "--site", "aurora", "-w", str(coord)])
    assert res.exit_code == 0, res.output
    res = r.invoke(coord_app, ["import", str(out), "-w", str(coord)])
    assert res.exit_code == 0, res.output
    # a flipped byte in the tar's payload: exit 4, nothing imported
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    res = r.invoke(coord_app, ["import", str(bad), "-w", str(tmp_path / "coord2")])
    assert res.exit_code == 4
    # an edited audit line: exit 4
    log = ws / "audit" / "audit.jsonl"
    log.write_text(log.read_text().replace('"kind":"synthetic"', '"kind":"weights"'))
    assert r.invoke(site_app, ["audit", "verify", "-w", str(ws)]).exit_code == 4


def test_cli_wrong_passphrase_and_missing_key(tmp_path, apps, monkeypatch):
    site_app, _ = apps
    ws = make_site(tmp_path, novel=2)["ws"]
    monkeypatch.setenv("SITE_AGENT_KEY_PASSPHRASE", "wrong one!")
    r = CliRunner()
    res = r.invoke(
        site_app, ["export", "synthetic", "--n", "1", "-w", str(ws), "--source", "store"]
    )
    assert res.exit_code == 3 and "wrong passphrase" in res.output
    res = r.invoke(site_app, ["export", "synthetic", "--n", "1", "-w", str(tmp_path / "none")])
    assert res.exit_code == 3 and "keys init" in res.output


def test_weights_export_classifier_passes_ldm_needs_the_flag(tmp_path):
    import torch

    from coordinator.trust.importer import import_bundle
    from coordinator.trust.store import add_trusted
    from shared.weights import save_weights
    from site_agent.export.weights import export_weights

    site = make_site(tmp_path, novel=0)
    ws, signer = site["ws"], site["signer"]
    save_weights(
        ws / "models" / "classifier-real-bpmri",
        {"fc.weight": torch.zeros(2, 3)},
        {"network": "small-cnn", "cases": 14, "profile": "tiny"},
    )
    res = export_weights(ws, "classifier", signer)
    assert "membership_inference" not in res.manifest["privacy"]["weights"]
    assert "note" in res.manifest["privacy"]["weights"]
    assert res.manifest["provenance"]["training_cases"] == 14
    add_trusted(tmp_path / "coord", "aurora", ws / "keys" / "site-key.pub")
    imp = import_bundle(tmp_path / "coord", res.path)
    assert imp.weights == ["classifier"]
    assert (imp.folder / "weights" / "classifier" / "model.safetensors").is_file()
    with pytest.raises(PrivacyGateError, match="allow-generative-weights"):
        export_weights(ws, "ldm", signer)
    # a config carrying a source identifier is refused by the PHI scan
    save_weights(
        ws / "models" / "classifier-real-bpmri",
        {"fc.weight": torch.zeros(2, 3)},
        {"network": "small-cnn", "note": "trained incl. ACC99887766"},
    )
    with pytest.raises(PrivacyGateError, match="PHI scan"):
        export_weights(ws, "classifier", signer)
