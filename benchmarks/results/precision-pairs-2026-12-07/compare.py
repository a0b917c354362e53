"""Tabulate the paired bf16 / float32 generator runs of ``run.sh`` (the work folder as the
argument, default /work/bf16cmp). Only measures comparable across runs: the fidelity report's
KID, Frechet distance and precision/recall live in each run's own encoder space."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SEQS = ("t2w", "hbv", "adc")


def row(work: Path, seed: int, precision: str) -> dict[str, object] | None:
    ws = work / f"ws-{precision}-{seed}"
    if not (ws / ".done").exists():
        return None
    train = json.loads((work / f"ws-{precision}-{seed}.train.json").read_text())
    fid = json.loads((ws / "reports/fidelity/fidelity.json").read_text())
    diag, seqs = fid["diagnostics"], fid["sequences"]
    retention = train["fidelity"]["sequences"]
    return {
        "seed": seed,
        "precision": precision,
        "train_s": round(sum(train["seconds"].values())),
        "ae_loss": train["autoencoder"]["final_loss"],
        "diff_loss": train["diffusion"]["final_loss"],
        **{f"retention_{s}": retention[s]["retention"] for s in SEQS},
        "label_fidelity_auc": diag["label_fidelity"]["auc_synthetic"],
        "tstr_auc": diag["tstr"]["auc_train_synthetic"],
        **{f"lesion_auc_{s}": seqs[s]["lesion_contrast"]["synthetic"]["auc"] for s in SEQS},
        **{f"msssim_{s}": seqs[s]["diversity"]["synthetic"]["mean"] for s in SEQS},
        **{f"mean_{s}": seqs[s]["intensity"]["synthetic"]["mean"] for s in SEQS},
    }


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/bf16cmp")
    rows = [r for s in (0, 1, 2) for p in ("fp32", "bf16") if (r := row(work, s, p))]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    for r in rows:
        cells = (f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values())
        print("| " + " | ".join(cells) + " |")
    print("\npaired differences bf16 - fp32 per seed:")
    for k in keys[2:]:
        pairs = {(r["seed"], r["precision"]): r[k] for r in rows}
        diffs = [
            round(pairs[s, "bf16"] - pairs[s, "fp32"], 3)
            for s in (0, 1, 2)
            if (s, "bf16") in pairs and (s, "fp32") in pairs
        ]
        fp = [v for (_, p), v in pairs.items() if p == "fp32"]
        print(f"{k}: diffs {diffs}; fp32 range {min(fp):.3f}..{max(fp):.3f}")
    (work / "compare.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
