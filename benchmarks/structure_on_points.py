"""Which skeleton does the structure loss prefer on a trained model's own points? Per test video.

    python benchmarks/structure_on_points.py CHECKPOINT DATA [--solver fit|greedy] \
        [--setting '{"sparse_p": 1.0, "weights": {"sparse_joints": 10}}' ...]

For each test video, pi's points on two frames (the video's seeded link frame and the frame half
the video later) are fixed, and the link matrix that minimises the weighted structure terms
(near, sparse links and joints, uniform, length) on them is found without psi:

- ``fit``: free link logits per video, Adam from S = 0.5 (``fit_links_per_sample``, what
  ``psi_target="fit"`` trains psi towards);
- ``greedy``: from no links, toggle the one link that lowers the loss most, until none does
  (``kpray.models.skeleton_solver``, what ``psi_head="solver"`` runs; it finds lower losses than
  the Adam fit);
- ``video``: the same greedy search on the setting's ``solver_frames`` frames spread over the
  video, one skeleton per video: exactly what ``psi_head="solver"`` predicts, so a solver
  setting can be tried on a trained pi without retraining (pi does not learn from it).
  ``--evidence mask`` gives its uniform term the true body mask as foreground (an oracle: does
  the gap test on the points' own evidence limit the skeleton?).

The minimisers are scored as the model's skeletons are (``kpray.skeleton_report``: joint and
structure metrics, Spearman of predicted against true joint counts, joints per body). Each
``--setting`` is a JSON object of ``SkeletonConfig`` fields (``weights`` merged onto the
checkpoint's) applied on top of the checkpoint's settings. A loss whose own optimum does not
follow the body cannot teach psi to.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kpray.data import iter_episodes  # noqa: E402
from kpray.losses.skeleton import LossWeights  # noqa: E402
from kpray.metrics import link_frame, spearman  # noqa: E402
from kpray.models import skeleton as S  # noqa: E402
from kpray.models import skeleton_solver as solver  # noqa: E402
from kpray.ops.coords import expected_location, to_pixels  # noqa: E402
from kpray.skeleton_report import _mean, _video_record  # noqa: E402
from kpray.train.data import to_device  # noqa: E402
from kpray.train.predict import load_model  # noqa: E402


def frame_pairs(model, adapter, episodes, per_episode: int = 1, with_images: bool = False):
    """(location maps [V, P, H, W] and points [V, P, 2] of the link frame and of the frame half
    a video later, per video; every frame's arg-max points [T, P, 2] pixels, per video).
    ``per_episode`` > 1: pair k of an episode starts k / per_episode of the video after its link
    frame (V = episodes x per_episode). ``with_images``: also the source images [V, 3, S, S]."""
    src, tgt, tracks = [], [], []
    for ep in episodes:
        frames = np.asarray(ep["frames"])
        t = len(frames)
        f = link_frame(0, int(ep.get("meta", {}).get("index", 0)), t)
        x = to_device({"x": torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)},
                      torch.device("cpu"), model.config.image_size)["x"]
        for k in range(per_episode):
            g = (f + k * t // per_episode) % t
            src.append(x[g])
            tgt.append(x[(g + t // 2) % t])
        tracks.append(adapter.points(model, frames))
    _, maps = model.locate(torch.cat([torch.stack(src), torch.stack(tgt)]))
    sm, tm = maps.chunk(2)
    geometry = (sm, tm, expected_location(sm), expected_location(tm))
    return (geometry, tracks, torch.stack(src)) if with_images else (geometry, tracks)


def checkpoint_videos(script: str, checkpoint: str, data: str, split: str = "test",
                      episodes: int | None = None, threads: int = 2):
    """(model, adapter, the first ``episodes`` videos of ``split``) for a benchmark ``script``
    on a trained skeleton checkpoint, with torch on ``threads`` threads; a one-line error when
    the split holds no video."""
    torch.set_num_threads(threads)
    model, adapter, _, _ = load_model(checkpoint)
    videos = list(iter_episodes(data, split=split))[:episodes]
    if not videos:
        raise SystemExit(f"{script}: error: no {split} episodes in {data}")
    return model, adapter, videos


def video_maps(model, adapter, episodes) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """(pi's noise-free location maps [T, P, H, W] of every frame, per video; the points
    [T, P, 2] pixels read from them as ``adapter.points`` reads them, per video): one pass of pi
    per video for both."""
    maps, tracks = [], []
    for ep in episodes:
        frames = np.asarray(ep["frames"])
        logits, m = model.locate(adapter.frames_tensor(model, frames))
        maps.append(m)
        tracks.append(to_pixels(model.read_points(logits, m, video=True).float(), frames.shape[1]).cpu().numpy())
    return maps, tracks


def read_tracks(model, maps: list[torch.Tensor], size: int) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """(the points [T, P, 2] normalised, and in pixels of a ``size`` image) that ``model``'s
    ``point_readout`` reads from each video's maps [T, P, H, W]: a setting may change the
    readout without running pi again (a map's arg-max is its logits')."""
    read = [model.read_points(m, m, video=True).float() for m in maps]
    return read, [to_pixels(r, size).cpu().numpy() for r in read]


def mask_evidence(c, episode) -> torch.Tensor:
    """The true body mask of every frame of a video, [T, H, W] in {0, 1}, widened by a max-pool
    of ``c.uniform_pool`` as the points' evidence is: an oracle of the foreground for eq. 7."""
    m = torch.from_numpy((np.asarray(episode["masks"]) > 0).astype(np.float32))[:, None]
    return F.max_pool2d(m, c.uniform_pool, stride=1, padding=c.uniform_pool // 2)[:, 0]


def tracked(points: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """One video's points [T, P, 2] -> (their ``track_order`` [T, P], the points in it)."""
    pts = torch.from_numpy(np.asarray(points))
    order = solver.track_order(pts)
    return order, solver.along_tracks(order, pts).numpy()


def relabel_tracks(c, maps: list[torch.Tensor], tracks: list[np.ndarray]):
    """(maps, tracks) per video with each video's points relabelled along their tracks
    (``tracked``) where ``c.solver_track_points`` says so, as ``SkeletonModel.predict`` does;
    unchanged otherwise."""
    if not c.solver_track_points:
        return maps, tracks
    orders, tracks = zip(*map(tracked, tracks))
    return [solver.along_tracks(o, m) for o, m in zip(orders, maps)], list(tracks)


def video_links(c, maps: list[torch.Tensor], evidence: list[torch.Tensor] | None = None,
                read: list[torch.Tensor] | None = None) -> torch.Tensor:
    """[V, P, P] 0/1 links: per video, ``greedy_links`` on ``c.solver_frames`` frames of its
    maps [T, P, H, W] spread over it (``psi_head="solver"``'s one skeleton per video); with
    ``evidence`` ([T, H, W] per video), the uniform term reads it instead of the points'; with
    ``read`` ([T, P, 2] normalised per video), on the points the model read (``solver_points``)."""
    out = []
    for v, m in enumerate(maps):
        k = solver.spread_frames(m.shape[0], c.solver_frames)
        km = m[k]
        ev = None if evidence is None else evidence[v][k]
        pts = solver.solver_points(c, km, None if read is None else read[v][k])
        out.append(solver.solve_links(c, km, pts, evidence=ev))
    return torch.stack(out)


def greedy_links(c, sm, tm, sp, tp) -> torch.Tensor:
    """[V, P, P] 0/1 links: per video, toggle the link that lowers the weighted structure loss
    of its (source, target) pair most until none does (``kpray.models.skeleton_solver``)."""
    return torch.stack([solver.solve_links(c, sm[k:k + 1], sp[k:k + 1], tm[k:k + 1], tp[k:k + 1])
                        for k in range(sp.shape[0])])


def apply_setting(config, text: str, **fields):
    """``config`` with the SkeletonConfig fields of the JSON object ``text`` (its ``weights``
    merged onto the config's loss weights) and ``fields`` applied."""
    spec = json.loads(text)
    weights = {**config.loss_weights().as_dict(), **spec.pop("weights", {})}
    return dataclasses.replace(config, weights=LossWeights(**weights), **fields, **spec)


def score_links(episodes, tracks, links) -> dict:
    """links [V, P, P] 0/1, one per test video, scored as the model's skeletons are (eps 0.15,
    Cartpoles' threshold): the mean joint and structure metrics, "spearman" of predicted against
    true joint counts, "per_body" the mean joints per body (text)."""
    recs = [_video_record(ep, pts, links[k].numpy(), 0.15)
            for k, (ep, pts) in enumerate(zip(episodes, tracks))]
    r = _mean(recs)
    r["spearman"] = spearman([x["joints"] for x in recs], [x["true_joints"] for x in recs])
    bodies: dict = {}
    for x in recs:
        bodies.setdefault(x["body"], []).append(x["joints"])
    r["per_body"] = ", ".join(f"{np.mean(v):.1f}" for _, v in sorted(bodies.items()))
    return r


def score_row(name: str, r: dict) -> str:
    """One markdown row: name, joint F1, dist, count diff, struct F1, Bcc, joints per body,
    Spearman."""
    return (f"| {name} | {r['joint_f1']:.3f} | {r['dist']:.3f} | {r['diff']:.2f} | "
            f"{r['struct_f1']:.3f} | {r['bcc']:.3f} | {r['per_body']} | {r['spearman']:.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="skeleton run folder or checkpoint_* folder")
    ap.add_argument("data", help="shard folder with test-*.tar")
    ap.add_argument("--solver", choices=("fit", "greedy", "video"), default="fit")
    ap.add_argument("--split", default="test", help="shard split to score (default: test)")
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes only")
    ap.add_argument("--fit-steps", type=int, default=200)
    ap.add_argument("--setting", action="append", default=None, metavar="JSON",
                    help="SkeletonConfig fields to apply (repeatable: one row each)")
    ap.add_argument("--evidence", choices=("points", "mask"), default="points",
                    help="--solver video: the uniform term's foreground: the points' own (the "
                         "model's) or the true body mask (an oracle)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.evidence != "points" and args.solver != "video":
        ap.error("--evidence mask needs --solver video")
    model, adapter, episodes = checkpoint_videos("structure_on_points.py", args.checkpoint,
                                                 args.data, args.split, args.episodes,
                                                 args.threads)
    if args.solver == "video":     # whole videos; no frame pairs needed
        maps, tracks = video_maps(model, adapter, episodes)
    else:
        (sm, tm, sp, tp), tracks = frame_pairs(model, adapter, episodes)
    size = np.asarray(episodes[0]["frames"]).shape[1]
    print(f"{len(episodes)} {args.split} videos, solver {args.solver}")
    print("| setting | joint F1 | dist | count diff | struct F1 | Bcc | joints per body | Spearman |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base = model.config
    for text in args.setting or ["{}"]:
        c = apply_setting(base, text)
        scored = tracks
        if args.solver == "fit":
            links = S.fit_links_per_sample(c, sm, tm, sp, tp, None, args.fit_steps, c.psi_fit_lr)
        elif args.solver == "video":
            model.config = c                  # the setting's readout reads the points
            read, scored = read_tracks(model, maps, size)
            v_maps, scored = relabel_tracks(c, maps, scored)
            if c.solver_track_points:         # the points again, in the tracks' order
                read, scored = read_tracks(model, v_maps, size)
            links = video_links(c, v_maps, None if args.evidence == "points"
                                else [mask_evidence(c, ep) for ep in episodes], read)
        else:
            links = greedy_links(c, sm, tm, sp, tp)
        print(score_row(f"`{text}`", score_links(episodes, scored, links)), flush=True)


if __name__ == "__main__":
    main()
