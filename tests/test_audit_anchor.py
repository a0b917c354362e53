"""Audit-log anchoring (issue 11, defect 3 and deliver 3): the log's head is recorded outside
the log (bundle manifests, federation replies, key hand-overs), so ``audit verify`` catches a
wiped or shortened log at the site and ``coordinator import`` catches one at the coordinator."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.audit_support import Apps, export_store, make_site, one_line_error


@pytest.fixture
def apps(monkeypatch) -> Apps:
    return Apps(monkeypatch)


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path, novel=4)


def _wipe_log(ws) -> None:
    (ws / "audit" / "audit.jsonl").unlink()
    (ws / "audit" / "head.json").unlink()


# --------------------------------------------------------------------------- at the site


def test_wiped_log_with_manifests_left_fails_verification(apps, site):
    """Defect 3: with audit.jsonl and head.json deleted while audit/manifests/ still lists
    past exports, `audit verify` exited 0."""
    ws = site["ws"]
    export_store(ws, site["signer"])
    export_store(ws, site["signer"])
    assert len(list((ws / "audit" / "manifests").glob("*.json"))) == 2
    assert apps.site_agent("audit", "verify", "-w", ws).exit_code == 0
    _wipe_log(ws)
    line = one_line_error(apps.site_agent("audit", "verify", "-w", ws), 4)
    assert "missing" in line and "2 exported bundle" in line


def test_missing_workspace_is_bad_input(apps, tmp_path):
    """Defect 3: `audit verify -w /nonexistent` exited 0."""
    line = one_line_error(apps.site_agent("audit", "verify", "-w", tmp_path / "nonexistent"), 3)
    assert "nonexistent" in line
    (tmp_path / "file").write_text("x")
    one_line_error(apps.site_agent("audit", "verify", "-w", tmp_path / "file"), 3)
    (tmp_path / "empty").mkdir()  # a folder that never was a site workspace
    one_line_error(apps.site_agent("audit", "verify", "-w", tmp_path / "empty"), 3)


def test_fresh_site_with_nothing_exported_verifies(apps, site):
    res = apps.site_agent("audit", "verify", "-w", site["ws"])
    assert res.exit_code == 0 and "0 entries" in res.output


def test_manifest_records_the_audit_head(site):
    from site_agent.export import audit

    ws = site["ws"]
    first = export_store(ws, site["signer"])
    assert first.manifest["audit_head"]["seq"] == 0
    assert first.manifest["audit_head"]["hash"] == "0" * 64
    head = audit.current_head(ws)
    second = export_store(ws, site["signer"]).manifest["audit_head"]
    assert (second["seq"], second["hash"]) == (head.seq, head.hash) and head.seq == 1
    assert second["time"] >= first.manifest["created"]


def test_truncated_log_is_caught_by_the_manifests(apps, site):
    """Deleting the last entries (and the head, which the key would be needed to re-sign)
    leaves bundles on record whose export entries are gone."""
    ws = site["ws"]
    export_store(ws, site["signer"])
    export_store(ws, site["signer"])
    log = ws / "audit" / "audit.jsonl"
    log.write_bytes(log.read_bytes().splitlines(keepends=True)[0])
    (ws / "audit" / "head.json").unlink()
    line = one_line_error(apps.site_agent("audit", "verify", "-w", ws), 4)
    assert "no export entry" in line or "entries" in line


def test_log_rewritten_below_a_manifest_head_is_caught(site):
    """A log rebuilt with the key after truncation still contradicts the head that a later
    bundle's manifest recorded (same position, another hash)."""
    from site_agent.export import audit
    from site_agent.export.keys import public_keys

    ws, signer = site["ws"], site["signer"]
    audit.append(ws, signer, "note", {"n": 1})
    export_store(ws, signer)  # its manifest records head (1, hash of entry 1)
    log = ws / "audit" / "audit.jsonl"
    log.unlink()
    (ws / "audit" / "head.json").unlink()
    audit.append(ws, signer, "note", {"n": 2})  # a different entry 1, properly signed
    rep = audit.verify(ws, public_keys(ws))
    assert not rep.ok
    assert any("entry 1" in p for p in rep.problems), rep.problems


# --------------------------------------------------------------------------- at the coordinator


