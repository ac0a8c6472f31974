#!/usr/bin/env bash
# The GPU paths in one timed pass, for a machine with one NVIDIA GPU (docs/benchmarks.md, "On a GPU"):
#   1. EGL rendering on the GPU (benchmarks/bench_render.py) and gen_data's Ray actors on it;
#   2. training throughput through Ray Train with NCCL, both models at the papers' sizes
#      (benchmarks/bench_train.py --gpu; AutoLink 128 px, batch 64, against its 118 images/s on a V100);
#   3. a longer AutoLink learning run: the `make learn-autolink` recipe on the GPU, trained until
#      LEARN_DEADLINE_S after the start of this script, then evaluated and compared as the make
#      target does.
# Usage: bash benchmarks/bench_gpu.sh OUTDIR        (packages already installed; no network needed)
set -u
OUTDIR=${1:?usage: bench_gpu.sh OUTDIR}
mkdir -p "$OUTDIR"
T0=$(date +%s)
LEARN_DEADLINE_S=${LEARN_DEADLINE_S:-470}   # seconds after start at which training is stopped
RUN=${RUN:-runs/gpu-learn-autolink}
CPUS=$(nproc)
elapsed() { echo $(( $(date +%s) - T0 )); }
step() { echo; echo "=== [$(elapsed) s] $*"; }

step "device"
nvidia-smi -L
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'python', sys.version.split()[0])"

step "EGL rendering, one process (bench_render.py)"
for size in 64 128; do
  timeout 90 python3 benchmarks/bench_render.py --dataset walker --episodes 4 --frames 90 --size $size --quality fast
done

step "gen_data on the GPU: walker, 300 + 30 episodes of 32 frames, 64 px, $((CPUS - 2)) actors"
t=$(date +%s)
timeout 150 python3 jobs/gen_data.py --dataset walker --episodes 300 --test-episodes 30 --frames 32 \
  --size 64 --shard-size 25 --seed 0 --workers $((CPUS - 2)) --no-progress --out $RUN/data
echo "gen_data rc=$? wall $(( $(date +%s) - t )) s"

step "training throughput, Ray Train + NCCL, one GPU worker (bench_train.py --gpu)"
timeout 200 python3 benchmarks/bench_train.py --gpu --models autolink skeleton --workers 1 \
  --autolink-batch 64 --skeleton-batch 8 --steps 20 --loader-workers 4 --num-cpus $CPUS \
  --markdown "$OUTDIR/bench_train.md"

left=$(( LEARN_DEADLINE_S - $(elapsed) ))
step "learn-autolink recipe on the GPU for ${left} s"
timeout --signal=INT $left python3 jobs/train_autolink.py --data $RUN/data --workers 1 --gpu \
  --cpus-per-worker 8 --loader-workers 4 --num-cpus $CPUS --steps 40000 --checkpoint-every 500 \
  --preview-every 1000 --val-episodes 12 --seed 0 --keypoints 10 --thickness 1e-3 --lr 3e-4 \
  --batch-size 16 --loss laplacian --set image_size=64 --set heatmap_size=16 \
  --set detector_width=16 --set decoder_width=16 --set decoder_coords=true \
  --name train --storage $PWD/$RUN
echo "train rc=$?"
sleep 3
step "evaluate and compare the newest checkpoint"
timeout 90 python3 jobs/evaluate.py --checkpoint $RUN/train --data $RUN/data --out $RUN
timeout 90 python3 jobs/compare_autolink.py --checkpoint $RUN/train --data $RUN/data --out $RUN
step "done"
tar czf "$OUTDIR/learn.tgz" --exclude='data' --exclude='*.pt' --exclude='checkpoint_*' $RUN 2>/dev/null
ls -la "$OUTDIR"
