"""Oracle check of the skeleton predictor psi and the structure losses, apart from pi.

psi is fed points derived from the ground truth instead of pi's: the true joints, then the
remaining points spread evenly along the true links, so every point lies on the object and the
true skeleton explains all of them. psi alone is trained on the structure losses (near, sparse,
uniform, length: ``kpray.models.skeleton.structure_terms``, the model's own code) and evaluated
with the paper's metrics. If psi and the losses work, S depends on the image (a 1-pole and a
3-pole cartpole get different links) and recovers the true skeletons; if it does not, no pi
can make the full model do so. ``benchmarks/psi_oracle.py`` runs it on a shard folder.

Point identities are fixed per body: point k is joint k of the body (in the body's own order)
for k < J, and the extra points are given to the links in turn (link order), each link's points
evenly spaced along it. Points of one body mean the same thing in every frame, as pi's should.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kpray.ops.coords import to_normalised, to_pixels


def oracle_points(joints_px: np.ndarray, adjacency: np.ndarray, num_points: int) -> np.ndarray:
    """joints_px [T, J, 2] pixels, adjacency [J, J] bool -> points [T, P, 2] pixels.

    Points 0..J-1 are the joints (the first P when J > P); point J + m is the m-th extra point,
    on link m mod L (links in ``np.triu`` order), at the (r + 1) / (n + 1) fraction of it from
    its first joint, where r counts the link's earlier extra points and n its total."""
    joints_px = np.asarray(joints_px, dtype=np.float32)
    t, j, _ = joints_px.shape
    if j >= num_points:
        return joints_px[:, :num_points].copy()
    links = list(zip(*np.nonzero(np.triu(np.asarray(adjacency, dtype=bool), 1))))
    extra = num_points - j
    if not links:           # no link: the extra points sit on the joints in turn
        return joints_px[:, [k % j for k in range(num_points)]].copy()
    owner = [m % len(links) for m in range(extra)]
    total = [owner.count(k) for k in range(len(links))]
    out = [joints_px]
    seen = [0] * len(links)
    for m in range(extra):
        a, b = links[owner[m]]
        f = (seen[owner[m]] + 1) / (total[owner[m]] + 1)
        seen[owner[m]] += 1
        out.append((joints_px[:, a] + f * (joints_px[:, b] - joints_px[:, a]))[:, None])
    return np.concatenate(out, axis=1)


def one_hot_maps(points: torch.Tensor, size: int) -> torch.Tensor:
    """points [B, P, 2] normalised -> location maps [B, P, size, size], one-hot at the nearest
    pixel (points outside the image are clamped to its border)."""
    b, p, _ = points.shape
    px = to_pixels(points, size).round().clamp(0, size - 1).long()
    flat = px[..., 1] * size + px[..., 0]                                    # [B, P]
    maps = points.new_zeros(b, p, size * size)
    maps.scatter_(-1, flat[..., None], 1.0)
    return maps.view(b, p, size, size)


class OracleData:
    """Frame pairs of episodes with their oracle points. episodes: dicts with ``frames`` [T, H,
    W, 3] uint8, ``joints`` [T, J, 2] pixels and ``adjacency`` [J, J]."""

    def __init__(self, episodes, num_points: int):
        self.episodes = list(episodes)
        self.points = [oracle_points(ep["joints"], ep["adjacency"], num_points) for ep in self.episodes]
        self.size = int(self.episodes[0]["frames"].shape[1])

    def batch(self, rng: np.random.Generator, n: int):
        """n random pairs of two frames of one episode -> (source [n, 3, H, W] float in [0, 1],
        source points [n, P, 2] normalised, target points [n, P, 2] normalised)."""
        src, ps, pt = [], [], []
        for _ in range(n):
            e = int(rng.integers(len(self.episodes)))
            i, j = rng.choice(len(self.episodes[e]["frames"]), size=2, replace=False)
            src.append(self.episodes[e]["frames"][i])
            ps.append(self.points[e][i])
            pt.append(self.points[e][j])
        img = torch.from_numpy(np.stack(src)).permute(0, 3, 1, 2).float() / 255
        norm = lambda x: to_normalised(torch.from_numpy(np.stack(x)), self.size)  # noqa: E731
        return img, norm(ps), norm(pt)


