"""Losses of the skeleton model (Anciukevicius, Henderson, Bilen, ICPR 2022), as pure functions.

Notation (paper section III, supplementary VI):

- location maps ``pi``: ``[B, P, H, W]``, each a (relaxed) categorical distribution over pixels
- points ``gamma``: ``[B, P, 2]``, normalised coordinates (``kpray.ops.coords``), the expectation
  of the location maps (supplementary VI-c)
- links ``S``: ``[B, P, P]``, symmetric link probabilities predicted from the *source* image, zero
  diagonal; every sum "over ij" below runs over the pairs i < j, i.e. each link once

Every loss returns a scalar, the mean over the batch of the per-sample quantity of the paper.
What the paper leaves open is a keyword argument here and a field of ``SkeletonConfig``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from kpray.metrics import base_dataset
from kpray.ops.coords import pixel_grid
from kpray.ops.edge_map import segment_distance2, upper_pairs


# ---------------------------------------------------------------- reconstruction, eq. (1)

RECON_REDUCTIONS = ("sum", "mean")


def pyramid_mse(pred: torch.Tensor, target: torch.Tensor, levels: int = 5,
                reduction: str = "sum", weight: torch.Tensor | None = None) -> torch.Tensor:
    """pred, target: [B, C, H, W] -> the squared error summed over a `levels`-level pyramid (2x
    average pooling between levels, 64 -> 32 -> 16 -> 8 -> 4 by default), mean over the batch.

    reduction "sum": each level's squared norm ||x - y||^2 over pixels and channels, as eq. 1
    writes it (the reading under which the paper's weights, recon 10 against near 10 and length
    100-1000, give gradients of one order on pi: benchmarks/loss_balance.py); "mean": each level's
    per-pixel mean squared error (3 * 64 * 64 = 12288 times smaller at the finest level).
    weight: optional per-pixel weights [B, 1, H, W] (e.g. ``edge_weights``), pooled with the
    images to each level and multiplied into the squared error (None: eq. 1, every pixel alike)."""
    if reduction not in RECON_REDUCTIONS:
        raise ValueError(f"reduction must be one of {RECON_REDUCTIONS}, got {reduction!r}")
    total = pred.new_zeros(())
    for level in range(levels):
        if level:
            pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
            weight = None if weight is None else F.avg_pool2d(weight, 2)
        err = (pred - target).pow(2)
        if weight is not None:
            err = err * weight
        total = total + (err.mean() if reduction == "mean" else err.sum(dim=(1, 2, 3)).mean())
    return total


def edge_weights(image: torch.Tensor, strength: float) -> torch.Tensor:
    """image [B, C, H, W] -> per-pixel weights [B, 1, H, W] with mean 1 per image:
    (1 + strength * g / mean(g)) / (1 + strength), g the image's local contrast (|dx| + |dy| of
    forward differences, summed over channels). Thin parts (a pole 2 px wide is all edge) then
    weigh as much as a box of many flat pixels (the cart), where eq. 1 weighs by area.
    strength 0: every pixel 1."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().sum(1, keepdim=True)
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().sum(1, keepdim=True)
    g = F.pad(dx, (0, 1, 0, 0)) + F.pad(dy, (0, 0, 0, 1))
    g = g / g.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (1 + strength * g) / (1 + strength)


# ---------------------------------------------------------------- contiguity, eq. (2) and (6)

