#!/usr/bin/env bash
# The skeleton recipe (`make learn-skeleton`'s training flags) and variants of it, side by side on
# one GPU, each a `benchmarks/skeleton_probe.py` process (no Ray: the lent machine has none) on the
# same rendered data, ending in the comparison `make learn-skeleton` writes (solver psi, test
# split). A screen of changes to how pi learns, in the minutes a GPU is lent; the CPU runs of
# `make learn-skeleton` stay the figures of record.
#
#   bash benchmarks/gpu_skeleton_screen.sh DATA OUTDIR [MINUTES]
#
# VARIANTS: lines "NAME extra training flags" (default below: session 18's screen); RECIPE (the
# flags of `make skeleton-recipe`, read from the Makefile); STEPS (2000, the recipe's); SEED (1);
# DEVICE (cuda; cpu to try the script on a small STEPS); PROBES (the probes' own folders, default
# OUTDIR/probes: on a lent machine put them outside $OUT, e.g. /tmp/probes, or their logs take
# the few files that come back); WEIGHT_FILES (4: the weights of the first 3 x 4 probes, about
# 55 MB, since a lent machine returns about 64 MiB in all; session 26 lost a fifth file;
# benchmarks/screen_weights.py packs them, and unpacks them here).
# MINUTES caps each probe's training so that its comparison always runs.
# Writes OUTDIR/screen.md (the table, with the reliance each restart_step decision read),
# OUTDIR/screen.tgz (each probe's log, comparison, terms and skeletons.png) and
# OUTDIR/weights-N.pt (the trained weights, three probes to a file, WEIGHT_FILES files at most).
set -u
DATA=${1:?usage: gpu_skeleton_screen.sh DATA OUTDIR [MINUTES]}
OUTDIR=${2:?OUTDIR}
MINUTES=${3:-6}
STEPS=${STEPS:-2000}
SEED=${SEED:-1}
DEVICE=${DEVICE:-cuda}
PROBES=${PROBES:-$OUTDIR/probes}
WEIGHT_FILES=${WEIGHT_FILES:-4}
RECIPE=${RECIPE:-$(make -s --no-print-directory skeleton-recipe)}   # make learn-skeleton's flags
# a variant's --set weights={...} replaces the recipe's weights whole: W restates the rest
W='"sparse_joints":3.0,"uniform":10000.0'
VARIANTS=${VARIANTS:-"base
base-s11 --seed 11
edge1 --set recon_edge_weight=1.0
edge3 --set recon_edge_weight=3.0
rep001 --set weights={$W,\"contiguity\":-0.001}
rep01 --set weights={$W,\"contiguity\":-0.01}
lev3 --set pyramid_levels=3
b16 --set batch_size=16
piw32 --set pi_width=32"}
mkdir -p "$OUTDIR" "$PROBES"
T0=$(date +%s)
while read -r name flags; do
  [ -z "$name" ] && continue
  # later flags win: a variant's --seed / --set overrides the recipe's
  python3 benchmarks/skeleton_probe.py --out "$PROBES/$name" --device "$DEVICE" --threads 1 \
    --minutes "$MINUTES" --log-every 50 -- --data "$DATA" --preset cartpoles --steps "$STEPS" --seed "$SEED" \
    $RECIPE $flags >"$PROBES/$name.log" 2>&1 &
done <<<"$VARIANTS"
wait
echo "all probes done in $(( $(date +%s) - T0 )) s"
{
  echo "| probe | steps | train s | reliance at restart_step (step) | joint F1 | dist | count diff | Bcc (metrics.json; best constant) | struct F1 | Spearman | oracle choice joint F1 |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for d in "$PROBES"/*/; do
    python3 - "$d" <<'EOF'
import json, os, sys
sys.path.insert(0, "benchmarks")
from start_outcomes import decisions
d = sys.argv[1].rstrip("/")
name = os.path.basename(d)
try:   # the restart decisions the probe printed
    said = decisions(open(d + ".log").read())
except OSError:
    said = {}
rel = ", ".join(f"{r:.3f} ({s})" for s, r in said.items()) or "n/a"
try:
    terms = [json.loads(l) for l in open(os.path.join(d, "terms.jsonl"))]
    c = json.load(open(os.path.join(d, "comparison.json")))
except (OSError, ValueError) as e:
    print(f"| {name} | failed: {e} |"); sys.exit()
t, rows = c["rows"]["trained"], c["rows"]
o = rows.get("oracle choice of points", {})
secs = f"{terms[-1]['s']:.0f}" if terms else "n/a"
print(f"| {name} | {c['steps']} | {secs} | {rel} | {t['joint_f1']:.3f} | {t['dist']:.3f} | "
      f"{t['diff']:.2f} | {t['bcc_defined']:.3f} (const {rows['best constant skeleton']['bcc_defined']:.3f}) | {t['struct_f1']:.3f} | "
      f"{c.get('spearman', {}).get('trained', float('nan')):.2f} | {o.get('joint_f1', float('nan')):.3f} |")
EOF
  done
} | tee "$OUTDIR/screen.md"
# What comes back from a lent machine is at most 8 files of 16 MiB: the small files in one
# archive, and the trained weights (model only, half precision: ~4.6 MB a probe) three probes
# to a file, for solver sweeps on the CPU afterwards (`screen_weights.py unpack OUTDIR DEST`,
# then benchmarks/structure_on_points.py or point_identity.py on DEST/<probe>/checkpoint_*).
tar czf "$OUTDIR/screen.tgz" -C "$PROBES" --exclude='checkpoint_*' --transform 's,^\.,probes,' .
python3 benchmarks/screen_weights.py pack "$PROBES" "$OUTDIR" --files "$WEIGHT_FILES"
