#!/usr/bin/env bash
# The `make learn-autolink` recipe on several (dataset, seed) pairs side by side on one GPU.
# Each pair is the make target unchanged (same data, steps, batch, schedule and evaluation) but
# for `--gpu --loader-workers 2`; the pairs run as separate processes sharing the GPU. It screens
# a recipe change on many seeds in the minutes a GPU is lent; the CPU figures stay the targets.
#
#   bash benchmarks/gpu_autolink_screen.sh start SECONDS          render and start every pair,
#                                                                 print progress for SECONDS
#   bash benchmarks/gpu_autolink_screen.sh finish SECONDS OUTDIR  wait up to SECONDS more, stop the
#                                                                 pairs still training, evaluate
#                                                                 their newest checkpoint, pack
#                                                                 OUTDIR/screen.tgz + screen.md
# Packages must be importable already (SETUP= skips make's pip install). On a lent machine with
# no network they travel as wheels unpacked onto PYTHONPATH (Ray's train extra needs pydantic);
# MUJOCO_GL=egl renders on the GPU. Three pairs share one H200 at about 370 images/s each, so
# 10000 steps take 7.5 min: one 15-minute loan holds three pairs (docs/benchmarks.md).
# A stopped command leaves the pairs running (setsid); `finish` waits for them, lets a pair that
# has trained finish its evaluation, and stops and evaluates only the pairs still training.
# RUNS: "DATASET:SEED ..." (default: six pairs); SCREEN_SET: extra training flags
# (e.g. "--set heatmap_size=32"); PREFIX: run folders are runs/PREFIX-DATASET-SEED.
set -u
PHASE=${1:?usage: gpu_autolink_screen.sh start SECONDS | finish SECONDS OUTDIR}
SECONDS_FOR=${2:?seconds}
RUNS=${RUNS:-"walker-parts-nobg:0 walker-parts-nobg:1 walker-parts-nobg:2 walker-parts-nobg:3 hopper-parts-nobg:2 cheetah-parts-nobg:0"}
SCREEN_SET=${SCREEN_SET:-}
SCREEN_DEVICE=${SCREEN_DEVICE-"--gpu --loader-workers 2"}  # empty: CPU (a dry run of this script)
PREFIX=${PREFIX:-gpu}
T0=$(date +%s)

run_dir() { echo "runs/$PREFIX-${1%%:*}-${1##*:}"; }
steps_done() {  # the newest checkpoint's step (folders checkpoint_<step>), 0 before the first
  local c; c=$(ls -d "$1"/train/checkpoint_* 2>/dev/null | sort | tail -1)
  [ -n "$c" ] && echo $(( 10#${c##*_} )) || echo 0
}
progress() {
  local line="[$(( $(date +%s) - T0 )) s]" r d
  for r in $RUNS; do
    d=$(run_dir "$r")
    if [ -f "$d/make.rc" ]; then line="$line ${r}=done(rc $(cat "$d/make.rc"))"
    else line="$line ${r}=$(steps_done "$d")"; fi
  done
  echo "$line"
}
all_done() { local r; for r in $RUNS; do [ -f "$(run_dir "$r")/make.rc" ] || return 1; done; }

case $PHASE in
start)
  for r in $RUNS; do
    d=$(run_dir "$r"); mkdir -p "$d"; rm -f "$d/make.rc" "$d/stopped"  # a rerun resumes the pair
    # setsid: the pair outlives this command (a lent machine's call is shorter than a run)
    setsid bash -c "make learn-autolink SETUP= DATASET=${r%%:*} SEED=${r##*:} OUT=$d \
      AUTOLINK_SET='$SCREEN_SET $SCREEN_DEVICE' >$d/make.log 2>&1; echo \$? >$d/make.rc" \
      </dev/null >/dev/null 2>&1 &
    echo $! >"$d/make.pid"
  done
  while [ $(( $(date +%s) - T0 )) -lt "$SECONDS_FOR" ] && ! all_done; do progress; sleep 30; done
  progress
  ;;
finish)
  OUTDIR=${3:?OUTDIR}; mkdir -p "$OUTDIR"
  while [ $(( $(date +%s) - T0 )) -lt "$SECONDS_FOR" ] && ! all_done; do progress; sleep 15; done
  progress
  for r in $RUNS; do
    d=$(run_dir "$r")
    [ -f "$d/make.rc" ] && continue
    if [ -f "$d/validation.json" ]; then  # trained; make is evaluating it: let it finish
      while [ ! -f "$d/make.rc" ]; do sleep 5; done; continue
    fi
    echo "stopping $r at step $(steps_done "$d")"
    kill -INT -- -"$(cat "$d/make.pid")" 2>/dev/null; sleep 5; kill -KILL -- -"$(cat "$d/make.pid")" 2>/dev/null
    echo "stopped at step $(steps_done "$d")" >"$d/stopped"
  done
  for r in $RUNS; do  # the newest checkpoint of a stopped pair, evaluated as learn-autolink would
    d=$(run_dir "$r")
    [ -f "$d/stopped" ] || continue
    make evaluate-autolink SETUP= OUT="$d" >"$d/eval.log" 2>&1 &
  done
  wait
  {
    echo "| pair | steps | regression (<= 0.09) | spread (>= 0.6) | joint F1 (>= 0.65) | untrained: regression / spread / F1 |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for r in $RUNS; do python3 - "$(run_dir "$r")" "$r" <<'EOF'
import json, os, sys
d, pair = sys.argv[1:]
path = os.path.join(d, "comparison.json")
if not os.path.exists(path):
    print(f"| {pair} | | no comparison.json (see {d}/make.log, eval.log) | | | |")
    sys.exit()
c = json.load(open(path))
t, u = c["rows"]["trained"], c["rows"]["untrained"]
f = lambda row: [f"{row[k]:.3f}" for k in ("regression_error", "spread_ratio", "joint_f1")]
print(f"| {pair} | {c['steps']} | " + " | ".join(f(t)) + " | " + " / ".join(f(u)) + " |")
EOF
    done
  } >"$OUTDIR/screen.md"
  cat "$OUTDIR/screen.md"
  tar czf "$OUTDIR/screen.tgz" --exclude='data' --exclude='*.pt' --exclude='checkpoint_*' \
    --exclude='preview_*' runs/"$PREFIX"-* 2>/dev/null
  ls -la "$OUTDIR"
  ;;
*) echo "unknown phase $PHASE (start | finish)" >&2; exit 2 ;;
esac
