#!/bin/bash
# third device call: the main Beauty row with dropout (the b512 runs stopped on overfitting)
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/runs; mkdir -p $R
B="python3 benchmarks/beauty.py --prep-dir .beauty_prep --device cuda --threads 1 --quiet --patience 4"
D=/data
run() { local tag=$1; shift; (/usr/bin/time -f "$tag wall %e s, max rss %M KB" $B "$@" --out $R/$tag.json > $R/$tag.log 2>&1; echo "$tag rc=$?") & }
L="--batch 256 --lr 2e-3 --epochs 30 --max-valid 3000 --time-budget-min 4.6"
run beauty_ours_lazy_drop0.1_s0 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 0 $L --dropout 0.1
run beauty_ours_lazy_drop0.1_s1 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 1 $L --dropout 0.1
run beauty_ours_lazy_drop0.1_s2 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 2 $L --dropout 0.1
run beauty_ours_lazy_drop0.2_s0 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 0 $L --dropout 0.2
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
tail -n 3 $R/*.log
cd /tmp && tar czf $OUT/runs.tgz runs
