"""Eager against torch.compile for one AutoLink training step at the learn-autolink recipe's size.

Times forward + backward + Adam on random [B, 3, 64, 64] images (the step's cost does not
depend on the pixels) with the recipe's model (K 10, widths 16, heatmap 32, Laplacian loss,
decoder coordinates, channels-last), first eagerly, then with ``compile_model`` (the detector,
the decoder and the loss compiled in place by inductor). Prints images/s for each, the
compile time, and the largest difference of the loss between the two on the same batch.

    python benchmarks/bench_compile.py --steps 30 --batch 16
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from kpray.models.autolink import AutoLink, AutoLinkConfig


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """Compile ``model``'s networks in place (``nn.Module.compile``: parameters and state-dict
    keys unchanged): every direct child, and the loss network AutoLink keeps outside them."""
    for child in model.children():
        child.compile()
    loss_net = model.__dict__.get("perceptual")
    if isinstance(loss_net, torch.nn.Module):
        loss_net.compile()
    return model


def recipe_config() -> AutoLinkConfig:
    return AutoLinkConfig(image_size=64, heatmap_size=32, num_keypoints=10, thickness=1e-3,
                          detector_width=16, decoder_width=16, decoder_coords=True,
                          loss="laplacian")


def time_steps(model: AutoLink, images: torch.Tensor, steps: int, warmup: int) -> tuple[float, float]:
    """-> (seconds of the first ``warmup`` steps, seconds per step after them)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            t_warm = time.perf_counter() - t0
            t1 = time.perf_counter()
        loss, _ = model(images, step=1000)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return t_warm, (time.perf_counter() - t1) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    eager = AutoLink(recipe_config()).to(memory_format=torch.channels_last)
    compiled = copy.deepcopy(eager)
    compile_model(compiled)
    with torch.no_grad():
        torch.manual_seed(1)
        a = eager(images, step=1000)[0]
        torch.manual_seed(1)
        b = compiled(images, step=1000)[0]
    print(f"loss eager {a.item():.6f} compiled {b.item():.6f} (difference {abs(a - b).item():.2e})")
    for name, m in (("eager", eager), ("compiled", compiled)):
        warm, per = time_steps(m, images, args.steps, args.warmup)
        print(f"{name:9s} first {args.warmup} steps {warm:6.1f} s, then {per:.3f} s/step = "
              f"{args.batch / per:5.1f} images/s")


if __name__ == "__main__":
    main()
