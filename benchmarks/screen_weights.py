"""Bring a screen's trained weights back from a lent machine, and unpack them here.

    python benchmarks/screen_weights.py pack PROBES_DIR OUTDIR [--files 4]
    python benchmarks/screen_weights.py unpack OUTDIR DEST

``pack`` (run by ``gpu_skeleton_screen.sh``): each probe's newest ``checkpoint_*/state.pt``,
model only in half precision (~4.6 MB a probe at the recipe's widths), three probes to a file
``OUTDIR/weights-N.pt``, at most ``--files`` files: a lent machine returns at most 8 files and
about 64 MiB in all. ``unpack``: every ``weights-*.pt`` under OUTDIR back into
``DEST/<probe>/checkpoint_<step>/state.pt`` (float32), which ``jobs/evaluate.py``,
``benchmarks/point_identity.py`` and ``benchmarks/structure_on_points.py`` read.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

PER_FILE = 3


def pack(probes: str, out: str, files: int = 4) -> list[str]:
    """Write OUTDIR/weights-N.pt; -> the probe names packed (sorted; the first 3 x files)."""
    import torch

    ckpts = {}
    for path in sorted(glob.glob(os.path.join(probes, "*", "checkpoint_*", "state.pt"))):
        ckpts[os.path.basename(os.path.dirname(os.path.dirname(path)))] = path   # newest wins
    names = sorted(ckpts)[:PER_FILE * files]
    if len(ckpts) > len(names):
        print(f"weights packed for the first {len(names)} of {len(ckpts)} probes (--files {files})")
    for g in range(0, len(names), PER_FILE):
        bundle = {}
        for name in names[g:g + PER_FILE]:
            s = torch.load(ckpts[name], map_location="cpu", weights_only=False)
            step = os.path.basename(os.path.dirname(ckpts[name]))
            bundle[f"{name}/{step}"] = {
                **{k: v for k, v in s.items() if k != "optimizer"},
                "model": {k: v.half() if v.is_floating_point() else v for k, v in s["model"].items()}}
        torch.save(bundle, os.path.join(out, f"weights-{g // PER_FILE + 1}.pt"))
    return names


def unpack(out: str, dest: str) -> list[str]:
    """Write DEST/<probe>/checkpoint_<step>/state.pt; -> the checkpoint folders written."""
    import torch

    written = []
    for path in sorted(glob.glob(os.path.join(out, "weights-*.pt"))):
        for key, s in torch.load(path, map_location="cpu", weights_only=False).items():
            folder = os.path.join(dest, key)
            os.makedirs(folder, exist_ok=True)
            s = {**s, "model": {k: v.float() if v.is_floating_point() else v
                                for k, v in s["model"].items()}}
            torch.save(s, os.path.join(folder, "state.pt"))
            written.append(folder)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="probes' newest checkpoints -> OUTDIR/weights-N.pt")
    p.add_argument("probes")
    p.add_argument("out")
    p.add_argument("--files", type=int, default=4, help="most weights files (3 probes each)")
    u = sub.add_parser("unpack", help="OUTDIR/weights-*.pt -> DEST/<probe>/checkpoint_<step>/")
    u.add_argument("out")
    u.add_argument("dest")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        pack(args.probes, args.out, args.files)
        return 0
    written = unpack(args.out, args.dest)
    if not written:
        print(f"screen_weights.py: error: no weights-*.pt under {args.out}", file=sys.stderr)
        return 2
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
