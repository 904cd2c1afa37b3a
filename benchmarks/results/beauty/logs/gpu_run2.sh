#!/bin/bash
# second device call: longer training for the main row (3 seeds), Scientific and MovieLens-100K rows
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/runs; mkdir -p $R
B="python3 benchmarks/beauty.py --prep-dir .beauty_prep --device cuda --threads 1 --quiet --patience 3"
D=/data
run() { local tag=$1; shift; (/usr/bin/time -f "$tag wall %e s, max rss %M KB" $B "$@" --out $R/$tag.json > $R/$tag.log 2>&1; echo "$tag rc=$?") & }
L="--batch 512 --lr 3e-3 --epochs 30 --eval-every 514 --max-valid 3000 --time-budget-min 5.4"
run beauty_ours_lazy_s0 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 0 $L
run beauty_ours_lazy_s1 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 1 $L
run beauty_ours_lazy_s2 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 2 $L
S="--batch 256 --lr 2e-3 --epochs 40 --max-valid 3000 --time-budget-min 5.4"
run scientific_ours_lazy_s0 --dataset $D/amazon_scientific_5core_text --sids ours --arch lazy --seeds 0 $S
run scientific_rkmeans_lazy_s0 --dataset $D/amazon_scientific_5core_text --sids rkmeans --arch lazy --seeds 0 $S
run ml100k_ours_lazy_s0 --dataset $D/movielens_100k_recbole --sids ours --arch lazy --seeds 0 $S
sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
tail -n 3 $R/*.log
cd /tmp && tar czf $OUT/runs.tgz runs
