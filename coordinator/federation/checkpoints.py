"""Per-round checkpoints, resume, and the federation's outputs.

``OUT/rounds/round-NNNN/`` holds each completed round's global model (safetensors + config with
the round's metrics; its test scores are added when the next exchange brings them);
``OUT/state.json`` names the last completed round and the config
fingerprint. A rerun with the same settings (round counts may grow) continues after the last
completed round. ``OUT/metrics.csv``, ``OUT/metrics.png``, ``OUT/final/`` and
``OUT/rejections.jsonl`` are rewritten as rounds complete; ``OUT/pretrained/`` holds the global
model at the end of phase 1 (federated pretraining), in the classifier weights format.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json, atomic_write_text, clean_partials
from shared.errors import InputError
from shared.weights import CONFIG_FILE, load_weights, save_weights

STATE = "state.json"
PRETRAINED = "pretrained"
METRIC_COLUMNS = (
    "round",
    "phase",
    "trainers",
    "accepted",
    "rejected",
    "missing",
    "missing-nodes",
    "train-loss",
    "test-auc",
    "test-ap",
    "test-loss",
    "evaluators",
    "seconds",
    "train-seconds",
    "train-compute-max",
    "train-startup-max",
    "eval-seconds",
    "eval-compute-max",
    "eval-startup-max",
    "overhead-seconds",
    "array-bytes-down",
    "array-bytes-up",
    "wire-bytes-down",
    "wire-bytes-up",
)


def round_dir(out: Path, r: int) -> Path:
    return out / "rounds" / f"round-{r:04d}"


class CheckpointStore:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        clean_partials(self.out / "rounds")
        clean_partials(self.out)  # final/ and pretrained/ are written the same way

    def state(self) -> dict[str, Any] | None:
        p = self.out / STATE
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {p}: {exc}") from None

    def resume(self, fingerprint: str, phases: list[str]) -> tuple[int, dict[str, Any]] | None:
        """(last completed round, its state dict) or None for a fresh start."""
        st = self.state()
        if not st or int(st.get("last-round", 0)) < 1:
            return None
        if st.get("fingerprint") != fingerprint:
            raise InputError(
                f"{self.out} holds a federation with other settings "
                f"(fingerprint {st.get('fingerprint')}, now {fingerprint})",
                hint="use a new output folder, or restore the settings it was started with",
            )
        last = int(st["last-round"])
        done = st.get("phases", [])
        for r, phase in enumerate(done[: len(phases)], 1):
            if phases[r - 1] != phase:
                raise InputError(
                    f"round {r} ran as {phase} but the config now makes it {phases[r - 1]}",
                    hint="only add rounds at the end of the adaptation phase, or use a new out",
                )
        state, _ = load_weights(round_dir(self.out, last))
        return last, state

    def rows(self) -> list[dict[str, Any]]:
        st = self.state() or {}
        return list(st.get("rows", []))

    def save_round(
        self,
        r: int,
        phase: str,
        state: dict[str, Any],
        row: dict[str, Any],
        model_config: dict[str, Any],
        fingerprint: str,
    ) -> None:
        save_weights(
            round_dir(self.out, r),
            state,
            model_config | {"round": r, "phase": phase, "metrics": _clean(row)},
        )
        st = self.state() or {}
        rows = [x for x in st.get("rows", []) if int(x["round"]) < r] + [_clean(row)]
        phases = [*list(st.get("phases", []))[: r - 1], phase]
        atomic_write_json(
            self.out / STATE,
            {"last-round": r, "fingerprint": fingerprint, "phases": phases, "rows": rows},
        )
        self.write_tables(rows)

    def score_round(self, r: int, scores: dict[str, Any]) -> None:
        """Add round ``r``'s model's test scores (they arrive with the next round's exchange)
        to its row, its checkpoint's config and, for the end of phase 1, ``pretrained/``."""
        st = self.state()
        if not st or not any(int(x["round"]) == r for x in st.get("rows", [])):
            return  # not checkpointed (a failed round): nothing to add them to
        scores = _clean(scores)
        rows = [x | scores if int(x["round"]) == r else x for x in st["rows"]]
        for folder in (round_dir(self.out, r), self.out / PRETRAINED):
            cfg_path = folder / CONFIG_FILE
            if not cfg_path.is_file():
                continue
            cfg = json.loads(cfg_path.read_text())
            if cfg.get("round", cfg.get("rounds")) == r:
                atomic_write_json(cfg_path, cfg | {"metrics": cfg.get("metrics", {}) | scores})
        atomic_write_json(self.out / STATE, st | {"rows": rows})
        self.write_tables(rows)

    def append_rejections(self, r: int, rejections: list[dict[str, Any]]) -> None:
        if not rejections:
            return
        with open(self.out / "rejections.jsonl", "a") as fh:
            for rej in rejections:
                fh.write(json.dumps({"round": r} | rej, sort_keys=True) + "\n")

    def write_tables(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())

    def write_pretrained(self, state: dict[str, Any], model_config: dict[str, Any], r: int) -> Path:
        """Phase 1's global model as a classifier weights folder (safetensors + config)."""
        rows = [x for x in self.rows() if int(x["round"]) <= r]
        path = self.out / PRETRAINED
        save_weights(
            path,
            state,
            model_config | {"phase": "pretrain", "rounds": r, "metrics": rows[-1] if rows else {}},
        )
        return path

    def ensure_pretrained(self, r: int, model_config: dict[str, Any]) -> Path:
        """Write ``pretrained/`` from round ``r``'s checkpoint if an earlier run did not."""
        path = self.out / PRETRAINED
        if not (path / "model.safetensors").is_file():
            state, _ = load_weights(round_dir(self.out, r))
            self.write_pretrained(state, model_config, r)
        return path

    def write_final(self, state: dict[str, Any], model_config: dict[str, Any]) -> dict[str, Path]:
        rows = self.rows()
        save_weights(
            self.out / "final",
            state,
            model_config | {"rounds": len(rows), "metrics": rows[-1] if rows else {}},
        )
        self.write_tables(rows)
        plot = self.out / "metrics.png"
        _plot(rows, plot)
        return {"final": self.out / "final", "metrics": self.out / "metrics.csv", "plot": plot}


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    r = [int(x["round"]) for x in rows]

    def series(key: str) -> list[float]:
        return [float("nan") if x.get(key) is None else float(x[key]) for x in rows]

    ax1.plot(r, series("train-loss"), "o-", label="train loss (nodes)")
    ax1.plot(r, series("test-loss"), "s-", label="test loss (target)")
    ax2.plot(r, series("test-auc"), "o-", label="test AUC")
    ax2.plot(r, series("test-ap"), "s-", label="test AP")
    n_pre = sum(1 for x in rows if x.get("phase") == "pretrain")
    for ax in (ax1, ax2):
        if 0 < n_pre < len(rows):
            ax.axvline(n_pre + 0.5, color="grey", ls="--", lw=1)
        ax.set_xlabel("round (pretrain | adapt)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.legend(fontsize=7)
    ax2.set_ylim(0, 1)
    ax1.set_title("loss")
    ax2.set_title("target held-out split")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    from shared.atomic import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
