#!/bin/bash
# one device call: every benchmark run in parallel (one process each), results tarred into $OUT
export PYTHONPATH=. PYTHONUNBUFFERED=1
R=/tmp/runs; mkdir -p $R
nvidia-smi --query-gpu=name,memory.used --format=csv
B="python3 benchmarks/beauty.py --prep-dir .beauty_prep --device cuda --threads 1 --quiet --max-valid 3000 --batch 256 --lr 2e-3 --patience 3 $EXTRA"
D=/data
run() { local tag=$1; shift; (/usr/bin/time -v $B "$@" --out $R/$tag.json > $R/$tag.log 2>&1; echo "$tag rc=$?") & }
run beauty_ours_lazy_s0 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 0
run beauty_ours_lazy_s1 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 1
run beauty_ours_lazy_s2 --dataset $D/amazon14_beauty_5core --sids ours --arch lazy --seeds 2
run beauty_ours_encdec_s0 --dataset $D/amazon14_beauty_5core --sids ours --arch encdec --seeds 0
run beauty_rkmeans_lazy_s0 --dataset $D/amazon14_beauty_5core --sids rkmeans --arch lazy --seeds 0
run beauty_rqvae_lazy_s0 --dataset $D/amazon14_beauty_5core --sids rqvae --arch lazy --seeds 0
[ -d .beauty_prep/amazon_scientific_5core_text-7878498a ] && run scientific_ours_lazy_s0 --dataset $D/amazon_scientific_5core_text --sids ours --arch lazy --seeds 0
[ -d .beauty_prep/movielens_100k_recbole-cd273690 ] && run ml100k_ours_lazy_s0 --dataset $D/movielens_100k_recbole --sids ours --arch lazy --seeds 0
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
tail -n 4 $R/*.log
cd /tmp && tar czf $OUT/runs.tgz runs