def neighbour_matrix(location_maps: torch.Tensor, pool: int = 7) -> torch.Tensor:
    """location_maps: [B, P, H, W] -> N [B, P, P], N_pq = max_w maxpool(pi_p)(w) * maxpool(pi_q)(w)
    (supplementary eq. 6): large iff the dilated location maps of p and q overlap somewhere."""
    b, p = location_maps.shape[:2]
    dilated = F.max_pool2d(location_maps, pool, stride=1, padding=pool // 2).reshape(b, p, -1)
    return (dilated.unsqueeze(2) * dilated.unsqueeze(1)).amax(dim=-1)


def contiguity_loss(source_maps: torch.Tensor, target_maps: torch.Tensor, pool: int = 7) -> torch.Tensor:
    """-sum_p max_{q != p} N^source_pq N^target_pq (eq. 2): each point keeps some neighbour."""
    n = neighbour_matrix(source_maps, pool) * neighbour_matrix(target_maps, pool)   # [B, P, P]
    eye = torch.eye(n.shape[-1], dtype=torch.bool, device=n.device)
    n = n.masked_fill(eye, 0.0)                                  # q != p; all entries are >= 0
    return -n.amax(dim=-1).sum(dim=-1).mean()


# ---------------------------------------------------------------- near, eq. (3)

NEAR_MAX_MODES = ("straight_through", "softmax")


def _soft_max(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """x . softmax(x / T) over the last dim, forward and backward: tied maxima share the
    gradient instead of the first of them taking all of it."""
    return (x * torch.softmax(x / temperature, dim=-1)).sum(dim=-1)


def _straight_through_max(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """max over the last dim in the forward pass; gradient of x . softmax(x / T) (eq. 3's
    "argmax . softmax" relaxation: the hard arg-max selects, the softmax spreads gradient)."""
    soft = torch.softmax(x / temperature, dim=-1)
    hard = F.one_hot(x.argmax(dim=-1), x.shape[-1]).to(x.dtype)
    return (x * (hard - soft.detach() + soft)).sum(dim=-1)


def near_loss(links: torch.Tensor, source_points: torch.Tensor, target_points: torch.Tensor,
              scale: float = 0.1, temperature: float = 0.1,
              exclude_endpoints: bool = False, endpoint_credit: float = 1.0,
              max_mode: str = "straight_through", margin: float = 0.0,
              density_sigma: float = 0.0) -> torch.Tensor:
    """-sum_f sum_p max_ij S_ij exp(-d^f[p||i,j] / scale) (eq. 3).

    links: [B, P, P]; *_points: [B, P, 2] normalised. d is the distance from point p to the
    segment between points i and j in the same frame f; `scale` is its unit (normalised
    coordinates; the paper writes exp(-d) with the unit unstated); `temperature` that of the
    softmax in the relaxation of the max. exclude_endpoints: link (i, j) does not count for
    points i and j themselves, so links are rewarded only for explaining "the remaining
    foreground points" (section I); otherwise a point is also explained by becoming a joint
    (d = 0). Which is better depends on P and the weights: benchmarks/structure_optimum.py.
    endpoint_credit in [0, 1]: what a link's own endpoints get from it, between excluded (0,
    the same as exclude_endpoints) and the literal d = 0 (1). Below 1, a perfect matching of the
    points (every point an endpoint, the literal loss's image-independent optimum) no longer
    scores as well as a skeleton whose links pass through the points.
    max_mode: "straight_through" (the paper's relaxation: the arg-max link takes the gradient)
    or "softmax" (x . softmax(x / temperature) in both passes: links that explain a point
    equally well share its gradient, so a redundant link gets less than a needed one).
    margin >= 0 (normalised; 0 = eq. 3): d is measured from the segment thickened to this radius,
    max(d - margin, 0), so a point within margin of a link counts as fully explained (a link
    stands for a limb of some width, not a line).
    density_sigma > 0 (normalised; 0 = eq. 3): point p's term is weighed by
    ``point_density_weights``, 1 / sum_q exp(-|x_p - x_q|^2 / (2 sigma^2)) in its frame, so a pile
    of points on one place counts about once and a lone point fully: a link is then worth the
    places it explains, not the number of points that happen to sit there."""
    if max_mode not in NEAR_MAX_MODES:
        raise ValueError(f"max_mode must be one of {NEAR_MAX_MODES}, got {max_mode!r}")
    relaxed_max = _straight_through_max if max_mode == "straight_through" else _soft_max
    if exclude_endpoints:
        endpoint_credit = 0.0
    i, j = upper_pairs(links.shape[-1], links.device)
    s = links[:, i, j]                                                      # [B, E]
    total = links.new_zeros(())
    for pts in (source_points, target_points):
        near = s[:, None] * near_values(pts, scale, endpoint_credit, margin)   # [B, P, E]
        explained = relaxed_max(near, temperature)                          # [B, P]
        if density_sigma > 0:
            explained = explained * point_density_weights(pts, density_sigma)
        total = total - explained.sum(dim=-1).mean()
    return total


def near_values(points: torch.Tensor, scale: float = 0.1, endpoint_credit: float = 1.0,
                margin: float = 0.0) -> torch.Tensor:
    """What link (i, j), when present, is worth to point p in eq. 3: exp(-d[p||i,j] / scale),
    d measured from the segment thickened by ``margin`` and a link's own endpoints given
    ``endpoint_credit`` times their value (see ``near_loss``). points [B, P, 2] normalised ->
    [B, P, E], pairs in ``upper_pairs`` order. ``near_loss`` is minus the sum over points of the
    max over the links present; the solver reuses these values for every candidate skeleton."""
    p = points.shape[1]
    i, j = upper_pairs(p, points.device)
    d = (segment_distance2(points[:, :, None], points[:, None, i], points[:, None, j]) + 1e-12).sqrt()
    if margin > 0:
        d = (d - margin).clamp_min(0)
    near = torch.exp(-d / scale)
    if endpoint_credit != 1.0:
        idx = torch.arange(p, device=points.device)[:, None]
        own = (idx == i[None]) | (idx == j[None])                           # [P, E]
        near = torch.where(own, near * endpoint_credit, near)
    return near


def point_density_weights(points: torch.Tensor, sigma: float) -> torch.Tensor:
    """points [B, P, 2] (normalised) -> weights [B, P] = 1 / sum_q exp(-|x_p - x_q|^2 / (2
    sigma^2)), q over the frame's P points, p itself included (so every weight is in (0, 1]; k
    coincident points get 1/k each, a point sigma * 3 from all others about 1). Constants: no
    gradient flows through them."""
    x = points.detach()
    d2 = (x[:, :, None] - x[:, None]).pow(2).sum(-1)                       # [B, P, P]
    return 1.0 / torch.exp(-d2 / (2 * sigma ** 2)).sum(-1)


# ---------------------------------------------------------------- sparse, eq. (4)

def sparse_losses(links: torch.Tensor, p: float = 0.5, links_normalise: str = "mean",
                  joints_normalise: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """(links term, joints term) of eq. 4 for links [B, P, P] with exponent 0 < p <= 1:
    (sum_ij S_ij^p)^(1/p) counts links, (sum_i max_j S_ij^p)^(1/p) counts joints.

    Each term's *_normalise is "sum" (the literal eq. 4) or "mean" (over the P(P-1)/2 pairs or
    the P points, so the term lies in [0, 1] whatever P). Defaults: links "mean", joints "sum".
    With the paper's weights (sparse links 500-7000, joints 0.0002-0.1, near 10) the summed link
    term outweighs everything (measured: P = 32 drove every link to ~1e-8 within 100 steps),
    while a mean joint term (at most 0.1) never pays for dropping a single joint."""
    link_term, joint_term = sparse_terms(links, p, links_normalise, joints_normalise)
    return link_term.mean(), joint_term.mean()


def sparse_terms(links: torch.Tensor, p: float = 0.5, links_normalise: str = "mean",
                 joints_normalise: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """``sparse_losses`` per sample: (links term [B], joints term [B]) for links [B, P, P]."""
    for what, mode in (("links_normalise", links_normalise), ("joints_normalise", joints_normalise)):
        if mode not in ("mean", "sum"):
            raise ValueError(f"{what} must be 'mean' or 'sum', got {mode!r}")
    i, j = upper_pairs(links.shape[-1], links.device)
    s = links[:, i, j].clamp_min(1e-12)                 # S^p has an infinite slope at 0 for p < 1
    reduce_links = torch.mean if links_normalise == "mean" else torch.sum
    reduce_joints = torch.mean if joints_normalise == "mean" else torch.sum
    link_term = reduce_links(s.pow(p), dim=-1).pow(1 / p)
    joint_term = reduce_joints(links.amax(dim=-1).clamp_min(1e-12).pow(p), dim=-1).pow(1 / p)
    return link_term, joint_term


# ---------------------------------------------------------------- uniform, eq. (5) and (7)

EVIDENCE_MODES = ("peak", "raw")


def foreground_evidence(location_maps: torch.Tensor, pool: int = 5, mode: str = "peak") -> torch.Tensor:
    """pi-bar = max_p maxpool(pi_p): [B, P, H, W] -> [B, H, W], is any point near each pixel.

    mode "raw": the location maps as they are (literal supp. VI-b). They are probabilities, so a
    soft map peaks well below 1 (0.47-0.69 measured at P = 16) and no link ever reaches the
    coverage alpha = 0.8: eq. 5 then penalises every link alike. "peak": each map divided by its
    own maximum first, so a point's most likely pixel counts 1 whatever the map's sharpness."""
    if mode not in EVIDENCE_MODES:
        raise ValueError(f"evidence mode must be one of {EVIDENCE_MODES}, got {mode!r}")
    if mode == "peak":
        location_maps = location_maps / location_maps.amax(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
    return F.max_pool2d(location_maps, pool, stride=1, padding=pool // 2).amax(dim=1)


@torch.no_grad()
def link_coverage(points: torch.Tensor, evidence: torch.Tensor, tau: float = 1.0,
                  chunk: int = 64) -> torch.Tensor:
    """delta_ij (supplementary eq. 7): the M_ij-weighted mean of the evidence map along the
    segment between points i and j, M_ij(w) = exp(-d(w, segment_ij) / tau), tau in pixels.

    points: [B, P, 2] normalised; evidence: [B, H, W] -> delta [B, E]. No gradient: eq. 5 only
    uses delta inside an indicator. Runs over the edges in chunks ([B, chunk, H*W] at a time)."""
    b, p, _ = points.shape
    h, w = evidence.shape[-2:]
    grid = pixel_grid(h, w, points.device, points.dtype)
    px, py = grid[:, 0], grid[:, 1]                                            # [HW]
    scale = -1.0 / (tau * 2.0 / max(h, w))                  # tau pixels in normalised units
    ev = evidence.reshape(b, 1, h * w)
    i, j = upper_pairs(p, points.device)
    out = []
    for s in range(0, i.numel(), chunk):
        a = points[:, i[s:s + chunk]]                                          # [B, e, 2]
        ba = points[:, j[s:s + chunk]] - a
        inv_len2 = 1.0 / (ba * ba).sum(-1, keepdim=True).clamp_min(1e-12)
        ax, ay, bx, by = a[..., 0:1], a[..., 1:2], ba[..., 0:1], ba[..., 1:2]
        dx, dy = px - ax, py - ay                                              # [B, e, HW]
        t = (dx * bx).addcmul_(dy, by).mul_(inv_len2).clamp_(0, 1)
        dx.addcmul_(t, bx, value=-1)
        dy.addcmul_(t, by, value=-1)
        m = dx.square_().addcmul_(dy, dy).sqrt_().mul_(scale).exp_()         # M_ij [B, e, HW]
        out.append((m * ev).sum(-1) / m.sum(-1))
    return torch.cat(out, dim=1)


def uniform_loss(links: torch.Tensor, coverages: list[torch.Tensor], alpha: float = 0.8) -> torch.Tensor:
    """sum_f (sum_ij S_ij [delta^f_ij < alpha]) / (sum_ij [delta^f_ij < alpha]) (eq. 5).

    links: [B, P, P]; coverages: delta^f [B, E] per frame f. Penalises the mean probability of
    the links that have gaps (0 when no pair has a gap)."""
    i, j = upper_pairs(links.shape[-1], links.device)
    s = links[:, i, j]
    return sum((s * gap_weights(delta, alpha)).sum(-1).mean() for delta in coverages)


def gap_weights(delta: torch.Tensor, alpha: float = 0.8) -> torch.Tensor:
    """delta [B, E] -> what each link costs in eq. 5 when present: [delta_ij < alpha] / (the
    number of pairs with a gap, at least 1)."""
    gap = (delta < alpha).to(delta.dtype)
    return gap / gap.sum(-1, keepdim=True).clamp_min(1)


# ---------------------------------------------------------------- length, supplementary eq. (8)

def length_loss(links: torch.Tensor, source_points: torch.Tensor, target_points: torch.Tensor,
                l_min: float = 0.1, l_max: float = 1.0) -> torch.Tensor:
    """sum_f sum_ij S_ij (max(0, l_min - l^f_ij) + max(0, l^f_ij - l_max)), lengths in
    normalised units (2 = the image width)."""
    i, j = upper_pairs(links.shape[-1], links.device)
    s = links[:, i, j]
    return sum((s * length_penalties(pts, l_min, l_max)).sum(-1).mean()
               for pts in (source_points, target_points))


def length_penalties(points: torch.Tensor, l_min: float = 0.1, l_max: float = 1.0) -> torch.Tensor:
    """points [B, P, 2] normalised -> [B, E]: what each link costs in eq. 8 when present,
    max(0, l_min - l_ij) + max(0, l_ij - l_max)."""
    length = pair_lengths(points)
    return F.relu(l_min - length) + F.relu(length - l_max)


def pair_lengths(points: torch.Tensor) -> torch.Tensor:
    """points [B, P, 2] -> [B, E]: the distance between the two points of every pair, in
    ``upper_pairs`` order."""
    i, j = upper_pairs(points.shape[1], points.device)
    return ((points[:, i] - points[:, j]).pow(2).sum(-1) + 1e-12).sqrt()


def rigidity_loss(links: torch.Tensor, source_points: torch.Tensor,
                  target_points: torch.Tensor) -> torch.Tensor:
    """sum_ij S_ij |l^source_ij - l^target_ij|: a link is rigid, so its two points keep their
    distance from one frame of a pair to the other (not in the paper; ``rigidity_weight``).
    links [B, P, P], points [B, P, 2] normalised; summed over pairs i < j, mean over the batch."""
    i, j = upper_pairs(links.shape[-1], links.device)
    change = (pair_lengths(source_points) - pair_lengths(target_points)).abs()      # [B, E]
    return (links[:, i, j] * change).sum(-1).mean()


def track_loss(maps: torch.Tensor, next_maps: torch.Tensor, radius: float = 4.8) -> torch.Tensor:
    """1 - mean_k P(|x_k - x'_k| <= radius), x_k drawn from point k's location map in a frame and
    x'_k from its map in the next frame of the video, independently (not in the paper;
    ``track_weight``). A joint moves a little from one frame to the next; a point that jumps to
    another joint, or whose map is split between two places, pays. Unlike a distance between
    the maps' means, it cannot be met by a map that spreads over both places.
    maps, next_maps [B, P, H, W], each a distribution over pixels; radius in pixels; mean over
    points and batch, in [0, 1]."""
    b, p, h, w = maps.shape
    k = int(math.floor(radius))
    d = torch.arange(-k, k + 1, device=maps.device, dtype=maps.dtype)
    disk = ((d[:, None] ** 2 + d[None] ** 2) <= radius ** 2).to(maps.dtype)
    near = F.conv2d(next_maps.reshape(b * p, 1, h, w), disk[None, None], padding=k)
    overlap = (maps.reshape(b * p, 1, h, w) * near).sum(dim=(1, 2, 3))              # [B*P]
    return 1 - overlap.mean()


def seek_loss(maps: torch.Tensor, error: torch.Tensor, cover: bool = False) -> torch.Tensor:
    """1 - mean_{b,k} sum_hw maps[b, k] * error[b] / max_hw error[b]: how far the points' mass
    lies from where the background alone fails (not in the paper; ``seek_weight``). maps [B, P,
    H, W], each a distribution over pixels; error [B, H, W] >= 0 (the background's squared error
    per pixel, treated as a constant). 0 when every point sits on its image's worst pixel, 1
    when every point sits where the background is exact; in [0, 1].
    cover (``seek_cover``): the points' union instead of each point alone, 1 - sum_hw (1 -
    prod_k (1 - maps[b, k])) * error[b] / (P max_hw error[b]): a pixel counts once however many
    points sit on it, so a point gains only where the others are not (the gradient on map k is
    the plain one times prod_{l != k} (1 - maps[b, l])), spreading the points over the failing
    pixels instead of piling them on the worst. The same for P = 1; still in [0, 1]."""
    err = error.detach()
    err = err / err.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    if not cover:
        return 1 - (maps * err[:, None]).sum(dim=(2, 3)).mean()
    covered = 1 - (1 - maps.clamp(0, 1)).prod(dim=1)                    # [B, H, W]
    return 1 - (covered * err).sum(dim=(1, 2)).mean() / maps.shape[1]


def length_spread(points: torch.Tensor) -> torch.Tensor:
    """points [K, P, 2] normalised (K frames of one video) -> [P, P]: mean_k |l^k_ij - mean_k'
    l^k'_ij|, how much the distance between points i and j varies over the frames (0 on the
    diagonal and for K = 1)."""
    d = ((points[:, :, None] - points[:, None]).pow(2).sum(-1) + 1e-12).sqrt()      # [K, P, P]
    return (d - d.mean(0)).abs().mean(0)


def video_rigidity(links: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} S_ij spread_ij: what links [P, P] (one skeleton for a video) pay for their
    lengths varying over its frames, spread [P, P] = ``length_spread(points)`` (not in the
    paper; ``solver_rigidity``). A link along one bone keeps its length, one that skips a hinge
    changes it as the hinge turns."""
    return 0.5 * (links * spread).sum()


# ---------------------------------------------------------------- weights, supplementary VIII-b

@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term in the total (supplementary VIII-b table)."""
    recon: float = 10.0
    contiguity: float = 0.001
    near: float = 10.0
    sparse_joints: float = 0.1
    sparse_links: float = 500.0
    uniform: float = 10.0
    length: float = 100.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# Found by the authors' random search, one row per dataset.
PRESETS: dict[str, LossWeights] = {
    "spiders":      LossWeights(10, 0.000, 10, 0.005, 1, 1, 1000),
    "spiders0shot": LossWeights(10, 0.000, 10, 0.1, 2000, 20, 100),
    "mwhc":         LossWeights(10, 0.001, 10, 0.01, 1000, 20, 1000),
    "cartpoles":    LossWeights(10, 0.001, 10, 0.1, 500, 10, 100),
    "swimmers":     LossWeights(10, 0.001, 10, 0.1, 7000, 20, 1000),
    "human36m":     LossWeights(10, 0.001, 10, 0.0002, 7000, 16, 1000),
}

# Datasets and body kinds of ``sim`` -> the row of the weight table that fits them.
_DATASET_PRESETS = {"cartpole": "cartpoles", "spider": "spiders", "swimmer": "swimmers",
                    "walker": "mwhc", "hopper": "mwhc", "cheetah": "mwhc", "manipulator": "mwhc"}


def preset_for_dataset(name: str) -> str | None:
    """A dataset name (``cartpoles``, ``cartpole:3``, ``walker``, ...) -> its PRESETS row, or None."""
    key = base_dataset(name)
    if key in PRESETS:
        return key
    return _DATASET_PRESETS.get(key.partition(":")[0])


# The paper ramps these linearly from 0 over the first 10k iterations.
RAMPED_TERMS = ("sparse_joints", "sparse_links", "uniform")


def ramp_factor(step: int, ramp_steps: int = 10_000) -> float:
    """min(1, step / ramp_steps); 1 when ramp_steps <= 0."""
    return 1.0 if ramp_steps <= 0 else min(1.0, max(0, step) / ramp_steps)


def effective_weights(weights: LossWeights, step: int, ramp_steps: int = 10_000) -> dict[str, float]:
    """The weights in use at `step`: the ramped terms scaled by ramp_factor."""
    r = ramp_factor(step, ramp_steps)
    return {k: v * r if k in RAMPED_TERMS else v for k, v in weights.as_dict().items()}


def total_loss(terms: dict[str, torch.Tensor], weights: LossWeights, step: int,
               ramp_steps: int = 10_000) -> torch.Tensor:
    """sum_k weight_k(step) * terms[k] over the LossWeights fields."""
    w = effective_weights(weights, step, ramp_steps)
    return sum(w[k] * terms[k] for k in w)


# ---------------------------------------------------------------- what the structure loss prefers

def fit_links(source_points: torch.Tensor, target_points: torch.Tensor, weights: LossWeights,
              steps: int = 400, lr: float = 0.05, sparse_p: float = 0.5,
              links_normalise: str = "mean", joints_normalise: str = "sum",
              near_scale: float = 0.1, near_temperature: float = 0.1,
              exclude_endpoints: bool = False, l_min: float = 0.1, l_max: float = 1.0) -> torch.Tensor:
    """Link probabilities S [P, P] that minimise the structure terms (near, sparse, length, at
    full weight) for fixed points, one free logit per pair, by Adam from S = 0.5.

    *_points: [B, P, 2] normalised, B frame pairs of one object sharing one skeleton. No network
    and no image: this shows which skeleton a loss setting prefers when the points are given
    (e.g. on a ground-truth skeleton), apart from how psi learns. ``uniform`` needs location
    maps and is left out."""
    p = source_points.shape[1]
    i, j = upper_pairs(p, source_points.device)
    z = torch.zeros(len(i), device=source_points.device, requires_grad=True)
    opt = torch.optim.Adam([z], lr=lr)

    def links():
        s = source_points.new_zeros(p, p)
        s[i, j] = torch.sigmoid(z)
        return (s + s.T).expand(source_points.shape[0], p, p)

    for _ in range(steps):
        s = links()
        sl, sj = sparse_losses(s, sparse_p, links_normalise, joints_normalise)
        loss = (weights.near * near_loss(s, source_points, target_points, near_scale,
                                         near_temperature, exclude_endpoints)
                + weights.sparse_links * sl + weights.sparse_joints * sj
                + weights.length * length_loss(s, source_points, target_points, l_min, l_max))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return links()[0].detach()