def test_coordinator_refuses_a_bundle_whose_audit_head_goes_backwards(apps, site, tmp_path):
    ws, signer, coord = site["ws"], site["signer"], tmp_path / "coord"
    apps.pin(ws, coord)
    b1 = export_store(ws, signer, tmp_path / "b1")
    b2 = export_store(ws, signer, tmp_path / "b2")
    # imported out of order: older bundles stay importable
    assert apps.coordinator("import", b2.path, "-w", coord).exit_code == 0
    assert apps.coordinator("import", b1.path, "-w", coord).exit_code == 0
    heads = json.loads((coord / "trust" / "audit-heads.json").read_text())
    assert heads["sites"]["aurora"]["highest"]["seq"] == b2.manifest["audit_head"]["seq"]
    # the site wipes its log and its records, then exports again: its head starts over
    shutil.rmtree(ws / "audit")
    time.sleep(1.1)  # records are ordered by the time the site states, to the second
    b3 = export_store(ws, signer, tmp_path / "b3")
    assert b3.manifest["audit_head"]["seq"] == 0
    line = one_line_error(apps.coordinator("import", b3.path, "-w", coord), 4)
    assert "backwards" in line and "aurora" in line
    assert not (coord / "imports" / "aurora" / b3.bundle_id).exists()


def test_coordinator_refuses_a_contradicting_chain_position(apps, site, tmp_path):
    from site_agent.export import audit

    ws, signer, coord = site["ws"], site["signer"], tmp_path / "coord"
    apps.pin(ws, coord)
    audit.append(ws, signer, "note", {"n": 1})
    b1 = export_store(ws, signer, tmp_path / "b1")  # head (1, h1)
    assert apps.coordinator("import", b1.path, "-w", coord).exit_code == 0
    shutil.rmtree(ws / "audit")
    audit.append(ws, signer, "note", {"n": 2})  # another entry 1
    b2 = export_store(ws, signer, tmp_path / "b2")  # head (1, h1') created later
    assert b2.manifest["audit_head"]["seq"] == 1
    line = one_line_error(apps.coordinator("import", b2.path, "-w", coord), 4)
    assert "entry 1" in line and "aurora" in line


# --------------------------------------------------------------------------- federation replies


def test_site_reply_carries_the_head_and_the_site_keeps_a_record(tmp_path, monkeypatch):
    """A describe reply carries the site's audit head; the site's own reply journal proves the
    entries existed, so wiping the log afterwards fails `audit verify`."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from shared.bundle.anchor import AUDIT_HEAD_RECORD
    from shared.federation.client_app import app
    from site_agent.export import audit
    from site_agent.export.keys import public_keys
    from tests.federation_support import make_site as make_fed_site

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 11, 7, 1
    try:
        ws = make_fed_site(tmp_path / "site", "aurora", 3, n=4)
        ctx = Context(
            run_id=11,
            node_id=7,
            node_config={"role": "site", "workspace": str(ws)},
            state=RecordDict(),
            run_config={},
        )
        heads = []
        for _ in range(2):
            msg = Message(
                RecordDict({"config": ConfigRecord({"server-round": 0})}),
                dst_node_id=7,
                message_type="query.describe",
            )
            msg.metadata.__dict__["_src_node_id"] = 1
            reply = app(msg, ctx)
            assert not reply.has_error(), reply.error
            heads.append(dict(reply.content.config_records[AUDIT_HEAD_RECORD]))
    finally:
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None
    assert heads[0]["seq"] == 0 and heads[1]["seq"] == 1  # the first reply's entry came between
    assert audit.verify(ws, public_keys(ws)).ok
    journal = ws / "federation" / "replies.jsonl"
    assert len(journal.read_text().splitlines()) == 2
    _wipe_log(ws)
    rep = audit.verify(ws, public_keys(ws))
    assert not rep.ok and "replies.jsonl" in rep.problems[0]


def test_server_rejects_a_reply_whose_audit_head_goes_backwards():
    from coordinator.federation.validation import audit_head_problem

    seen: dict[int, tuple[int, str]] = {}
    assert audit_head_problem(5, {"seq": 3, "hash": "a" * 64}, seen) is None
    assert audit_head_problem(5, {"seq": 4, "hash": "b" * 64}, seen) is None
    assert "backwards" in (audit_head_problem(5, {"seq": 2, "hash": "c" * 64}, seen) or "")
    assert "another hash" in (audit_head_problem(5, {"seq": 4, "hash": "d" * 64}, seen) or "")
    assert audit_head_problem(6, None, seen) is None  # a node that sends none (target role)
