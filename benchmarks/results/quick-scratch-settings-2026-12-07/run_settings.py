"""From-scratch classifier settings of the quick demo, compared over external splits.

The quick demo's ``none`` cell at fraction 1: the small CNN trained from random init on the
external training split (96 of 160 phantom cases), selected on validation AP, scored on the
40-case test split. Each split seed draws another stratified 60/15/25 split of the same
ingested cases, as each demo run's salt does; each setting runs two training seeds per split
(the demo's cell seeds, 17 and 1017). Usage:

    python run_settings.py DEMO_WORKSPACE '{"name": {TrainConfig overrides}}' 0,1,2 out.jsonl

One JSON line per run: setting, split, seed, best validation AUC/AP, test AUC, best step,
steps run, seconds (one torch thread).
"""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from coordinator.study.config import load_study_config
from coordinator.study.run import _train_cfg
from coordinator.study.splits import stratified_split
from shared.case_format import list_cases
from shared.classifier.data import load_case_tensors
from shared.classifier.training import load_model, predict, train_classifier

torch.set_num_threads(1)
ws, settings = Path(sys.argv[1]), json.loads(sys.argv[2])
splits, out = [int(s) for s in sys.argv[3].split(",")], Path(sys.argv[4])
# the demo's own study config: its from-scratch cell's training (tiny profile: 200 steps,
# batch 8, the pretraining rate 1e-3, validation every 16 steps, patience 6) and split
cfg = load_study_config(ws / "coordinator" / "study.toml")
data = load_case_tensors(list_cases(cfg.external))
rows = []
for name, over in settings.items():
    for sp in splits:
        split = stratified_split(data.y.astype(int).tolist(), cfg.split, sp)
        tr, va, te = (data.subset(list(getattr(split, k))) for k in ("train", "val", "test"))
        for seed in (17, 1017):
            tc = replace(_train_cfg(cfg, 3, seed, finetune=True, from_scratch=True), **over)
            t0 = time.perf_counter()
            res = train_classifier(tr, va, tc)
            model = load_model(tc, tuple(tr.x.shape[2:]), res.state)
            auc = roc_auc_score(te.y, predict(model, te.x))
            rows.append(
                dict(
                    setting=name,
                    split=sp,
                    seed=seed,
                    val_auc=res.best_val_auc,
                    val_ap=res.best_val_ap,
                    test_auc=auc,
                    best_step=res.best_step,
                    steps_run=res.steps_run,
                    secs=time.perf_counter() - t0,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
