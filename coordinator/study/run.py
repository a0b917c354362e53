"""Run the study grid (conditions × fractions × seeds), resumable cell by cell.

Source-free adaptation: each cell starts from its condition's pretrained weights (or random
init for ``none``) and sees only the external institution's data — its fraction of the training
split, the full validation split for model selection, and the fixed test split for scoring.
A ``federated`` condition's weights come from a Flower federation's pretraining phase, run
through ``coordinator.federation`` when they do not exist yet.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.study.config import Condition, StudyConfig
from coordinator.study.splits import Split, fraction_subsets, stratified_split
from shared.atomic import atomic_write_json
from shared.case_format import list_cases
from shared.classifier.data import CaseTensors, load_case_tensors
from shared.classifier.pretrain import pretrain, select_channels
from shared.classifier.training import TrainConfig, load_model, predict, train_classifier
from shared.errors import InputError, ToolkitError
from shared.weights import load_weights


@dataclass(frozen=True)
class Cell:
    condition: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.condition}/f{self.fraction:.4f}/seed{self.seed:02d}"


def cells_of(cfg: StudyConfig) -> list[Cell]:
    """All cells, smallest fraction first, seeds in order, conditions side by side."""
    return [
        Cell(c.name, f, s)
        for f in cfg.fractions
        for s in range(cfg.seeds_for(f))
        for c in cfg.conditions
    ]


def _load_external(cfg: StudyConfig, out: Path) -> tuple[CaseTensors, Split]:
    folders = list_cases(cfg.external)
    if not folders:
        raise InputError(
            f"no cases in the external case store {cfg.external}",
            hint="run `coordinator ingest` first",
        )
    data = load_case_tensors(folders)
    split = stratified_split(data.y.astype(int).tolist(), cfg.split, cfg.split_seed)
    record = {k: [data.ids[i] for i in getattr(split, k)] for k in ("train", "val", "test")}
    path = out / "split.json"
    if path.exists():
        if json.loads(path.read_text()) != record:
            raise InputError(
                f"the external cases changed since this study started ({path})",
                hint="start the study in a new output folder",
            )
    else:
        atomic_write_json(path, record)
    return data, split


def _train_cfg(
    cfg: StudyConfig, n_channels: int, seed: int, finetune: bool, from_scratch: bool
) -> TrainConfig:
    t = cfg.finetune if finetune else cfg.pretrain
    # Random init learns at the pretraining rate; pretrained weights are adapted gently.
    lr = cfg.pretrain.lr if from_scratch else t.lr
    return TrainConfig(
        network=cfg.network,
        in_channels=n_channels,
        steps=t.steps,
        batch_size=t.batch_size,
        lr=lr,
        eval_every=t.eval_every,
        patience=t.patience,
        seed=seed,
    )


def pretrained_state(
    cfg: StudyConfig, cond: Condition, out: Path, grid: tuple[int, ...], log: Callable[[str], None]
) -> dict[str, Any] | None:
    """The condition's starting weights (trained once and cached in ``out/pretrained``)."""
    if cond.kind == "none":
        return None
    if cond.kind == "weights":
        assert cond.weights is not None
        return _fitting_weights(cfg, cond, cond.weights, grid)
    if cond.kind == "federated":
        return _fitting_weights(cfg, cond, federated_weights(cond, log), grid)
    cache = out / "pretrained" / cond.name
    if not (cache / "model.safetensors").is_file():
        folders = [f for d in cond.cases for f in list_cases(d)]
        if not folders:
            raise InputError(f"condition {cond.name}: no cases in {[str(d) for d in cond.cases]}")
        log(f"pretraining {cond.name} on {len(folders)} cases")
        pretrain(
            folders,
            cond.sequences,
            _train_cfg(cfg, len(cond.sequences), 0, False, True),
            cache,
            {"condition": cond.name},
        )
    return load_weights(cache)[0]


def _fitting_weights(
    cfg: StudyConfig, cond: Condition, folder: Path, grid: tuple[int, ...]
) -> dict[str, Any]:
    """The state dict in ``folder``, if its network, channels and grid fit this study."""
    state, meta = load_weights(folder)
    want = {"network": cfg.network, "in_channels": len(cond.sequences), "grid_size": list(grid)}
    got = {k: meta.get(k) for k in want}
    if got != want:
        raise InputError(
            f"weights of condition {cond.name} ({folder}) do not fit "
            f"this study: they are {got}, the study needs {want}"
        )
    return state


def federated_weights(cond: Condition, log: Callable[[str], None]) -> Path:
    """The federation's phase-1 model (``OUT/pretrained``), running or resuming its
    pretraining phase first (adaptation skipped) if it has not been written yet."""
    from coordinator.federation.config import load_fed_toml
    from coordinator.federation.runner import ensure_pretrained

    assert cond.federation is not None
    fed = load_fed_toml(cond.federation)
    if not (fed.pretrained_dir / "model.safetensors").is_file():
        log(f"{cond.name}: running the federation's pretraining phase ({cond.federation})")
    return ensure_pretrained(fed, echo=log)


