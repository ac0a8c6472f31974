"""Train the skeleton model in one process (no Ray) until a step count or a deadline, then compare
it on the test episodes as ``make learn-skeleton`` does.

    python benchmarks/skeleton_probe.py --out DIR [--minutes M] [--device cuda] -- TRAIN FLAGS

TRAIN FLAGS are those of ``jobs/train_skeleton.py`` (``--data``, ``--preset``, ``--points``,
``--steps``, ``--set ...``, ``--literal``); ``--steps`` is the most steps, ``--minutes`` stops
earlier. For machines without Ray (the GPU device here) and for several probes at once on one
GPU: the steps are the training loop's (Adam, gradient clipping by value then by norm, the same
loader), without DDP, validation or TensorBoard. At the end it writes DIR/checkpoint_<step>/
(readable by ``jobs/evaluate.py`` and ``jobs/compare_skeleton.py``), DIR/terms.jsonl (the loss
terms every --log-every steps), and DIR/comparison.{json,md} and DIR/skeletons.png
(``kpray.skeleton_report``: trained, untrained, best constant skeleton, oracle choice of points).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def split_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """argv -> (the script's own flags, the training flags after ``--``)."""
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def train_step(model, opt, cfg, batch, step: int) -> tuple:
    """One step as the training loop takes it, without DDP: the loss, Adam, gradient clipping by
    value then by norm, Adam's moments cleared at a restart. Returns the model's (loss, terms)."""
    import torch

    from kpray.train.loop import optimizer_step
    from kpray.train.models import get_adapter

    loss, terms = get_adapter("skeleton").call(model, batch, step)   # with the next frames
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad_value is not None:
        torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
    if cfg.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    optimizer_step(model, opt, step)
    return loss, terms


def main(argv=None) -> int:
    ours, train = split_flags(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder to write")
    ap.add_argument("--minutes", type=float, default=None, help="stop training after this long")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--init", default=None, metavar="CHECKPOINT",
                    help="start pi and B from this skeleton checkpoint (run or checkpoint_* folder)")
    ap.add_argument("--train-only", default=None, choices=["psi"],
                    help="train only psi (a fresh one), on the points of --init's pi, frozen: "
                         "psi's settings tried on points that no longer move")
    args = ap.parse_args(ours)

    import torch

    from kpray.data import iter_episodes
    from kpray.skeleton_report import compare_skeleton, to_markdown, write_comparison
    from kpray.train.cli import build_parser, config_from_args
    from kpray.train.config import ConfigError
    from kpray.train.data import make_loader, to_device
    from kpray.train.loop import rng_state, save_state, seed_everything
    from kpray.train.models import get_adapter

    try:
        cfg = config_from_args(build_parser("skeleton").parse_args(train), "skeleton")
    except ConfigError as e:
        print(f"skeleton_probe.py: error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    seed_everything(cfg.seed)
    dev = torch.device(args.device)
    adapter = get_adapter("skeleton")
    model = adapter.build(cfg)
    if args.init:
        from kpray.train.predict import load_checkpoint

        state = load_checkpoint(args.init)[0]["model"]
        own = {k: v for k, v in state.items() if not k.startswith("psi.")}
        model.load_state_dict({**model.state_dict(), **own})
    if args.train_only == "psi":
        if not args.init:
            ap.error("--train-only psi needs --init")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("psi."))
    model = model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
    loader = make_loader(cfg.data, "pair", cfg.batch_size, seed=cfg.seed, loader_workers=1,
                         pin_memory=dev.type == "cuda")
    os.makedirs(args.out, exist_ok=True)
    model.train()
    if args.train_only:           # frozen pi and B: their BatchNorm statistics stay as loaded
        model.pi.eval()
        model.background.eval()
    deadline = time.time() + 60 * args.minutes if args.minutes else float("inf")
    t0, step = time.time(), 0
    with open(os.path.join(args.out, "terms.jsonl"), "w") as log:
        while step < cfg.steps and time.time() < deadline:
            batch = to_device(next(loader), dev, model.config.image_size)
            loss, terms = train_step(model, opt, cfg, batch, step)
            step += 1
            if step % args.log_every == 0:
                row = {"step": step, "s": round(time.time() - t0, 1), "loss": float(loss.detach()),
                       **{k: float(v) for k, v in terms.items()}}
                log.write(json.dumps(row) + "\n")
                log.flush()
    print(f"{step} steps in {time.time() - t0:.0f} s ({step / max(time.time() - t0, 1e-9):.1f} steps/s)",
          flush=True)
    ckpt = os.path.join(args.out, f"checkpoint_{step:08d}")
    os.makedirs(ckpt, exist_ok=True)
    save_state(ckpt, model.cpu(), opt, step, [rng_state()], cfg.replace(steps=step))
    episodes = list(iter_episodes(cfg.data, split="test"))
    c = compare_skeleton(args.out, episodes, seed=cfg.seed)
    print(to_markdown(c), end="")
    write_comparison(c, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