def train_psi(episodes, config, steps: int = 300, batch_size: int = 8, lr: float | None = None,
              seed: int = 0, log=None):
    """Train a fresh psi (``config``: a SkeletonConfig) alone on the structure losses of oracle
    points of ``episodes``. Returns (psi in eval mode, history: list of per-step dicts with the
    weighted total, each unweighted term, and the links per image and their spread over the
    batch; empty for psi_head="solver", which has no weights). log: called with each history
    entry (e.g. a progress bar)."""
    from kpray.losses import skeleton as L
    from kpray.models.skeleton import make_psi, psi_fit_loss, structure_terms

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = OracleData(episodes, config.num_points)
    psi = make_psi(config)
    if not any(True for _ in psi.parameters()):        # psi_head="solver": nothing to train
        return psi.eval(), []
    opt = torch.optim.Adam(psi.parameters(), lr=config.lr if lr is None else lr, betas=config.betas)
    weights = config.loss_weights()
    history = []
    psi.train()
    for step in range(steps):
        img, ps, pt = data.batch(rng, batch_size)
        ms, mt = one_hot_maps(ps, data.size), one_hot_maps(pt, data.size)
        links = psi(img, ms)
        terms = structure_terms(config, links, ms, mt, ps, pt)
        w = L.effective_weights(weights, step, config.ramp_steps)
        if config.psi_target == "fit":
            loss = psi_fit_loss(config, links, ms, mt, ps, pt)
        else:
            loss = sum(w[k] * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip_value:
            torch.nn.utils.clip_grad_value_(psi.parameters(), config.grad_clip_value)
        if config.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(psi.parameters(), config.grad_clip_norm)
        opt.step()
        hard = (links.detach() >= config.link_threshold).float()
        entry = {"step": step + 1, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                 "links": float(hard.sum(dim=(1, 2)).mean() / 2),
                 "links_std": float(hard.sum(dim=(1, 2)).std() / 2) if batch_size > 1 else 0.0}
        history.append(entry)
        if log is not None:
            log(entry)
    psi.eval()
    return psi, history


@torch.no_grad()
def predict_links(psi, episode: dict, num_points: int, frames: list[int] | None = None) -> np.ndarray:
    """Link probabilities [T', P, P] of psi on the oracle points of ``episode`` (all frames, or
    ``frames``)."""
    pts = oracle_points(episode["joints"], episode["adjacency"], num_points)
    idx = list(range(len(pts))) if frames is None else list(frames)
    size = int(episode["frames"].shape[1])
    img = torch.from_numpy(np.ascontiguousarray(episode["frames"][idx])).permute(0, 3, 1, 2).float() / 255
    maps = one_hot_maps(to_normalised(torch.from_numpy(pts[idx]), size), size)
    return psi(img, maps).numpy()


def evaluate_psi(psi, episodes, num_points: int, eps: float, seed: int = 0) -> dict:
    """The paper's metrics of psi's skeleton on the oracle points of each episode, links taken
    from one random frame per video (seeded). Returns {"videos": [...], "mean": {...}} where
    each video record has the body's true and predicted link and joint counts."""
    from kpray.evaluation import evaluate_video
    from kpray.metrics import select_skeleton

    rng = np.random.default_rng(seed)
    videos = []
    for ep in episodes:
        pts = oracle_points(ep["joints"], ep["adjacency"], num_points)
        f = int(rng.integers(len(pts)))
        links = predict_links(psi, ep, num_points, [f])[0]
        joints, adj = select_skeleton(pts, links)
        rec = evaluate_video(ep, joints, adj, eps)
        videos.append({"body": ep.get("meta", {}).get("body", ""),
                       "true_links": int(np.triu(ep["adjacency"], 1).sum()),
                       "true_joints": int(ep["joints"].shape[1]),
                       "links": int(np.triu(adj, 1).sum()), "joints": int(joints.shape[1]),
                       "struct_f1": rec["structure"]["f1"], "bcc": rec["structure"]["bcc"],
                       "joint_f1": rec["joints"]["f1"]})
    keys = ("struct_f1", "bcc", "joint_f1", "links", "joints")
    mean = {k: float(np.nanmean([v[k] for v in videos])) if videos else math.nan for k in keys}
    mean["videos"] = len(videos)
    return {"videos": videos, "mean": mean}
