"""psi as a solver (``SkeletonConfig.psi_head = "solver"``): the link matrix that minimises the
paper's weighted structure terms (near, sparse links and joints, uniform, length; eqs. 3-5, 8)
on the points pi found, searched per image, or per video over several frames. No learned
weights.

Why: psi's network is meant to amortise exactly this minimisation, but at CPU scale it does not
(docs/benchmarks.md, issue 11): trained by the losses it gives every image one skeleton or drops
every link; trained by regression on these minimisers it needs far more examples than a few
hundred episodes. The minimiser itself follows the body (on ``cartpoles-parts``: joint count
error 1.0, structure F1 0.86). Greedy search, not gradient descent: on these losses Adam from
S = 0.5 finds much worse minima (structure Bcc 0.02 against 0.58).

    links = greedy_links(config, maps [K, P, H, W], points [K, P, 2])   # [P, P] in {0, 1}

Each of the K frames enters the structure terms as both source and target (its near, uniform
and length count twice, as a source/target pair's two frames do), and the terms are averaged
over the K frames, so K = 1 and K > 1 weigh sparsity alike. With ``solver_rigidity`` > 0 a
video's links also pay for how much their lengths vary over its K frames (``L.video_rigidity``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from kpray.losses import skeleton as L
from kpray.ops.coords import argmax_location, expected_location


def structure_objective(c, maps: torch.Tensor, points: torch.Tensor,
                        target_maps: torch.Tensor | None = None,
                        target_points: torch.Tensor | None = None,
                        evidence: torch.Tensor | None = None):
    """f(S [P, P]) -> the weighted structure loss (full weights, no ramp) of links S on K frames:
    location maps [K, P, H, W] and points [K, P, 2] (normalised), all treated as constants. Each
    frame is its own target unless K target frames are given (source/target pairs). evidence
    [K, H, W]: the uniform term's foreground in place of the points' (``link_coverages``)."""
    from kpray.models.skeleton import link_coverages, structure_terms

    maps, points = maps.detach(), points.detach()
    t_maps = maps if target_maps is None else target_maps.detach()
    t_points = points if target_points is None else target_points.detach()
    k, p = points.shape[:2]
    coverage = link_coverages(c, maps, t_maps, points, t_points, evidence)
    w = L.effective_weights(c.loss_weights(), 10 ** 9, 0)
    rigid = _video_rigidity_on(c, k, target_points)
    spread = L.length_spread(points) if rigid else None        # [P, P], once for all candidates

    def f(s: torch.Tensor) -> torch.Tensor:
        terms = structure_terms(c, s[None].expand(k, p, p), maps, t_maps, points, t_points,
                                coverage=coverage)
        total = sum(w[name] * v for name, v in terms.items())
        return total + c.solver_rigidity * L.video_rigidity(s, spread) if rigid else total

    return f


def _video_rigidity_on(c, k: int, target_points) -> bool:
    """``solver_rigidity`` counts on a video's K > 1 frames searched alone, not on a source/target
    pair (training)."""
    return c.solver_rigidity > 0 and k > 1 and target_points is None


class LinkCosts:
    """``structure_objective`` taken apart for the greedy search: for 0/1 links S on fixed points,
    the weighted loss is

        - sum_r max(0, max_{e in S} near[r, e])  +  sum_{e in S} linear[e]  +  sparse(S),

    r over every (frame, point) of the K source (and target) frames: near [R, E] is what link e
    is worth to that point (eq. 3, weight, density weight and the mean over frames folded in),
    linear [E] what it costs alone (uniform, length and ``solver_rigidity``), and the sparse
    terms of eq. 4 depend on S alone. So a toggle's effect on near follows from each row's two
    best links present, without recomputing any distance: O(R E) per search step instead of the
    O(E^2 K P) of scoring every candidate afresh. Needs the near term's forward max to be a
    hard max (``near_max="straight_through"``, the default)."""

    def __init__(self, c, maps, points, target_maps=None, target_points=None, evidence=None):
        from kpray.models.skeleton import frame_coverage

        k, p = points.shape[:2]
        self.c = c
        self.w = w = L.effective_weights(c.loss_weights(), 10 ** 9, 0)
        credit = 0.0 if c.near_exclude_endpoints else c.near_endpoint_credit
        # without target frames each frame is its own target: its terms count twice
        frames = [(maps.detach(), points.detach())]
        if target_points is not None:
            frames.append((target_maps.detach(), target_points.detach()))
        twice = 2.0 if target_points is None else 1.0
        rows, linear = [], 0
        for f_maps, pts in frames:
            v = L.near_values(pts, c.near_scale, credit, c.near_margin)            # [K, P, E]
            if c.near_density_sigma > 0:
                v = v * L.point_density_weights(pts, c.near_density_sigma)[..., None]
            rows.append(v.reshape(k * p, -1) * (twice * w["near"] / k))
            delta = frame_coverage(c, f_maps, pts, evidence)                       # [K, E]
            linear = linear + twice * (w["uniform"] * L.gap_weights(delta, c.uniform_alpha).mean(0)
                                       + w["length"] * L.length_penalties(pts, c.l_min, c.l_max).mean(0))
        self.near = torch.cat(rows)                                                # [R, E]
        if _video_rigidity_on(c, k, target_points):
            iu, ju = torch.triu_indices(p, p, 1, device=points.device)
            linear = linear + c.solver_rigidity * L.length_spread(points.detach())[iu, ju]
        self.linear = linear                                                       # [E]

    def sparse(self, links: torch.Tensor) -> torch.Tensor:
        """Weighted sparse terms of links [N, P, P] -> [N]."""
        sl, sj = L.sparse_terms(links, self.c.sparse_p, self.c.sparse_links_normalise,
                                self.c.sparse_joints_normalise)
        return self.w["sparse_links"] * sl + self.w["sparse_joints"] * sj


def _toggles(cur: torch.Tensor, iu: torch.Tensor, ju: torch.Tensor) -> torch.Tensor:
    """Links [P, P] -> the E candidates [E, P, P], candidate e = cur with pair e toggled."""
    e = torch.arange(iu.numel(), device=cur.device)
    cands = cur.expand(e.numel(), *cur.shape).clone()
    flipped = 1 - cands[e, iu, ju]
    cands[e, iu, ju] = flipped
    cands[e, ju, iu] = flipped
    return cands


def _best_two(near: torch.Tensor, present: torch.Tensor):
    """Per row of near [R, E], over the links present [E] (bool): the best value (0 when none),
    its link (-1 when none) and the second best (0 when fewer than two)."""
    r = near.shape[0]
    idx = present.nonzero()[:, 0]
    top = near[:, idx]
    if idx.numel() >= 2:
        t = top.topk(2, dim=1)
        return t.values[:, 0], idx[t.indices[:, 0]], t.values[:, 1]
    zero = near.new_zeros(r)
    if idx.numel() == 1:
        return top[:, 0], idx.expand(r), zero
    return zero, torch.full((r,), -1, dtype=torch.long, device=near.device), zero


@torch.no_grad()
def greedy_links(c, maps: torch.Tensor, points: torch.Tensor,
                 target_maps: torch.Tensor | None = None, target_points: torch.Tensor | None = None,
                 max_steps: int | None = None, start: torch.Tensor | None = None,
                 evidence: torch.Tensor | None = None) -> torch.Tensor:
    """[P, P] symmetric 0/1 links that (locally) minimise ``structure_objective`` on K frames
    (maps [K, P, H, W], points [K, P, 2]; optional targets as there): from no links (or from
    ``start`` [P, P]), toggle the one link whose toggle lowers the loss most, until none does (or
    after ``max_steps``, default P(P-1)/2 toggles). Every candidate toggle of a step is scored at
    once: from ``LinkCosts`` (near's max taken apart), or, where near's forward max is a softmax,
    by ``structure_objective`` on every candidate (the same values, much slower)."""
    if c.near_max != "straight_through":
        return greedy_links_by_objective(c, maps, points, target_maps, target_points, max_steps,
                                         start, evidence)
    costs = LinkCosts(c, maps, points, target_maps, target_points, evidence)
    p = points.shape[1]
    iu, ju = torch.triu_indices(p, p, 1, device=points.device)
    cur = points.new_zeros(p, p) if start is None else start.to(points).clone()
    present = cur[iu, ju] > 0.5
    top1, arg1, top2 = _best_two(costs.near, present)
    best = float(-top1.sum() + costs.linear[present].sum() + costs.sparse(cur[None])[0])
    for _ in range(iu.numel() if max_steps is None else max_steps):
        cands = _toggles(cur, iu, ju)
        added = -(costs.near - top1[:, None]).clamp_min(0).sum(0)                  # [E]
        held = arg1 >= 0
        removed = torch.zeros_like(added).index_add_(0, arg1[held], (top1 - top2)[held])
        change = torch.where(present, removed - costs.linear, added + costs.linear)
        vals = -top1.sum() + costs.linear[present].sum() + change + costs.sparse(cands)
        k = int(vals.argmin())
        if float(vals[k]) >= best - 1e-6:
            break
        best, cur = float(vals[k]), cands[k]
        present = present.clone()
        present[k] = ~present[k]
        top1, arg1, top2 = _best_two(costs.near, present)
    return cur


@torch.no_grad()
def greedy_links_by_objective(c, maps: torch.Tensor, points: torch.Tensor,
                              target_maps: torch.Tensor | None = None,
                              target_points: torch.Tensor | None = None,
                              max_steps: int | None = None, start: torch.Tensor | None = None,
                              evidence: torch.Tensor | None = None) -> torch.Tensor:
    """``greedy_links`` with every candidate scored by ``structure_objective`` from scratch
    (any ``near_max``; the reference the fast search is tested against)."""
    p = points.shape[1]
    f = vmap(structure_objective(c, maps, points, target_maps, target_points, evidence))
    iu, ju = torch.triu_indices(p, p, 1, device=points.device)
    cur = points.new_zeros(p, p) if start is None else start.to(points).clone()
    best = float(f(cur[None])[0])
    for _ in range(iu.numel() if max_steps is None else max_steps):
        cands = _toggles(cur, iu, ju)
        vals = f(cands)
        k = int(vals.argmin())
        if float(vals[k]) >= best - 1e-6:
            break
        best, cur = float(vals[k]), cands[k]
    return cur


def spanning_tree(points: torch.Tensor) -> torch.Tensor:
    """[P, P] symmetric 0/1 links of the minimum spanning tree of points [K, P, 2], by their
    distance averaged over the K frames (Prim's algorithm): every point linked to the ones that
    stay nearest to it."""
    d = (points[:, :, None] - points[:, None]).norm(dim=-1).mean(0)       # [P, P]
    p = d.shape[0]
    links = d.new_zeros(p, p)
    inside = torch.zeros(p, dtype=torch.bool, device=d.device)
    inside[0] = True
    for _ in range(p - 1):
        cost = d.masked_fill(~inside[:, None] | inside[None], float("inf"))
        i, j = divmod(int(cost.argmin()), p)
        links[i, j] = links[j, i] = 1
        inside[j] = True
    return links


SOLVER_STARTS = ("empty", "tree", "best")


def check_solver_start(c) -> None:
    """ValueError unless ``c.solver_start`` is one of ``SOLVER_STARTS``."""
    if c.solver_start not in SOLVER_STARTS:
        raise ValueError(f"solver_start must be one of {SOLVER_STARTS}, got {c.solver_start!r}")


def solve_links(c, maps: torch.Tensor, points: torch.Tensor,
                target_maps: torch.Tensor | None = None,
                target_points: torch.Tensor | None = None,
                evidence: torch.Tensor | None = None) -> torch.Tensor:
    """``greedy_links`` from the start ``c.solver_start`` names: "empty" (no links), "tree" (the
    points' ``spanning_tree``, from which toggling drops what does not pay), or "best" (both;
    the result with the lower weighted structure loss). evidence: as ``structure_objective``."""
    check_solver_start(c)
    starts = [] if c.solver_start == "tree" else [None]
    if c.solver_start != "empty":               # the tree only where it is searched from
        starts.append(spanning_tree(points))
    found = [greedy_links(c, maps, points, target_maps, target_points, start=s, evidence=evidence)
             for s in starts]
    if len(found) == 1:
        return found[0]
    f = structure_objective(c, maps, points, target_maps, target_points, evidence)
    return min(found, key=lambda s: float(f(s)))


def solver_points(c, maps: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
    """Noise-free location maps [K, P, H, W] -> the points [K, P, 2] (normalised) whose links
    the solver searches (``c.solver_points``): where the model reads its points (``read``
    [K, P, 2], as ``point_readout`` read them; without it, the arg-max pixel), or the maps'
    means."""
    if c.solver_points == "expected" or c.point_readout == "expected":
        return expected_location(maps)
    return argmax_location(maps) if read is None else read.to(maps.dtype)


def spread_frames(frames: int, k: int) -> torch.Tensor:
    """Indices of min(k, frames) frames spread evenly over a video of ``frames`` frames, first
    and last included: the frames a video's skeleton is searched on (``solver_frames``)."""
    return torch.linspace(0, frames - 1, min(k, frames)).round().long().unique()


def track_order(points: torch.Tensor) -> torch.Tensor:
    """points [T, P, 2] of a video's consecutive frames -> order [T, P] (long): frame t's point
    order[t, j] continues track j. Each frame's points are matched one to one to the tracks'
    places in the frame before (least total distance, Hungarian), so a point that takes over
    its neighbour's place while the neighbour takes over its own keeps its track. order[0] is
    the identity. Where two points swap joints between frames (pi's channels are not tied to
    a joint over a video), the tracks stay on their joints."""
    from scipy.optimize import linear_sum_assignment

    pts = points.detach().float().cpu().numpy()
    t, p = pts.shape[:2]
    order = torch.empty(t, p, dtype=torch.long)
    order[0] = torch.arange(p)
    prev = pts[0]
    for i in range(1, t):
        cost = ((prev[:, None] - pts[i][None]) ** 2).sum(-1) ** 0.5      # [track, point]
        tracks, found = linear_sum_assignment(cost)
        order[i, torch.from_numpy(tracks)] = torch.from_numpy(found)
        prev = pts[i][order[i].numpy()]
    return order.to(points.device)


def along_tracks(order: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x [T, P, ...] per frame and point -> x with frame t's points in ``order[t]``'s order."""
    idx = order.to(x.device).reshape(*order.shape, *([1] * (x.dim() - 2)))
    return x.gather(1, idx.expand_as(x))


class SolverSkeletonPredictor(nn.Module):
    """(image [B, 3, H, W], location maps [B, P, H, W]) -> links [B, P, P] in {0, 1}: per image,
    ``greedy_links`` on its own points (``solver_points``; in training, on a pair, the maps'
    means, as the losses see them), with the structure settings and weights of config ``c``.
    No parameters; no gradient flows through it."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        self.p = c.num_points

    @torch.no_grad()
    def forward(self, image: torch.Tensor, location_maps: torch.Tensor,
                target_maps: torch.Tensor | None = None,
                read: torch.Tensor | None = None) -> torch.Tensor:
        """Links [B, P, P] per image from its maps [B, P, H, W]; with a pair's target maps [B, P,
        H, W] (training), the links minimise the terms with the source/target pair, as the
        losses see it, so that a link must hold in both frames. read [B, P, 2]: the points the
        model read from the maps (``solver_points``)."""
        maps = location_maps.detach().float()
        if target_maps is None:
            pts = solver_points(self.config, maps, read)
            t_maps = t_pts = [None] * maps.shape[0]
        else:                                   # the points the losses see
            pts = expected_location(maps)
            t_maps = target_maps.detach().float()
            t_pts = expected_location(t_maps)
            t_maps, t_pts = t_maps[:, None], t_pts[:, None]
        return torch.stack([solve_links(self.config, maps[b:b + 1], pts[b:b + 1], t_maps[b], t_pts[b])
                            for b in range(maps.shape[0])]).to(location_maps.dtype)

    @torch.no_grad()
    def video_links(self, location_maps: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
        """One skeleton for K frames of a video: maps [K, P, H, W] (and the points read from
        them, [K, P, 2]: ``solver_points``) -> links [P, P]."""
        maps = location_maps.detach().float()
        pts = solver_points(self.config, maps, read)
        return solve_links(self.config, maps, pts).to(location_maps.dtype)
