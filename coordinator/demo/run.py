"""``coordinator demo``: the whole consortium on phantom data, step by step.

Layout of the demo workspace::

    phantom/<site>/, phantom/external/    the generated hospitals (DICOM, labels, masks)
    sites/<site>/                         each hospital's site-agent workspace (keys, models,
                                          synthetic cases, reports/fidelity/, exports/, audit log)
    coordinator/                          the coordinator's workspace: trust store, imports/,
                                          cases/external, fed.toml, fed-out/, study.toml, study/
    logs/<step>.log                       every command's output
    demo-state.json                       finished steps (a rerun continues after them)
    DEMO.md, demo-summary.json            what ran, the results and where everything is

Every step runs the real command-line tool in its own process: what a hospital's IT or the
coordinator would type. The hospitals and the external institution are independent until the
coordinator imports their bundles, so their chains of steps (lanes) run side by side, as they
would on their own machines; each step's torch, BLAS and OpenMP get its share of the cores
(``OMP_NUM_THREADS``: thread pools that spin must not share a core), while the phantom writer
keeps a process per core (processes share cores without that cost: the external institution's
phantoms, the longest step of the quick demo, then use what the hospitals' lanes leave idle).
The coordinator's steps run once every lane is done, one after another except the study's
conditions that need no federation, which run beside the federation (its rounds leave the cores
half idle). Phantom data checks the machinery, not clinical truth.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.demo.configs import CONDITIONS, FEDERATED, write_fed_toml, write_study_toml
from coordinator.demo.plan import DemoPlan
from coordinator.demo.steps import DemoState, Runner, StepFailed, tool
from shared.atomic import atomic_write_text
from shared.errors import InputError
from site_agent.export.keys import PASSPHRASE_ENV

SITE = tool("site-agent")
COORD = tool("coordinator")


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # key into DemoPlan.expected_seconds (for the ETA)
    action: Callable[[], dict[str, Any] | None]
    with_previous: bool = False  # a coordinator step run side by side with the one before


class Demo:
    def __init__(self, plan: DemoPlan, workspace: Path) -> None:
        self.plan = plan
        self.ws = workspace.resolve()
        if self.ws.exists() and not self.ws.is_dir():
            raise InputError(f"demo workspace {workspace} exists and is not a folder")
        try:
            self.ws.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create the demo workspace {workspace}: {exc.strerror}"
            ) from None
        self.state = DemoState(self.ws, plan.record())
        self.coord = self.ws / "coordinator"
        self.sites = {s.name: self.ws / "sites" / s.name for s in plan.sites}
        self.runner = Runner(self.ws, {PASSPHRASE_ENV: self._passphrase()}, self._threads)
        self._cores = len(os.sched_getaffinity(0))
        self._active_lanes = 0
        self.lanes_at_once = 1  # how many lanes the last run() ran side by side
        self._lock = threading.Lock()

    def _passphrase(self) -> str:
        """The demo sites' key passphrase: random, kept (owner-only) in the demo workspace so a
        rerun can continue. A real site keeps its passphrase out of the workspace."""
        path = self.ws / ".demo-key-passphrase"
        if not path.is_file():
            atomic_write_text(path, secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    # -- the steps ------------------------------------------------------------------------
    def lanes(self) -> list[list[Step]]:
        """The independent chains of steps: one per hospital (its phantom DICOM, keys,
        training, generation, fidelity report and screened exports; the source site also its
        classifier weights) and the external institution's (its phantom DICOM, ingested at the
        coordinator). Nothing in one lane reads what another writes."""
        p = self.plan
        src = p.sites[0].name  # the single source site of the paper's conditions
        lanes: list[list[Step]] = []
        for s in p.sites:
            lane = [
                Step(f"phantom-{s.name}", "phantom-site", self._phantom(s.name, s)),
                Step(f"keys-{s.name}", "keys", self._keys(s.name)),
                Step(f"train-{s.name}", "train", self._train(s.name)),
                # as a site would: generate, read the fidelity report, then export those cases
                Step(f"generate-{s.name}", "generate", self._generate(s.name)),
                Step(f"fidelity-{s.name}", "fidelity", self._fidelity(s.name)),
                Step(f"export-synthetic-{s.name}", "export-synthetic", self._export_syn(s.name)),
            ]
            if s.name == src:
                for source in ("real", "reconstructed"):
                    lane.append(
                        Step(f"pretrain-{source}-{src}", "pretrain", self._pretrain(src, source))
                    )
                    lane.append(
                        Step(f"export-weights-{source}-{src}", "export-weights",
                             self._export_w(src, source))
                    )  # fmt: skip
            lane.append(Step(f"audit-{s.name}", "audit", self._audit(s.name)))
            lanes.append(lane)
        lanes.append(
            [
                Step("phantom-external", "phantom-external", self._phantom_external),
                Step("ingest-external", "ingest-external", self._ingest_external),
            ]
        )
        return lanes

    def coordinator_steps(self) -> list[Step]:
        """After every lane: the coordinator pins the sites' keys, imports their bundles,
        runs the federation and the study. The study's conditions that do not need the
        federation run while it does (its rounds leave the cores half idle); the study then
        runs the federated condition's cells and writes its report."""
        return [
            Step("trust", "trust", self._trust),
            Step("import", "import", self._import),
            Step("federate", "federate", self._federate),
            Step("study-ready", "study-ready", self._study_ready, with_previous=True),
            Step("study", "study", self._study),
        ]

    def steps(self) -> list[Step]:
        """Every step: the lanes' (one lane after another), then the coordinator's."""
        return [st for lane in self.lanes() for st in lane] + self.coordinator_steps()

    def _phantom(self, name: str, s: Any) -> Callable[[], None]:
        def act() -> None:
            self.runner.run(
                f"phantom-{name}",
                [*SITE, "phantom", "--out", str(self.ws / "phantom" / name), "--cases",
                 str(s.cases), "--institution", s.institution, "--seed", str(s.seed),
                 "--profile", self.plan.profile],
            )  # fmt: skip

        return act

    def _phantom_external(self) -> None:
        self.runner.run(
            "phantom-external",
            [*SITE, "phantom", "--out", str(self.ws / "phantom" / "external"), "--cases",
             str(self.plan.external_cases), "--institution", "external", "--seed", "3",
             "--profile", self.plan.profile],
        )  # fmt: skip

    def _keys(self, name: str) -> Callable[[], dict[str, Any]]:
        def act() -> dict[str, Any]:
            ws = self.sites[name]
            if not (ws / "keys" / "site-key.pub").is_file():
                self.runner.run(
                    f"keys-{name}", [*SITE, "keys", "init", "--site", name, "-w", str(ws)]
                )
            return {"public_key": str(ws / "keys" / "site-key.pub")}

        return act

    def _train(self, name: str) -> Callable[[], dict[str, Any]]:
        def act() -> dict[str, Any]:
            ph = self.ws / "phantom" / name
            cmd = [*SITE, "train", "--dicom-dir", str(ph / "dicom"), "--labels",
                   str(ph / "labels.csv"), "--masks", str(ph / "masks"), "-w",
                   str(self.sites[name]), "--profile", self.plan.profile, "--json"]  # fmt: skip
            if self.plan.autoencoder_steps:
                cmd += ["--autoencoder-steps", str(self.plan.autoencoder_steps)]
            if self.plan.diffusion_steps:
                cmd += ["--diffusion-steps", str(self.plan.diffusion_steps)]
            summary = self.runner.run(f"train-{name}", cmd, want_json=True)
            return {
                "cases": summary.get("cases", {}),
                "fidelity": summary.get("fidelity", {}).get("summary", ""),
                "seconds": summary.get("seconds", {}),
            }

        return act

    def _generate(self, name: str) -> Callable[[], dict[str, Any]]:
        def act() -> dict[str, Any]:
            res = self.runner.run(
                f"generate-{name}",
                [*SITE, "generate", "--n", str(self.plan.generated_cases), "-w",
                 str(self.sites[name]), "--json"],
                want_json=True,
            )  # fmt: skip
            return {"synthetic_cases": len(res["cases"])}

        return act

    def _fidelity(self, name: str) -> Callable[[], dict[str, Any]]:
        def act() -> dict[str, Any]:
            rep = self.runner.run(
                f"fidelity-{name}", [*SITE, "fidelity", "-w", str(self.sites[name]), "--json"],
                want_json=True,
            )  # fmt: skip
            return {"report": _abs(rep["paths"]["markdown"]), "worth": _worth(rep)}

        return act

    def _export_syn(self, name: str) -> Callable[[], dict[str, Any]]:
        # the cases the site generated and read the fidelity report of, not new samples
        def act() -> dict[str, Any]:
            res = self.runner.run(
                f"export-synthetic-{name}",
                [*SITE, "export", "synthetic", "--n", str(self.plan.synthetic_cases),
                 "--source", "store", "-w", str(self.sites[name]), "--dicom-dir",
                 str(self.ws / "phantom" / name / "dicom"), "--json"],
                want_json=True,
            )  # fmt: skip
            return {"bundle": _abs(res["bundle"]), "screen": _screen(res)}

        return act

    def _pretrain(self, name: str, source: str) -> Callable[[], dict[str, Any]]:
        def act() -> dict[str, Any]:
            cmd = [*SITE, "pretrain", "-w", str(self.sites[name]), "--source", source,
                   "--profile", self.plan.profile, "--json"]  # fmt: skip
            if self.plan.site_pretrain_steps:
                cmd += ["--steps", str(self.plan.site_pretrain_steps)]
            res = self.runner.run(f"pretrain-{source}-{name}", cmd, want_json=True)
            model = self.sites[name] / "models" / f"classifier-{source}-bpmri"
            return {
                "model": str(model),
                "cases": res.get("cases"),
                "best_step": res.get("best_step"),
            }

        return act

    def _export_w(self, name: str, source: str) -> Callable[[], dict[str, Any]]:
        def act() -> dict[str, Any]:
            model = self.state.output(f"pretrain-{source}-{name}")["model"]
            res = self.runner.run(
                f"export-weights-{source}-{name}",
                [*SITE, "export", "weights", "--model", "classifier", "--model-dir", model,
                 "-w", str(self.sites[name]), "--json"],
                want_json=True,
            )  # fmt: skip
            return {"bundle": _abs(res["bundle"])}

        return act

    def _audit(self, name: str) -> Callable[[], dict[str, Any]]:
        def act() -> dict[str, Any]:
            res = self.runner.run(
                f"audit-{name}", [*SITE, "audit", "verify", "-w", str(self.sites[name]), "--json"],
                want_json=True,
            )  # fmt: skip
            return {"audit": res}

        return act

    def _ingest_external(self) -> None:
        ph = self.ws / "phantom" / "external"
        self.runner.run(
            "ingest-external",
            [*COORD, "ingest", "--dicom-dir", str(ph / "dicom"), "--labels",
             str(ph / "labels.csv"), "-w", str(self.coord), "--profile", self.plan.profile,
             "--json"],
        )  # fmt: skip

    def _trust(self) -> dict[str, Any]:
        pinned = {}
        for name, ws in self.sites.items():
            self.runner.run(f"trust-show-{name}", [*SITE, "keys", "show", "-w", str(ws)])
            fp = _fingerprint(self.ws / "logs" / f"trust-show-{name}.log")
            self.runner.run(
                "trust",
                [*COORD, "trust", "add", str(ws / "keys" / "site-key.pub"), "--site", name,
                 "--fingerprint", fp, "--replace", "-w", str(self.coord)],
            )  # fmt: skip
            pinned[name] = fp
        return {"fingerprints": pinned}

    def _bundles(self) -> dict[str, str]:
        """step name -> bundle path, for every export made."""
        return {
            step: out["bundle"]
            for step, out in self.state.data["outputs"].items()
            if "bundle" in out
        }

    def _import(self) -> dict[str, Any]:
        imported = {}
        for step, bundle in self._bundles().items():
            res = self.runner.run("import", [*COORD, "import", bundle, "-w", str(self.coord),
                                             "--json"], want_json=True)  # fmt: skip
            imported[step] = str(_abs(res["folder"]))
        return {"imports": imported}

    def _fed_config(self) -> Path:
        """fed.toml (written again, atomically and alike, by each step that reads it: the
        federation and the study's first part start together)."""
        return write_fed_toml(self.plan, self.coord, self.sites)

    def _federate(self) -> dict[str, Any]:
        fed = self._fed_config()
        res = self.runner.run("federate", [*COORD, "federate", "--config", str(fed), "--json"],
                              want_json=True)  # fmt: skip
        return {"config": str(fed), **res}

    def _study_config(self) -> Path:
        imports = self.state.output("import")["imports"]
        src = self.plan.sites[0].name
        return write_study_toml(
            self.plan,
            self.coord,
            src,
            Path(imports[f"export-weights-real-{src}"]) / "weights" / "classifier",
            Path(imports[f"export-weights-reconstructed-{src}"]) / "weights" / "classifier",
            [Path(imports[f"export-synthetic-{s.name}"]) / "cases" for s in self.plan.sites],
            self._fed_config(),  # its pretrained/ model, once the federation has run
        )

    def _study_cmd(self, cfg: Path) -> list[str]:
        # one cell per core at a time: the small classifier keeps one core busier than two
        return [*COORD, "study", "--config", str(cfg), "--out", str(self.coord / "study"),
                "--phantom", "--workers", "0", "--json"]  # fmt: skip

    def _study_ready(self) -> dict[str, Any]:
        cfg = self._study_config()
        ready = [c for c in CONDITIONS if c != FEDERATED]
        cmd = self._study_cmd(cfg) + [arg for c in ready for arg in ("--condition", c)]
        res = self.runner.run("study-ready", cmd, want_json=True)
        return {"conditions": ready, "cells": res["cells"]}

    def _study(self) -> dict[str, Any]:
        cfg = self._study_config()
        res = self.runner.run("study", self._study_cmd(cfg), want_json=True)
        return {"config": str(cfg), **res}

    # -- driving ----------------------------------------------------------------------------
    def _threads(self) -> int:
        """A step's share of the cores: all of them, divided among the lanes running now."""
        with self._lock:
            active = self._active_lanes
        return max(1, self._cores // max(1, active))

    def run(
        self,
        on_step: Callable[[Step, bool, float], None],
        on_start: Callable[[Step], None] | None = None,
        jobs: int = 0,
    ) -> None:
        """Run every unfinished step: up to ``jobs`` lanes at once (0: all of them), each in
        its order, then the coordinator's steps (those marked ``with_previous`` beside the one
        before them). ``on_start(step)`` before and ``on_step(step, skipped, seconds)`` after
        each (called one at a time). After a failure the other lanes finish the step they are
        in and stop; the first failure is raised."""
        lanes = self.lanes()
        self.lanes_at_once = len(lanes) if jobs <= 0 else min(jobs, len(lanes))
        report = threading.Lock()

        def one(step: Step) -> None:
            if self.state.done(step.name):
                with report:
                    on_step(step, True, 0.0)
                return
            if on_start:
                with report:
                    on_start(step)
            t0 = time.perf_counter()
            self.runner.take_cpu()
            outputs = step.action()
            seconds = time.perf_counter() - t0
            with report:
                self.state.finish(step.name, seconds, outputs, self.runner.take_cpu())
                on_step(step, False, seconds)

        self._side_by_side(lanes, jobs, one)
        stages: list[list[Step]] = []
        for step in self.coordinator_steps():
            if step.with_previous and stages:
                stages[-1].append(step)
            else:
                stages.append([step])
        for stage in stages:
            self._side_by_side([[step] for step in stage], jobs, one)

    def _side_by_side(
        self, lanes: list[list[Step]], jobs: int, one: Callable[[Step], None]
    ) -> None:
        """Each lane's steps in order, up to ``jobs`` lanes at once (0: all), each step's
        commands with its share of the cores; the first failure is raised once the other
        lanes have finished the step they were in."""
        width = len(lanes) if jobs <= 0 else min(jobs, len(lanes))
        failed: list[BaseException] = []
        # Counted before any lane starts, so the first command started already gets its share
        # (not every core because the other lanes' threads had not started yet); a finished
        # lane leaves the count only once no queued lane takes its place.
        unfinished, counted = len(lanes), width
        with self._lock:
            self._active_lanes += width

        def lane(steps: list[Step]) -> None:
            nonlocal unfinished, counted
            try:
                for step in steps:
                    if failed:
                        return
                    one(step)
            except BaseException as exc:  # handed to the caller below
                failed.append(exc)
            finally:
                with self._lock:
                    unfinished -= 1
                    if unfinished < counted:
                        counted -= 1
                        self._active_lanes -= 1

        try:
            if width <= 1:  # in this thread: no pool for one lane at a time
                for steps in lanes:
                    lane(steps)
                    if failed:
                        break
            else:
                with ThreadPoolExecutor(width, thread_name_prefix="demo-lane") as pool:
                    for fut in [pool.submit(lane, steps) for steps in lanes]:
                        fut.result()
        finally:
            with self._lock:  # lanes that never ran (after a failure) leave the count too
                self._active_lanes -= counted
        if failed:
            raise failed[0]


def _abs(path: str) -> str:
    """Commands print paths as given; they ran in this working folder."""
    return str(Path(path).resolve())


def _screen(res: dict[str, Any]) -> dict[str, Any]:
    """The privacy screen's headline figures from an export's JSON."""
    priv = res.get("privacy", {})
    phi, mem = priv.get("phi_scan", {}), priv.get("memorisation", {})
    return {
        "phi_files_scanned": phi.get("files_scanned"),
        "phi_findings": phi.get("findings"),
        "memorisation_screened": mem.get("screened"),
        "memorisation_flagged": mem.get("flagged"),
        "replacement_rounds": mem.get("replacement_rounds"),
    }


def _worth(report: dict[str, Any]) -> dict[str, Any]:
    """The fidelity report's "worth exporting?" headline figures."""
    d = report.get("diagnostics", {})
    if "error" in d or "label_fidelity" not in d:
        return {"error": d.get("error", "no diagnostics in the report")}
    lf, t = d["label_fidelity"], d["tstr"]
    return {
        "label_fidelity_auc": lf["auc_synthetic"],
        "heldout_real_auc": lf["auc_real_heldout"],
        "tstr_auc": t["auc_train_synthetic"],
        "train_real_auc": t["auc_train_real"],
        "n_heldout": lf["n_heldout"],
        "precision_recall": {
            s: [v["synthetic"]["precision"], v["synthetic"]["recall"]] if v["synthetic"] else None
            for s, v in d["precision_recall"].items()
        },
    }


def _fingerprint(log: Path) -> str:
    found = re.findall(r"\b[0-9a-f]{64}\b", log.read_text())
    if not found:
        raise StepFailed(f"no key fingerprint in the output of keys show ({log})", exit_code=1)
    return found[-1]
