"""Federation: site policy and audit, reply validation, config, and a simulated federation
(2 site nodes + 1 target node, Flower Simulation Engine) with a NaN reply, a stop and a resume."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from shared.profiles import get_profile
from tests.federation_support import make_consortium, make_site, write_fed_toml

FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


@pytest.fixture(autouse=True)
def _flwr_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    for k, v in FLWR_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages built outside a Flower process need the identity Flower would set."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 11, 7, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


# --------------------------------------------------------------------------- policy + ClientApp


def _global_arrays():
    from coordinator.federation.config import FederationConfig
    from coordinator.federation.rounds import initial_state

    state, _ = initial_state(FederationConfig(out_dir="unused"))
    return state


def _message(kind: str, config: dict, with_arrays: bool = True):
    from flwr.app import ConfigRecord, Message, RecordDict

    from shared.federation.records import pack_state

    content = {"config": ConfigRecord(config)}
    if with_arrays:
        content["arrays"], content["layout"] = pack_state(_global_arrays())
    msg = Message(RecordDict(content), dst_node_id=7, message_type=kind)
    msg.metadata.__dict__["_src_node_id"] = 1  # as if it came from the SuperLink
    return msg


def _context(ws: Path, role: str = "site"):
    from flwr.app import Context, RecordDict

    return Context(
        run_id=11,
        node_id=7,
        node_config={"role": role, "workspace": str(ws)},
        state=RecordDict(),
        run_config={},
    )


def _events(ws: Path) -> list[dict]:
    path = ws / "audit" / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _audit_ok(ws: Path) -> bool:
    from site_agent.export import audit
    from site_agent.export.keys import public_keys

    return audit.verify(ws, public_keys(ws)).ok


@pytest.fixture(scope="module")
def site_ws(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("fedsite") / "site", "aurora", 3, n=8)


def test_policy_defaults_and_bad_policies(tmp_path):
    from shared.errors import InputError
    from shared.federation.policy import PolicyRefusal, check_request, load_policy

    p = load_policy(tmp_path, "site")
    assert p.allowed_data == ("synthetic",) and p.source == "default"
    assert load_policy(tmp_path, "target").allowed_data == ("external",)
    assert check_request(p, {"local-steps": 3}, "synthetic")["data"] == "synthetic"
    for bad in (
        {"data": "real"},
        {"returns": "images"},
        {"returns": "generative-weights"},
        {"local-steps": 10_000},
    ):
        with pytest.raises(PolicyRefusal):
            check_request(p, bad, "synthetic")
    (tmp_path / "federation").mkdir()
    (tmp_path / "federation" / "policy.toml").write_text('[policy]\nallowed-returns = ["images"]\n')
    with pytest.raises(InputError, match="never be returned"):
        load_policy(tmp_path, "site")
    (tmp_path / "federation" / "policy.toml").write_text('[policy]\nallowed-dat = ["real"]\n')
    with pytest.raises(InputError, match="unknown policy keys"):
        load_policy(tmp_path, "site")


def test_site_node_trains_and_audits(site_ws):
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from shared.federation.client_app import app

    n_before = len(_events(site_ws))
    request = _message("train", {"local-steps": 1, "batch-size": 4, "server-round": 1})
    reply = app(request, _context(site_ws))
    assert not reply.has_error(), reply.error
    # Flower moves each object of a message in a round trip of its own: the packed weights
    # make a handful of them, whatever the network's tensor count (21 here; 42 objects unpacked)
    assert len(_global_arrays()) == 21
    assert len(get_all_nested_objects(request)) <= 8
    assert len(get_all_nested_objects(reply)) <= 10
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 8 and math.isfinite(metrics["train-loss"])
    ev = _events(site_ws)[n_before:]
    assert [e["event"] for e in ev] == ["federation-reply"]
    assert ev[0]["details"]["data"] == "synthetic" and len(ev[0]["details"]["weights-sha256"]) == 64
    assert _audit_ok(site_ws)


def test_case_cache_follows_the_store_content(tmp_path, monkeypatch):
    from shared.case_format import list_cases
    from shared.classifier import data as data_module
    from shared.classifier.data import load_case_tensors
    from shared.federation import case_cache
    from tests.federation_support import make_store

    store = make_store(tmp_path / "ws" / "cases" / "synthetic", 5, 1, "synthetic")
    ws = tmp_path / "ws"
    entries = lambda: sorted(p.name for p in (ws / case_cache.CACHE_DIR).glob("*.npz"))  # noqa: E731
    first = case_cache.cached_case_tensors(ws, "synthetic", list_cases(store))
    ref = load_case_tensors(list_cases(store))
    assert np.array_equal(first.x, ref.x) and np.array_equal(first.y, ref.y)
    assert first.ids == ref.ids and len(entries()) == 1

    # a fresh process (no in-memory copy) reads the entry and decodes nothing
    case_cache._IN_PROCESS.clear()
    monkeypatch.setattr(data_module, "load_case_tensors", _no_decoding)
    again = case_cache.cached_case_tensors(ws, "synthetic", list_cases(store))
    assert np.array_equal(again.x, ref.x) and again.ids == ref.ids

    # a rewritten volume (same name, other bytes) is another store: decoded again, one entry
    monkeypatch.undo()
    case_cache._IN_PROCESS.clear()
    victim = list_cases(store)[0] / "hbv.nii.gz"
    victim.write_bytes(list_cases(store)[1].joinpath("hbv.nii.gz").read_bytes())
    changed = case_cache.cached_case_tensors(ws, "synthetic", list_cases(store))
    assert np.array_equal(changed.x[0, 1], ref.x[1, 1]) and len(entries()) == 1
    # a removed case too
    import shutil

    shutil.rmtree(list_cases(store)[-1])
    assert len(case_cache.cached_case_tensors(ws, "synthetic", list_cases(store))) == 4
    assert len(entries()) == 1


def _no_decoding(*args, **kwargs):
    raise AssertionError("the cache should have answered")


def test_node_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    from shared import metrics

    rng = np.random.default_rng(0)
    for i in range(300):
        y = rng.integers(0, 2, int(rng.integers(2, 40)))
        if len(set(y.tolist())) < 2:
            continue
        # every other draw has heavy ties (a model that outputs few distinct scores)
        s = (rng.integers(0, 4, len(y)) / 3.0 if i % 2 else rng.random(len(y))).astype("float32")
        assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert metrics.average_precision(y, s) == pytest.approx(
            average_precision_score(y, s), abs=1e-12
        )
        p = np.clip(s, 1e-6, 1 - 1e-6)
        assert metrics.log_loss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-6)


@pytest.mark.parametrize(
    ("role", "kind"),
    [
        ("site", "query.describe"),
        ("target", "query.describe"),
        ("site", "train"),
        ("target", "train"),
        ("target", "evaluate"),
    ],
)
def test_a_message_imports_only_what_it_uses(tmp_path_factory, role, kind):
    """A deployed node answers each message in a fresh process: describe imports no torch;
    train and evaluate import torch but not MONAI, scikit-learn or torch._dynamo, nor nibabel
    once the node's case tensors are cached (the first message of the store decodes them)."""
    import subprocess
    import sys

    from tests.federation_support import MESSAGE_PROBE

    ws = make_consortium(tmp_path_factory.mktemp("fresh"))
    node_ws = ws["target" if role == "target" else "aurora"]
    arrays = node_ws.parent / "global.npz"
    np.savez(arrays, **{k: v.numpy() for k, v in _global_arrays().items()})
    runs = []
    for _ in range(2 if kind != "query.describe" else 1):  # the 2nd finds the case cache
        res = subprocess.run(
            [sys.executable, "-c", MESSAGE_PROBE, role, str(node_ws), kind, str(arrays)],
            capture_output=True,
            text=True,
            timeout=600,
            env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    last = runs[-1]
    assert last["loaded"] == ([] if kind == "query.describe" else ["torch"]), last["loaded"]
    assert last["reported-startup"] > 0 and last["compute"] >= 0


@pytest.mark.parametrize(
    ("kind", "config", "why"),
    [
        ("train", {"data": "real", "local-steps": 1}, "'real' data"),
        ("train", {"returns": "classifier-weights,generative-weights"}, "generative-weights"),
        ("train", {"returns": "images"}, "images"),
        ("query.export_images", {}, "not served"),
        ("evaluate", {}, "does not evaluate"),
    ],
)
def test_policy_refuses_forbidden_requests_and_audits(site_ws, kind, config, why):
    from shared.federation.client_app import CODE_POLICY_REFUSED, app

    n_before = len(_events(site_ws))
    reply = app(_message(kind, config), _context(site_ws))
    assert reply.has_error() and reply.error.code == CODE_POLICY_REFUSED
    assert why in reply.error.reason
    ev = _events(site_ws)[n_before:]
    assert [e["event"] for e in ev] == ["federation-refused"]
    assert why in ev[0]["details"]["reason"]
    assert _audit_ok(site_ws)


def test_node_without_audit_key_answers_nothing(tmp_path):
    from shared.federation.client_app import CODE_NO_AUDIT, app

    ws = make_site(tmp_path / "s", "cascade", 4, n=4, policy="[policy]\n")  # no passphrase
    os.environ.pop("SITE_AGENT_KEY_PASSPHRASE", None)
    reply = app(_message("train", {"local-steps": 1}), _context(ws))
    assert reply.has_error() and reply.error.code == CODE_NO_AUDIT
    assert "passphrase" in reply.error.reason
    reply = app(_message("train", {}), _context(tmp_path, role="nurse"))
    assert reply.has_error() and "role" in reply.error.reason


def test_dp_clipping_bounds_the_update(tmp_path):
    from shared.federation.client_app import app

    ws = make_site(
        tmp_path / "s",
        "dawn",
        5,
        n=6,
        policy=(
            "[policy]\ndp-clip-norm = 0.01\n"
            f'audit-passphrase-file = "{tmp_path / "s" / "secrets" / "audit-passphrase"}"\n'
        ),
    )
    reply = app(_message("train", {"local-steps": 2, "batch-size": 4}), _context(ws))
    assert not reply.has_error(), reply.error
    from shared.federation.records import unpack_state, update_norm

    new = unpack_state(
        reply.content.array_records["arrays"], reply.content.config_records["layout"]
    )
    old = {k: v.numpy() for k, v in _global_arrays().items()}
    assert update_norm(new, old) <= 0.01 * 1.001
    assert reply.content.metric_records["metrics"]["clipped"] == 1


def test_a_nodes_threads_option_caps_its_compute_threads(site_ws):
    """An admin who shares the node's machine sets threads=N in its node config: a train
    message then runs torch and BLAS on N threads (here 1)."""
    import torch
    from threadpoolctl import threadpool_info

    from shared import worker_threads
    from shared.federation.client_app import app

    before = torch.get_num_threads()  # 1 in this suite (conftest)
    try:
        for n in (2, 1):  # each differs from what the process had before the message
            ctx = _context(site_ws)
            ctx.node_config["threads"] = n
            reply = app(_message("train", {"local-steps": 1, "batch-size": 4}), ctx)
            assert not reply.has_error(), reply.error
            assert torch.get_num_threads() == n
        assert {p["num_threads"] for p in threadpool_info()} == {1}
    finally:  # this test's process runs other tests next
        # Limits first: restoring OpenMP's limit also resets torch's intra-op threads.
        if worker_threads._limits is not None:
            worker_threads._limits.restore_original_limits()
            worker_threads._limits = None
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- reply validation


def _reply(src: int, arrays: dict | None, n: int = 5, error: str | None = None):
    from flwr.app import Error, Message, MetricRecord, RecordDict

    if error:
        msg = Message(error=Error(code=1, reason=error), reply_to=_message("train", {}))
    else:
        msg = Message(
            RecordDict(
                {
                    **_packed(arrays),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            ),
            dst_node_id=0,
            message_type="train",
        )
    msg.metadata.__dict__["_src_node_id"] = src
    return msg


def _packed(arrays: dict) -> dict:
    from shared.federation.records import pack_state

    packed, layout = pack_state({k: np.asarray(v) for k, v in arrays.items()})
    return {"arrays": packed, "layout": layout}


def test_packed_state_round_trips_mixed_dtypes_and_refuses_what_does_not_fit():
    """One flat array per dtype travels; names, shapes, dtypes and order come back, and a
    layout that does not place every value (or places more) is refused, never guessed."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from shared.federation.records import pack_state, unpack_state

    rng = np.random.default_rng(0)
    state = {
        "conv.weight": rng.normal(size=(4, 2, 3, 3, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "conv.bias": rng.normal(size=4).astype(np.float32),
        "fc.weight": rng.normal(size=(1, 8)).astype(np.float32),
    }
    arrays, layout = pack_state(state)
    assert sorted(arrays.keys()) == ["packed-<f4", "packed-<i8"]  # two Arrays, not four
    back = unpack_state(arrays, layout)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    # a reply is packed in its request's order (names it does not hold are skipped)
    first = unpack_state(*pack_state(state, order=["fc.weight", "not-there", "conv.bias"]))
    assert list(first) == ["fc.weight", "conv.bias", "conv.weight", "bn.num_batches_tracked"]
    short = ArrayRecord(
        {
            "packed-<f4": Array(arrays["packed-<f4"].numpy()[:-1]),
            "packed-<i8": arrays["packed-<i8"],
        }
    )
    with pytest.raises(ValueError, match="too short"):
        unpack_state(short, layout)
    longer = ArrayRecord(
        {
            "packed-<f4": Array(np.append(arrays["packed-<f4"].numpy(), np.float32(0))),
            "packed-<i8": arrays["packed-<i8"],
        }
    )
    with pytest.raises(ValueError, match="does not place"):
        unpack_state(longer, layout)
    with pytest.raises(ValueError, match="no 'layout'"):
        unpack_state(arrays, None)
    with pytest.raises(ValueError, match="do not match"):
        unpack_state(ArrayRecord({"packed-<f4": arrays["packed-<f4"]}), layout)
    bad = ConfigRecord({"names": ["a"], "shapes": "[[2]", "dtypes": ["<f4"]})
    with pytest.raises(ValueError, match="unreadable"):
        unpack_state(arrays, bad)


def test_fedavg_over_packed_weights_is_the_per_tensor_weighted_average():
    """The server averages the packed arrays (Flower's FedAvg); unpacked, that must be the
    num-examples-weighted mean of each tensor."""
    from flwr.serverapp.strategy import FedAvg

    from shared.federation.records import unpack_state

    rng = np.random.default_rng(1)
    states = [
        {
            "w": rng.normal(size=(3, 2)).astype(np.float32),
            "b": rng.normal(size=2).astype(np.float32),
        }
        for _ in range(3)
    ]
    counts = [5, 1, 10]
    states = [{k: v.astype(np.float32) for k, v in s.items()} for s in states]
    replies = [_reply(i + 1, s, n=n) for i, (s, n) in enumerate(zip(states, counts, strict=True))]
    merged, _ = FedAvg(weighted_by_key="num-examples").aggregate_train(1, replies)
    got = unpack_state(merged, replies[0].content.config_records["layout"])
    for k in ("w", "b"):
        want = sum(n * s[k] for s, n in zip(states, counts, strict=True)) / sum(counts)
        np.testing.assert_allclose(got[k], want, rtol=1e-6)


def test_validation_rejects_bad_replies():
    from coordinator.federation.validation import validate_replies

    ref = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    good = [
        _reply(i, {"w": np.full((3, 2), 0.1 * i, np.float32), "b": np.ones(2, np.float32)})
        for i in (1, 2, 3)
    ]
    nan = _reply(4, {"w": np.full((3, 2), np.nan, np.float32), "b": np.ones(2, np.float32)})
    inf = _reply(5, {"w": np.zeros((3, 2), np.float32), "b": np.array([np.inf, 0], np.float32)})
    shape = _reply(6, {"w": np.zeros((2, 3), np.float32), "b": np.ones(2, np.float32)})
    names = _reply(7, {"w": np.zeros((3, 2), np.float32)})
    huge = _reply(8, {"w": np.full((3, 2), 1e4, np.float32), "b": np.ones(2, np.float32)})
    err = _reply(9, None, error="node crashed")
    zero = _reply(10, {"w": np.zeros((3, 2), np.float32), "b": np.ones(2, np.float32)}, n=0)
    accepted, rejected, _norms = validate_replies(
        [*good, nan, inf, shape, names, huge, err, zero], ref, norm_factor=10.0
    )
    assert sorted(int(m.metadata.src_node_id) for m in accepted) == [1, 2, 3]
    reasons = {r.node_id: r.reason for r in rejected}
    assert "NaN" in reasons[4] and "NaN or Inf" in reasons[5]
    assert "shape" in reasons[6] and "names" in reasons[7]
    assert "median" in reasons[8] and "node crashed" in reasons[9]
    assert "num-examples" in reasons[10]
    # packed weights in another order would be averaged into the wrong tensors
    swapped = _reply(11, {"b": np.ones(2, np.float32), "w": np.zeros((3, 2), np.float32)})
    unfit = _reply(12, {"w": np.zeros((3, 2), np.float32), "b": np.ones(2, np.float32)})
    unfit.content.config_records["layout"]["shapes"] = "[[3, 2], [3]]"
    _, rej3, _ = validate_replies([*good, swapped, unfit], ref, norm_factor=10.0)
    reasons = {r.node_id: r.reason for r in rej3}
    assert "order" in reasons[11] and "unreadable" in reasons[12]
    # two replies: the outlier is caught against the other one alone
    acc2, rej2, _ = validate_replies([good[0], huge], ref, norm_factor=10.0)
    assert [r.node_id for r in rej2] == [8] and len(acc2) == 1


def test_fed_toml_parsing(tmp_path):
    from coordinator.federation.config import FederationConfig, load_fed_toml
    from shared.errors import InputError

    ws = {"aurora": tmp_path / "a", "borealis": tmp_path / "b", "target": tmp_path / "t"}
    fed = load_fed_toml(write_fed_toml(tmp_path / "fed.toml", ws, tmp_path / "out"))
    rc = fed.run_config
    assert fed.mode == "simulation" and len(fed.sim_nodes) == 3 and rc.expected_nodes == 3
    assert rc.phase_of(1) == "pretrain" and rc.phase_of(2) == "adapt"
    again = FederationConfig.from_run_config(rc.to_run_config())
    assert again == rc
    # round counts do not change the fingerprint (resume with more rounds); settings do
    more = FederationConfig(**{**again.__dict__, "adapt_rounds": 5})
    assert more.fingerprint() == rc.fingerprint()
    assert FederationConfig(**{**again.__dict__, "adapt_lr": 0.1}).fingerprint() != rc.fingerprint()
    (tmp_path / "bad.toml").write_text("[federation]\nroundtimeout = 3\n")
    with pytest.raises(InputError, match="unknown keys"):
        load_fed_toml(tmp_path / "bad.toml")
    # the network follows the profile unless named; an unknown profile names file and key
    good = (tmp_path / "fed.toml").read_text()
    assert "network" not in good
    (tmp_path / "cpu.toml").write_text(good.replace('profile = "tiny"', 'profile = "cpu"'))
    assert load_fed_toml(tmp_path / "cpu.toml").run_config.network == "small-cnn"
    pool = good.replace('profile = "tiny"', 'profile = "tiny"\nnetwork = "small-cnn-pool"')
    (tmp_path / "pool.toml").write_text(pool)
    assert load_fed_toml(tmp_path / "pool.toml").run_config.network == "small-cnn-pool"
    (tmp_path / "typo.toml").write_text(good.replace('profile = "tiny"', 'profile = "tinyy"'))
    with pytest.raises(InputError, match=r"typo.toml: \[federation\] profile: unknown profile"):
        load_fed_toml(tmp_path / "typo.toml")
    (tmp_path / "net.toml").write_text(pool.replace("small-cnn-pool", "small-cnn-poool"))
    with pytest.raises(InputError, match=r"net.toml: \[federation\] unknown network"):
        load_fed_toml(tmp_path / "net.toml")


# --------------------------------------------------------------------------- simulation


@pytest.mark.slow
def test_simulated_federation_rejects_nan_stops_and_resumes(tmp_path):
    """2 site nodes (one replies NaN) + 1 target node; round 1 pretrain, round 2 adapt; the
    first run stops after round 1, the rerun continues with round 2 only."""
    import typer
    from typer.testing import CliRunner

    from coordinator.cli.federate_command import federate

    ws = make_consortium(tmp_path)
    out = tmp_path / "out"
    cli = typer.Typer()
    cli.command()(federate)

    cfg1 = write_fed_toml(
        tmp_path / "fed1.toml", ws, out, faults={"borealis": "nan"}, extra="stop-after-round = 1"
    )
    res = CliRunner().invoke(cli, ["--config", str(cfg1), "--json", "--timeout", "240"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "finished:completed"
    state = json.loads((out / "state.json").read_text())
    assert state["last-round"] == 1 and state["phases"] == ["pretrain"]
    assert (out / "rounds" / "round-0001" / "model.safetensors").is_file()
    assert not (out / "final").exists()
    # phase 1 (one pretraining round) is over: its global model is a classifier weights folder
    pretrained = json.loads((out / "pretrained" / "config.json").read_text())
    assert (pretrained["network"], pretrained["in_channels"], pretrained["grid_size"]) == (
        get_profile("tiny").classifier.network,  # the fed.toml names none: the profile's
        3,
        [24, 24, 12],
    )
    assert (out / "pretrained" / "model.safetensors").read_bytes() == (
        out / "rounds" / "round-0001" / "model.safetensors"
    ).read_bytes()
    rej = [json.loads(x) for x in (out / "rejections.jsonl").read_text().splitlines()]
    assert len(rej) == 1 and rej[0]["round"] == 1 and "NaN" in rej[0]["reason"]

    r1 = (out / "rounds" / "round-0001" / "model.safetensors").read_bytes()
    cfg2 = write_fed_toml(tmp_path / "fed2.toml", ws, out, faults={"borealis": "nan"})
    res = CliRunner().invoke(cli, ["--config", str(cfg2), "--json", "--timeout", "240"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pretrained"] == str(out / "pretrained")
    log = (out / "flower-run.log").read_text()
    assert "resuming after round 1 of 2" in log
    assert (out / "rounds" / "round-0001" / "model.safetensors").read_bytes() == r1
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["round"], r["phase"]) for r in rows] == [("1", "pretrain"), ("2", "adapt")]
    assert rows[0]["accepted"] == "1" and rows[0]["rejected"] == "1"
    assert rows[0]["missing"] == "0" and not rows[0]["missing-nodes"]
    for r in rows:  # the round's cost: the nodes report compute, the rest is overhead
        assert 0 < float(r["train-compute-max"]) < float(r["train-seconds"]) <= float(r["seconds"])
        assert float(r["overhead-seconds"]) >= 0 and int(r["array-bytes-down"]) > 0
        assert int(r["wire-bytes-up"]) > int(r["array-bytes-up"]) > 0
    assert all(0.0 <= float(r["test-auc"]) <= 1.0 for r in rows)
    for f in ("final/model.safetensors", "final/config.json", "metrics.png"):
        assert (out / f).is_file(), f
    # each site audited its replies; the target node journalled its own
    for name in ("aurora", "borealis"):
        assert _audit_ok(ws[name])
        assert any(e["event"] == "federation-reply" for e in _events(ws[name]))
    assert (ws["target"] / "federation" / "journal.jsonl").is_file()


# --------------------------------------------------------------------------- bounded exchange


class _FakeGrid:
    """Replies as scripted: node 2 answers, the SuperLink answers 'unavailable' for node 3,
    node 4 never answers; node 5 is not connected."""

    def __init__(self):
        self.pulls = 0

    def get_node_ids(self):
        return [2, 3, 4]

    def push_messages(self, msgs):
        for m in msgs:
            m.metadata.__dict__["_message_id"] = f"msg-{m.metadata.dst_node_id}"
        self.sent = {m.metadata.message_id: m for m in msgs}
        return list(self.sent)

    def pull_messages(self, ids):
        from flwr.app import Error, Message, MetricRecord, RecordDict

        self.pulls += 1
        out = []
        for mid in ids:
            req = self.sent[mid]
            node = int(req.metadata.dst_node_id)
            if node == 2:
                reply = Message(RecordDict({"metrics": MetricRecord({"n": 1})}), reply_to=req)
                reply.metadata.__dict__["_src_node_id"] = 2
            elif node == 3:
                reply = Message(error=Error(code=5, reason="Node Unavailable"), reply_to=req)
                reply.metadata.__dict__["_src_node_id"] = 1  # the SuperLink answers for it
            else:
                continue
            out.append(reply)
        return out


def test_exchange_names_every_missing_node_and_never_waits_past_its_timeout():
    import time

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

    from coordinator.federation.exchange import exchange
    from coordinator.federation.rounds import _reached

    grid = _FakeGrid()
    arrays = ArrayRecord({"w": Array(np.ones((4, 4), np.float32))})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    reached, offline = _reached(grid, [2, 3, 4, 5])
    msgs = [Message(content, dst_node_id=n, message_type="train") for n in reached]
    t0 = time.monotonic()
    ex = exchange(grid, msgs, timeout=0.5, offline=offline)
    # waited for node 4, but only until the timeout (the bound is loose: a busy machine)
    assert 0.5 <= time.monotonic() - t0 < 60
    assert [int(m.metadata.src_node_id) for m in ex.replies] == [2]
    assert ex.missing == {
        3: "node unavailable (it disconnected or stopped sending heartbeats)",
        4: "no reply within round-timeout 0.5 s",
        5: "offline before the round (no heartbeat)",
    }
    assert ex.array_bytes_down == 3 * len(arrays["w"].data) and ex.array_bytes_up == 0
    assert ex.wire_bytes_down > ex.array_bytes_down and ex.wire_bytes_up > 0


class _ScriptedNodes:
    """A grid whose nodes answer at once: sites 2 and 3 return the weights they receive plus
    1, target 4 plus 0.5 when it trains. The target's score of a model is a function of that
    model (``_score``), so a test can tell which round's model each score belongs to."""

    def __init__(self, crash_in_round: int | None = None):
        self.ROLES = {2: ("site", "aurora"), 3: ("site", "borealis"), 4: ("target", "target")}
        self.sent: dict[str, object] = {}
        self.exchanges: list[list[tuple[int, str, int, bool]]] = []
        self.crash_in_round = crash_in_round

    def get_node_ids(self):
        return list(self.ROLES)

    def push_messages(self, msgs):
        batch = []
        for m in msgs:
            cfg = m.content.config_records["config"]
            r = int(cfg["server-round"])
            if r == self.crash_in_round:
                raise RuntimeError("the ServerApp's process died")
            m.metadata.__dict__["_message_id"] = f"msg-{len(self.sent)}"
            self.sent[m.metadata.message_id] = m
            node = int(m.metadata.dst_node_id)
            batch.append((node, m.metadata.message_type, r, bool(cfg.get("evaluate-received"))))
        self.exchanges.append(batch)
        return [m.metadata.message_id for m in msgs]

    def pull_messages(self, ids):
        return [self._answer(self.sent[mid]) for mid in ids]

    def _answer(self, req):
        from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

        from shared.federation.records import pack_state, unpack_state

        node, kind = int(req.metadata.dst_node_id), req.metadata.message_type
        role, site = self.ROLES[node]
        if kind == "query.describe":
            content = RecordDict(
                {
                    "node": ConfigRecord({"role": role, "site": site}),
                    "metrics": MetricRecord({"num-examples": 10}),
                }
            )
        else:
            state = unpack_state(req.content["arrays"], req.content["layout"])
            scores = {"num-examples": 7, "test-auc": _score(state), "test-ap": 0.5}
            if kind == "evaluate":
                content = RecordDict({"metrics": MetricRecord(scores | {"test-loss": 1.0})})
            else:
                step = 1.0 if role == "site" else 0.5
                new = {k: v + step if v.dtype.kind == "f" else v for k, v in state.items()}
                met = {"num-examples": 10, "train-loss": 0.5}
                if req.content["config"].get("evaluate-received"):
                    met |= {"received-" + k: v for k, v in scores.items()}
                arrays, layout = pack_state(new, order=state)
                content = RecordDict(
                    {"arrays": arrays, "layout": layout, "metrics": MetricRecord(met)}
                )
        reply = Message(content, reply_to=req)
        reply.metadata.__dict__["_src_node_id"] = node
        return reply


def _score(state) -> float:
    mean = np.mean([v.mean() for v in state.values() if v.dtype.kind == "f"])
    return float(np.tanh(abs(mean)))


def test_each_rounds_model_is_scored_with_the_next_rounds_requests(tmp_path):
    """Evaluation rides with the next round's requests: the target gets an evaluate request
    beside the sites' train requests while pretraining, and scores the model it receives
    before training while adapting; only the last round's model costs an exchange of its own.
    Every score lands on the row (and checkpoint) of the model it scored, also across a
    crash and resume."""
    from coordinator.federation.checkpoints import round_dir
    from coordinator.federation.config import FederationConfig
    from coordinator.federation.rounds import run_federation
    from shared.weights import load_weights

    out = tmp_path / "out"
    cfg = FederationConfig(
        out_dir=str(out), pretrain_rounds=2, adapt_rounds=2, min_sites=2, round_timeout=5
    )
    crashing = _ScriptedNodes(crash_in_round=4)
    with pytest.raises(RuntimeError, match="died"):
        run_federation(crashing, cfg)
    rows = json.loads((out / "state.json").read_text())["rows"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert "evaluators" not in rows[2]  # round 3's scores were to come with round 4

    grid = _ScriptedNodes()
    summary = run_federation(grid, cfg)
    assert summary["resumed-from"] == 3 and summary["ran"] == 1
    exchanges = crashing.exchanges + grid.exchanges
    train_and_score = [sorted(x) for x in exchanges if x[0][1] != "query.describe"]
    assert train_and_score == [
        [(2, "train", 1, False), (3, "train", 1, False)],
        [(2, "train", 2, False), (3, "train", 2, False), (4, "evaluate", 1, False)],
        [(4, "train", 3, True)],  # round 2's model: scored by the target as it trains
        [(4, "train", 4, True)],  # the resumed run: round 3's model rides with round 4
        [(4, "evaluate", 4, False)],  # the last round's model: an exchange of its own
    ]
    rows = json.loads((out / "state.json").read_text())["rows"]
    table = list(csv.DictReader((out / "metrics.csv").open()))
    for r, row, line in zip([1, 2, 3, 4], rows, table, strict=True):
        state, checkpoint = load_weights(round_dir(out, r))
        expected = _score({k: v.numpy() for k, v in state.items()})
        assert row["round"] == r and row["evaluators"] == 1
        assert row["test-auc"] == pytest.approx(expected)
        assert checkpoint["metrics"]["test-auc"] == pytest.approx(expected)
        assert float(line["test-auc"]) == pytest.approx(expected)
    pretrained = json.loads((out / "pretrained" / "config.json").read_text())
    assert pretrained["rounds"] == 2
    assert pretrained["metrics"]["test-auc"] == pytest.approx(rows[1]["test-auc"])
    # costs: the last round also paid for the exchange that scored its model
    assert rows[3]["eval-seconds"] is not None and rows[2]["eval-seconds"] is None
    assert all(r["overhead-seconds"] >= 0 for r in rows)


def test_failure_reason_is_one_line_without_flowers_prefix():
    from coordinator.federation.runner import failure_reason

    details = "ServerApp failed with exception: round 1 (pretrain): 0 valid\nreplies"
    assert failure_reason(details) == "round 1 (pretrain): 0 valid replies"
    assert failure_reason("") == "see log"


def test_run_status_is_none_while_the_superlink_does_not_answer(monkeypatch):
    import subprocess

    from coordinator.federation import runner

    answers = {
        '{"success": false, "error-message": "Connection to the SuperLink is unavailable"}': None,
        '{"success": true, "runs": [{"run-id": "5", "status": "running"}]}': {
            "run-id": "5",
            "status": "running",
        },
    }
    for stdout, expected in answers.items():
        done = subprocess.CompletedProcess([], 0, stdout=stdout, stderr="")
        monkeypatch.setattr(subprocess, "run", lambda *a, _done=done, **k: _done)
        assert runner.run_status(Path("/nonexistent"), "c", 5) == expected

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired("flwr", 60)

    monkeypatch.setattr(subprocess, "run", hang)
    assert runner.run_status(Path("/nonexistent"), "c", 5) is None