def run_cell(
    cfg: StudyConfig,
    cell: Cell,
    cond: Condition,
    data: CaseTensors,
    split: Split,
    subset: tuple[int, ...],
    init: dict[str, Any] | None,
) -> dict[str, Any]:
    """Fine-tune one cell and score the fixed test split."""
    from coordinator.study.stats import threshold_for_sensitivity

    t0 = time.time()
    d = select_channels(data, cond.sequences)
    train, val, test = d.subset(subset), d.subset(split.val), d.subset(split.test)
    tc = _train_cfg(
        cfg,
        len(cond.sequences),
        seed=1000 * cell.seed + 17,
        finetune=True,
        from_scratch=init is None,
    )
    res = train_classifier(train, val, tc, init_state=init)
    model = load_model(tc, tuple(d.x.shape[2:]), res.state)  # type: ignore[arg-type]
    val_scores = predict(model, val.x)
    threshold = threshold_for_sensitivity(val.y, val_scores, cfg.operating_sensitivity)
    scores = predict(model, test.x)
    return {
        "condition": cell.condition,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "n_train": len(train),
        "n_train_positive": train.n_positive,
        "best_step": res.best_step,
        "steps_run": res.steps_run,
        "val_ap": res.best_val_ap,
        "val_auc": res.best_val_auc,
        "threshold": threshold,
        "test_ids": test.ids,
        "test_labels": test.y.astype(int).tolist(),
        "test_scores": [float(s) for s in scores],
        "seconds": round(time.time() - t0, 2),
    }


