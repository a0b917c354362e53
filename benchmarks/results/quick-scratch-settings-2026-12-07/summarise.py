"""Summarise runs.jsonl: per setting the mean validation and test AUC, the splits whose
two-seed mean test AUC reaches 0.75, and paired differences against ``base``."""

import collections
import json
import sys
from pathlib import Path

import numpy as np

path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("runs.jsonl")
rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
by = collections.defaultdict(list)
for r in rows:
    by[r["setting"]].append(r)
HEADER = ("setting", "runs", "val AUC", "test AUC", "lowest split", "splits >= 0.75", "s/run")
print("| " + " | ".join((*HEADER, "median best step")) + " |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, rs in by.items():
    per_split = collections.defaultdict(list)
    for r in rs:
        per_split[r["split"]].append(r["test_auc"])
    means = [float(np.mean(v)) for v in per_split.values()]
    print(
        f"| {name} | {len(rs)} | {np.mean([r['val_auc'] for r in rs]):.3f} "
        f"| {np.mean([r['test_auc'] for r in rs]):.3f} | {min(means):.3f} "
        f"| {sum(m >= 0.75 for m in means)} of {len(means)} "
        f"| {np.mean([r['secs'] for r in rs]):.1f} "
        f"| {np.median([r['best_step'] for r in rs]):.0f} |"
    )
print()
print("Paired against base (same split, same seed); t over split-level means:")
d = {(r["setting"], r["split"], r["seed"]): r for r in rows}
for name in by:
    if name == "base":
        continue
    for metric in ("val_auc", "test_auc"):
        keys = [(k[1], k[2]) for k in d if k[0] == name and ("base", k[1], k[2]) in d]
        per_split = collections.defaultdict(list)
        for k in keys:
            per_split[k[0]].append(d[(name, *k)][metric] - d[("base", *k)][metric])
        x = np.array([np.mean(v) for v in per_split.values()])
        t = x.mean() / (x.std(ddof=1) / np.sqrt(len(x)))
        print(
            f"- {name} {metric}: {x.mean():+.3f} over {len(x)} splits "
            f"(sd {x.std(ddof=1):.3f}, t {t:+.2f})"
        )
