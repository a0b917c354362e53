#!/bin/bash
# Paired bf16 vs float32 generator training on the full demo's aurora site (48 phantom studies,
# cpu profile, 500 autoencoder + 600 diffusion steps): 3 training seeds per precision, each
# run generates 96 cases and writes its fidelity report. Sequential, 2 threads each.
set -u
W=/work/bf16cmp; S=/work/main/.venv/bin/site-agent
cd $W
if [ ! -f base/.ingested ]; then
  $S phantom --out phantom --cases 48 --institution aurora --seed 1 --profile cpu > phantom.log 2>&1
  $S ingest --dicom-dir phantom/dicom --labels phantom/labels.csv --masks phantom/masks -w base --profile cpu --json > ingest.json 2> ingest.err && touch base/.ingested
fi
for seed in 0 1 2; do
  for p in bf16 fp32; do
    ws=ws-$p-$seed
    [ -f $ws/.done ] && continue
    rm -rf $ws; cp -r base $ws
    start=$(date +%s)
    SITE_AGENT_PRECISION=$p $S train -w $ws --profile cpu --seed $seed --autoencoder-steps 500 --diffusion-steps 600 --json > $ws.train.json 2> $ws.train.err || { echo "train $ws failed" >> errors.log; continue; }
    mid=$(date +%s)
    $S generate --n 96 -w $ws --seed $seed --json > $ws.generate.json 2> $ws.generate.err || { echo "generate $ws failed" >> errors.log; continue; }
    end=$(date +%s)
    echo "$ws train $((mid-start)) s generate+fidelity $((end-mid)) s" >> times.log
    touch $ws/.done
  done
done
echo finished >> times.log