def run_study(
    cfg: StudyConfig,
    out: Path,
    progress: Callable[[Cell, int, int], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
    max_cells: int | None = None,
    workers: int = 1,
    cells_start: Callable[[int], None] | None = None,
    only: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) every cell; returns all cell results in grid order. ``only`` names
    the conditions to pretrain and run now (the others' cells are left for a later run, e.g.
    while their federation is still running); their results are what is returned. ``max_cells``
    stops early after that many new cells (for tests of resumption). ``workers`` > 1 fine-tunes
    that many cells at a time, each in its own process with an equal share of the CPU threads
    (the small classifier keeps one core busier than it keeps two). ``cells_start(k)`` is
    called once the conditions are pretrained, before any cell runs, with the number of cells
    finished by an earlier run (``progress`` then reports those first)."""
    chosen = chosen_conditions(cfg, only)  # a misspelt condition is refused before any write
    out.mkdir(parents=True, exist_ok=True)
    data, split = _load_external(cfg, out)  # an empty store is refused before any write
    _keep_config(cfg, out)
    grid = tuple(data.x.shape[2:])
    states = {c.name: pretrained_state(cfg, c, out, grid, log) for c in chosen}
    cells = [c for c in cells_of(cfg) if c.condition in states]
    done: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for n, cell in enumerate(cells):
        path = _cell_path(out, cell)
        if path.is_file():
            done[n] = json.loads(path.read_text())
        elif max_cells is None or len(todo) < max_cells:
            todo.append(n)
    if cells_start:
        cells_start(len(done))
    if progress:
        for i, n in enumerate(sorted(done), start=1):
            progress(cells[n], i, len(cells))
    finished = len(done)

    def record(n: int, res: dict[str, Any]) -> None:
        nonlocal finished
        atomic_write_json(_cell_path(out, cells[n]), res)
        done[n] = res
        finished += 1
        if progress:
            progress(cells[n], finished, len(cells))

    # each seed's nested fractions of the training split, shared by every condition
    subsets = {
        seed: fraction_subsets(data.y.astype(int).tolist(), split.train, cfg.fractions, seed)
        for seed in {cells[n].seed for n in todo}
    }
    jobs = [(cells[n], subsets[cells[n].seed][cells[n].fraction]) for n in todo]
    workers = affordable_workers(workers, data.x.nbytes, log)
    if workers <= 1 or len(jobs) <= 1:
        for n, (cell, subset) in zip(todo, jobs, strict=True):
            record(n, _run_job(cfg, data, split, states, cell, subset))
    else:
        _run_parallel(cfg, data, split, states, dict(zip(todo, jobs, strict=True)), workers, record)
    return [done[n] for n in sorted(done)]


# A worker's own cost beside its copy of the case tensors: torch, the model, batches.
WORKER_OVERHEAD_BYTES = 768 * 2**20


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def affordable_workers(workers: int, data_bytes: int, log: Callable[[str], None]) -> int:
    """At most as many workers as fit in half the memory available now: each holds its own
    copy of the external case tensors (gigabytes at the ``paper`` profile's grid)."""
    avail = available_memory_bytes()
    if workers <= 1 or avail is None:
        return workers
    cap = max(1, int(avail // 2 // (data_bytes + WORKER_OVERHEAD_BYTES)))
    if cap < workers:
        log(
            f"running {cap} cell(s) at a time, not {workers}: each worker holds its own "
            f"{data_bytes / 2**30:.1f} GiB copy of the external cases and "
            f"{avail / 2**30:.1f} GiB is available"
        )
    return min(workers, cap)


# What the study's cells depend on beyond their own condition, fraction and seed; the grid's
# extent (fractions, seed counts), the config's path and the other conditions do not matter.
_GRID_ONLY = ("path", "conditions", "fractions", "seeds", "seeds_large", "small_fraction_max")


def _keep_config(cfg: StudyConfig, out: Path) -> None:
    """Write ``out/config.json``. Finished cells are reused by condition, fraction and seed, so
    a config that trains them another way (external cases, split, network, training settings,
    or the definition of a condition that has results) is refused while results are there:
    they would be reported beside cells trained differently. Adding conditions, fractions or
    seeds is fine."""
    path, record = out / "config.json", _config_record(cfg)
    started = any((out / "cells").rglob("*.json")) or any((out / "pretrained").rglob("*"))
    if started and path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = {}
        changed = sorted(
            k
            for k in set(record) | set(before)
            if k not in _GRID_ONLY and record.get(k) != before.get(k)
        )
        old = {c["name"]: c for c in before.get("conditions", []) if isinstance(c, dict)}
        changed += [
            f"conditions.{c['name']}"
            for c in record["conditions"]
            if c["name"] in old and old[c["name"]] != c
        ]
        if changed:
            raise InputError(
                f"the study in {out} has results made with another config "
                f"({', '.join(changed)} differ)",
                hint="start the study in a new output folder, or restore the earlier config",
            )
    atomic_write_json(path, record)


def chosen_conditions(cfg: StudyConfig, only: Sequence[str] | None) -> list[Condition]:
    """The conditions named in ``only`` (all of them for None); an unknown name is an input
    error that lists the config's conditions."""
    if only is None:
        return list(cfg.conditions)
    names = [c.name for c in cfg.conditions]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise InputError(
            f"no condition {', '.join(map(repr, unknown))} in the study config",
            hint=f"its conditions: {', '.join(names)}",
        )
    wanted = set(only)
    return [c for c in cfg.conditions if c.name in wanted]


def _cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.key}.json"


def _run_job(
    cfg: StudyConfig,
    data: CaseTensors,
    split: Split,
    states: dict[str, dict[str, Any] | None],
    cell: Cell,
    subset: tuple[int, ...],
) -> dict[str, Any]:
    cond = next(c for c in cfg.conditions if c.name == cell.condition)
    return run_cell(cfg, cell, cond, data, split, subset, states[cell.condition])


# What each worker process of a parallel study holds (set once by its initializer).
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, *context: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["context"] = context


def _worker_job(cell: Cell, subset: tuple[int, ...]) -> dict[str, Any]:
    return _run_job(*_WORKER["context"], cell, subset)


def usable_cores() -> int:
    """The cores this process may run on (affinity and container CPU sets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _run_parallel(
    cfg: StudyConfig,
    data: CaseTensors,
    split: Split,
    states: dict[str, dict[str, Any] | None],
    jobs: dict[int, tuple[Cell, tuple[int, ...]]],
    workers: int,
    record: Callable[[int, dict[str, Any]], None],
) -> None:
    """Cells in ``workers`` processes, one cell per worker in flight. Each result is written
    as soon as it arrives; after a failure nothing new starts, the cells already running are
    finished and kept, and then the first error is raised."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    workers = min(workers, len(jobs))
    threads = max(1, usable_cores() // workers)
    # spawn, not fork: the parent has run torch (pretraining), and a forked OpenMP pool hangs
    ctx = multiprocessing.get_context("spawn")
    queue = list(jobs.items())
    failure: BaseException | None = None
    try:
        with ProcessPoolExecutor(
            workers, ctx, initializer=_init_worker, initargs=(threads, cfg, data, split, states)
        ) as pool:
            running: dict[Future[dict[str, Any]], int] = {}

            def start_next() -> None:
                if queue and failure is None:
                    n, job = queue.pop(0)
                    running[pool.submit(_worker_job, *job)] = n

            for _ in range(workers):
                start_next()
            try:
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        n = running.pop(fut)
                        try:
                            res = fut.result()
                        except BaseException as exc:  # raised below, once the others are done
                            failure = failure or exc
                            continue
                        record(n, res)
                        start_next()
            except BaseException:  # interrupted: start nothing more, keep finished cells
                queue.clear()
                raise
    except BrokenProcessPool as exc:  # a submit to a pool that lost a worker meanwhile
        failure = exc
    if isinstance(failure, BrokenProcessPool):
        # Not the input's fault: the machine (memory, an operator's kill) stopped a worker.
        raise ToolkitError(
            "a study worker process died (out of memory or killed)",
            hint="rerun with fewer --workers; finished cells are kept",
        ) from failure
    if failure is not None:
        raise failure


def _config_record(cfg: StudyConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.__dict__, default=lambda o: getattr(o, "__dict__", str(o))))


def scores_matrix(results: list[dict[str, Any]]) -> dict[tuple[str, float, int], np.ndarray]:
    return {
        (r["condition"], r["fraction"], r["seed"]): np.asarray(r["test_scores"]) for r in results
    }
