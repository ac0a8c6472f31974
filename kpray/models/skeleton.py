"""The skeleton model of Anciukevicius, Henderson, Bilen (ICPR 2022), section III and supp. VI-VIII.

    source, target [B, 3, 64, 64]
      pi (U-Net)  -> logits [B, P, 64, 64] -> Gumbel-softmax location maps (one per point)
      psi(source, source maps) -> link probabilities S [B, P, P] (symmetric, zero diagonal)
      B(target at 16x16)       -> background [B, 3, 64, 64]
      NPT: colours under the source maps, splatted at the target maps, over the background
      losses: reconstruction + contiguity + near + sparse (links, joints) + uniform + length

Coordinates are normalised, x then y, pixel centres at (2 i + 1) / n - 1 (``kpray.ops.coords``).
Joints are the points with some link of probability >= 0.5.

Training API (shared with ``kpray.models.autolink``)::

    model = SkeletonModel(SkeletonConfig.from_preset("cartpoles"))
    opt = model.configure_optimizer()
    loss, terms = model((source, target), step=step)   # call the module (a DDP wrapper too)
    loss.backward(); model.clip_gradients(); opt.step()
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from kpray.losses import skeleton as L
from kpray.models.skeleton_solver import (SolverSkeletonPredictor, check_solver_start, spread_frames,
                                         track_order, along_tracks)
from kpray.models.starts import FreshStarts, print_on_rank0, rank_mean
from kpray.models.unet import UNet
from kpray.ops.coords import argmax_location, expected_location, tracked_location
from kpray.ops.edge_map import upper_pairs


@dataclass
class SkeletonConfig:
    """Stated by the paper: 64x64 input, U-Net pi, 8-layer psi, B from 16x16, max-pool 7 and 5,
    alpha 0.8, 5-level pyramid, Adam 0.005 (0.9, 0.999), clipping at 1, batch 8, the 10k ramp and
    the per-dataset weights. Every other value below is our choice (marked "open")."""
    image_size: int = 64
    num_points: int = 32            # open: P; >= the 17 joints of an 8-legged spider, with slack
    # pi and its Gumbel-softmax (open: temperature and annealing)
    pi_width: int = 32              # U-Net channels at full resolution (x2 per down step, 4 steps)
    gumbel_tau_start: float = 0.1   # temperature at step 0 ...
    gumbel_tau_end: float = 0.1     # ... annealed geometrically to this ...
    gumbel_anneal_steps: int = 10_000  # ... over these steps (0: constant gumbel_tau_start)
    gumbel_hard: bool = False       # straight-through one-hot samples instead of soft ones
    gumbel_noise: bool = False      # True: Gumbel samples (paper); False: plain tempered softmax
                                    # (the noise drives the points off the object at P = 16)
    # psi and B (open: widths, how psi sees the points)
    psi_width: int = 32
    psi_maps: str = "peak"          # open: psi's point channels: "peak" (each location map over
                                    # its max, the point's pixel = 1) or "raw" (probabilities,
                                    # ~1e-4 per pixel: 6-9 % of psi's first-layer response)
    psi_detach_maps: bool = False   # open: True: no gradient from psi's losses into pi through
                                    # psi's input maps
    psi_head: str = "fc"            # open: "fc" (paper: one output per pair), "pairwise" (one
                                    # head shared by all pairs, reading the image along each pair)
                                    # or "solver" (no network: the links that minimise the
                                    # structure terms on pi's points, greedy search per image;
                                    # kpray.models.skeleton_solver)
    solver_frames: int = 1          # open, psi_head="solver": a video's skeleton minimises the
                                    # structure terms over this many frames spread evenly over
                                    # it (1: each frame's own skeleton, the paper's protocol)
    solver_track_points: bool = False  # open (not in the paper), psi_head="solver" with
                                    # solver_frames > 1: before a video's skeleton is searched,
                                    # its points are relabelled frame by frame so that each
                                    # label follows one track (track_order: least total distance
                                    # to the labels' places in the frame before). pi's channel
                                    # for a point is not tied to a joint over a video: on five
                                    # poles a point jumps to a neighbouring hinge about once
                                    # every four frames, and one skeleton for all frames can
                                    # then only link points that stay put. Measured (session
                                    # 27): the jumps are not two points trading places (joint
                                    # changes per frame on five poles 0.150 -> 0.155), and
                                    # joint F1 falls (0.509 -> 0.447 on 30 test videos); off
    solver_start: str = "empty"     # open, psi_head="solver": where the greedy search starts:
                                    # "empty" (no links), "tree" (the points' minimum spanning
                                    # tree) or "best" (both; the lower structure loss).
                                    # Measured: "tree" more joints, lower joint F1; "best" ~ "empty"
    solver_rigidity: float = 0.0    # open (not in the paper; 0 = off), psi_head="solver" with
                                    # solver_frames > 1: weight of L.video_rigidity, sum_ij S_ij x
                                    # the mean absolute deviation of link ij's length over the K
                                    # frames. A bone keeps its length; a link that skips a hinge
                                    # does not, so a longer chain needs more joints. Scores links
                                    # only: it does not move the points. Measured: it removes links
                                    # on every body alike (pi's points slide along their parts as
                                    # much as a hinge turning moves a skipping link); not a recipe
    psi_pair_samples: int = 5       # open: places sampled along a pair (pairwise head)
    psi_target: str = "loss"        # open: "loss" (paper: psi minimises the structure terms
                                    # through its shared weights) or "fit" (psi regresses, by
                                    # BCE, each sample's own minimiser of the same terms)
    psi_fit_steps: int = 100        # open: Adam steps of that per-sample fit ...
    psi_fit_init: str = "zero"      # open: ... from S = 0.5 ("zero"), or from psi's own logits
                                    # ("psi": psi then confirms its own guess; measured: one
                                    # skeleton for every image)
    psi_fit_lr: float = 0.4         # open: its learning rate
    psi_fit_weight: float = 1.0     # open: weight of psi_fit in the total loss
    # rigidity (not in the paper; 0 = off): weight of L.rigidity_loss, sum_ij S_ij |l^source_ij -
    # l^target_ij|. Nothing in eqs. 1-8 asks a point to stay on the same part of the body from
    # frame to frame (on a one-colour body any order of the points along it reconstructs
    # alike; length only bounds a link's length), so points match the true joints frame by
    # frame but not over a video (docs/benchmarks.md). A link's two points keeping their
    # distance is what a rigid link means; it trains psi (link only rigid pairs) and moves
    # the points, by rigidity_points_gain times its gradient. Measured: the joints track
    # each other better (consistency 0.52 -> 0.76) but leave the true joints; not in a recipe.
    # With psi_head="solver" the links are the solver's on each training pair (from
    # rigidity_start_step on); measured there: more points on the object, fewer on joints
    rigidity_weight: float = 0.0
    rigidity_points_gain: float = 1.0
    rigidity_start_step: int = 0    # the term joins the loss at this step (points settled first)
    rigidity_trains_psi: bool = True  # False: psi's links enter it detached (it cannot drop them)
    # track (not in the paper; 0 = off): weight of L.track_loss, 1 - the mean over points of
    # the chance that a point drawn from its location map in the source frame of a training
    # pair and one drawn from its map in the next frame of the video (0.04 s later; the one
    # before at a video's end) lie within track_margin of each other. Nothing else ties a point
    # to its joint over a video: measured with benchmarks/point_identity.py, a point on an outer
    # hinge of a five-pole body jumps to a neighbouring hinge (7-9 px away) every 3.4-4.4
    # frames, while the joints move 1.4-1.8 px per frame (median; 90th percentile 3.4-3.9 px).
    # The margin lets that motion pass. (A hinge on the distance between the two maps' means,
    # at weight 3, fell 6x in a 300-step fine-tune and left the jumps as they were: the maps
    # spread instead.) At 0.3 the points leave the outer hinges (session 25); at 0.05, over
    # eight GPU starts against the recipe's, joint F1 fell on seven (by 0.08 on average) and
    # the jumps barely moved (docs/benchmarks.md, session 26). Not in a recipe
    track_weight: float = 0.0
    track_margin: float = 0.15      # normalised (2 = the image's width): 4.8 px at 64x64
    track_start_step: int = 0       # the term joins this many steps after the current start
    #                                 began (the run's start, or its last restart), so that it
    #                                 does not hold a start's points before they find the body
    # seek (not in the paper; 0 = off): weight of L.seek_loss on the target frame's location
    # maps, how far their mass lies from where the background alone fails (B's squared error
    # per pixel, as a constant), from seek_from to seek_until steps into each start (the run's,
    # and each restart's; not at once: an untrained B fails worst on the dark sky). A start
    # fails when its points settle off the body and B paints the body itself (reliance < 0.25
    # at step 250; 8 of 8 starts of seeds 3 and 5 on session 27's CPU): a point carries its
    # source pixel's colour, so one on the background in both frames is a fixed point of
    # eq. 1. This pulls the points to the body first.
    # Measured at 1 (its gradient on pi about recon's at the start) on seed 5's failing first
    # start, restarts off: points on the object at step 250 0.08 -> 0.87, reliance 0.50-0.55
    # from step 500, test joint F1 0.560 (the recipe's run there: 0.284). Reliance at step 250
    # stays low with it (0.13-0.17), so restart_step's test does not fit it. In the
    # learn-skeleton recipe since session 28, with the restart off: 5 starts on 5 data sets,
    # test joint F1 0.48-0.63 (docs/benchmarks.md). Default 0: the paper's loss
    seek_weight: float = 0.0
    seek_from: int = 50
    seek_until: int = 200
    seek_cover: bool = False        # the term on the points' union (L.seek_loss's cover): a
    #                                 pixel counts once, so the points spread over the body's
    #                                 failing pixels instead of piling on the worst; once on
    #                                 seed 9: within a start's noise of the plain term, the
    #                                 points no more spread (docs/benchmarks.md, session 28)
    link_grad_floor: float = 0.0    # open: least slope of the link sigmoid in backward; 0: plain
                                    # sigmoid (links saturate at 0/1 within 50 steps and stop
                                    # learning)
    background_width: int = 32
    background_latent: int = 64
    # neural point transporter (open: splat and compositing constants)
    splat_sigma: float = 0.8        # std (pixels) of the 3x3 Gaussians used to smooth and to splat
    composite_gamma: float = 0.1    # softmax temperature over splat strengths (soft rasteriser)
    composite_background: float = 0.0  # background's "strength"; a full splat (1) beats it by e^10
    transport_patch: int = 1        # open: 1 (paper): a point carries one colour, splatted 3x3;
                                    # k odd > 1: it carries the source's k x k patch around it and
                                    # pastes it at its target location (neural_point_transport),
                                    # meant to stop a point on a joint sliding along the body
                                    # (measured worse: points paint the body from beside it)
    transport_patch_sigma: float = 1.0  # std (pixels) of the k x k strength of a pasted patch
    # losses (stated: pools, alpha, levels; open: the rest)
    preset: str = "cartpoles"       # row of the paper's weight table: see L.PRESETS
    weights: L.LossWeights | None = None  # overrides the preset's weights when given
    sparse_joints_scale: float = 0.0  # open (0 = off): > 0 sets the joint weight of eq. 4 to
                                    # this times the preset row's (replacing weights'), so one
                                    # recipe keeps each dataset's ratio: the learn-skeleton
                                    # recipe's 30 gives 3 on Cartpoles and Swimmers (0.1 in the
                                    # table) and 0.15 on Spiders (0.005). A joint weight of 3 on
                                    # Spiders gave every spider four joints (true 10-25); 0.15
                                    # raised test joint F1 there from 0.32 to 0.61 (session 33).
                                    # A search over the joint weight has no effect while it is on
    pyramid_levels: int = 5
    recon_reduction: str = "mean"   # open: eq. 1's squared norm, "sum" over pixels (literal) or
                                    # per-pixel "mean" (12288x smaller at 64x64; the runs that
                                    # kept pi's points on the object used it)
    recon_edge_weight: float = 0.0  # open (not in the paper; 0 = eq. 1): each pixel's squared
                                    # error weighted by L.edge_weights(target, this): thin parts
                                    # weigh by their edges, not their area. Measured at 1: more
                                    # points on joints (oracle choice up on the three -parts seeds
                                    # tried), solver's joint F1 up on two of them, down on the
                                    # third and on the plain Cartpoles; not a recipe
    contiguity_pool: int = 7        # beta
    uniform_pool: int = 5
    uniform_alpha: float = 0.8
    uniform_tau: float = 1.0        # open: length scale (pixels) of the line mask exp(-d / tau)
    uniform_evidence: str = "peak"  # open: "peak" (each map over its max) or "raw" (literal;
                                    # probabilities never reach alpha, eq. 5 becomes mean(S))
    sparse_p: float = 0.5           # open: exponent 0 < p < 1 of the sparsity loss
    sparse_links_normalise: str = "mean"  # open: "mean" over pairs or "sum" (literal eq. 4)
    sparse_joints_normalise: str = "sum"  # open: "sum" over points (literal eq. 4) or "mean"
    near_scale: float = 0.1         # open: unit of d in exp(-d) of the near loss (normalised)
    near_margin: float = 0.0        # open (0 = eq. 3): distance (normalised) within which a link
                                    # explains a point fully: d -> max(d - margin, 0). Measured
                                    # with the solver at 0.03-0.08: no gain (the one-pole bodies
                                    # keep their extra joint; docs/benchmarks.md, session 22)
    near_density_sigma: float = 0.0  # open (0 = eq. 3): each point's term in eq. 3 weighed by
                                     # 1 / (its frame's points within ~sigma, itself included;
                                     # L.point_density_weights), so a pile of points on the cart
                                     # counts as one place and a lone point on an outer pole
                                     # fully. Measured with the solver at 0.03-0.05: every
                                     # body's count falls alike (docs/benchmarks.md, session 23)
    near_temperature: float = 0.1   # open: softmax temperature of the relaxed max
    near_exclude_endpoints: bool = False  # open: True: a link explains only points other than
                                          # its two endpoints; helps at P = 16, not at P = 32
    near_max: str = "straight_through"  # open: relaxation of eq. 3's max: "straight_through"
                                        # (paper: argmax . softmax) or "softmax" (shared by ties)
    near_endpoint_credit: float = 1.0  # open: a link's value to its own endpoints in eq. 3, from
                                       # 0 (= exclude_endpoints) to 1 (literal: d = 0); 0.5 with
                                       # psi_target="fit" recovers true skeletons on GT points
    structure_moves_points: bool = False  # open: False stops the gradients of near and length at
                                         # the point coordinates (they still reach pi through
                                         # psi's input maps), so they cannot pull points together
    near_points_gain: float = 1.0   # with structure_moves_points: the gradients of near and of
    length_points_gain: float = 1.0  # length on the point coordinates are scaled by these (1 =
    #                                  the paper: every loss at its weight). At 1 they outweigh
    #                                  the reconstruction on pi ~1000x at the start; even at
    #                                  0.001 they drew the points off the object within 250
    #                                  steps (docs/benchmarks.md, "Points cover the joints").
    #                                  Near, with the source's links on the target's points too,
    #                                  is what ties a point's place from frame to frame; length
    #                                  only bounds a link's length
    structure_moves_points_from: int = 0  # with structure_moves_points: the steps of a start
    #                                  before which near and length leave the points alone (and,
    #                                  with psi_head="solver", are not computed): the points
    #                                  settle on the body by the reconstruction first. With the
    #                                  solver, from 1000, near gain 3e-4 (about half the
    #                                  reconstruction's pull on pi) and length gain 0, every
    #                                  point stayed on the body, and test joint F1 read 0.553
    #                                  and 0.495 on two Cartpoles seeds (the recipe: 0.517,
    #                                  0.518); at gain 1e-3 all 16 collapsed onto one link
    #                                  within 250 steps (docs/benchmarks.md, session 34). Not in
    #                                  the recipe
    l_min: float = 0.1              # open: shortest plausible link (normalised; 3.2 px at 64)
    l_max: float = 1.0              # open: longest plausible link (normalised; 32 px at 64)
    ramp_steps: int = 10_000        # uniform and sparse weights rise linearly over these steps
    # fresh starts (not in the paper; restart_step 0 = off, the paper's single start)
    restart_step: int = 0           # N > 0: N steps after the current start began, if the
    #                                 points' share of the reconstruction over the last
    #                                 restart_window steps (reliance = 1 - mse(reconstruction) /
    #                                 mse(background alone), per pixel, the training batches)
    #                                 is below restart_below, pi, psi and B restart from a fresh
    #                                 random start (kpray.models.starts) and the optimiser's
    #                                 moments are cleared; at most restart_max times. The steps
    #                                 before a restart count against the run's. Measured on
    #                                 cartpoles-parts: starts whose points stay off the body (B
    #                                 paints it) have reliance <= 0.16 at step 250, those that
    #                                 learn >= 0.37; at step 150 a late one is still at 0.10
    #                                 (docs/benchmarks.md, "Which start learns: the skeleton model")
    restart_window: int = 50
    restart_below: float = 0.25
    restart_max: int = 3
    restart_keep_best: bool = True  # once restart_max restarts are made, the last start is
    #                                 judged too; below restart_below and below the best start
    #                                 replaced before it, that start comes back as it was at
    #                                 its own decision (kpray.models.starts: ``shelve``,
    #                                 ``return_to_best``; in memory, so a resume in between
    #                                 keeps the last). False: the last start is always kept
    # optimisation
    lr: float = 0.005
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float = 1.0
    grad_clip_value: float = 1.0
    batch_size: int = 8             # pairs, global
    link_threshold: float = 0.5     # a link exists where S >= this (evaluation)
    point_readout: str = "tracked"  # open: a predicted point's pixel in evaluation: "argmax" of
                                    # its logits, "expected" (the noise-free map's mean, what
                                    # the structure terms use; measured: lower joint F1, the mean
                                    # falls between a map's modes), or "tracked": on a video, per
                                    # point the path over its map's readout_peaks largest local
                                    # maxima per frame that best trades map value against motion
                                    # (``tracked_location``); on a lone image, the arg-max. A map
                                    # split between two places has its arg-max jump between them.
                                    # Measured on the test videos of three recipe runs on
                                    # untuned Cartpoles seeds, against "argmax": joint F1 0.551
                                    # -> 0.596, 0.486 -> 0.548, 0.493 -> 0.501; distance, Bcc
                                    # and structure F1 better on all three; Spearman lower on
                                    # two, but not on 80 training videos of each
                                    # (docs/benchmarks.md, session 30)
    readout_peaks: int = 8          # "tracked": local maxima per frame a point may take
    readout_motion: float = 0.1     # "tracked": typical step of a point between frames, in
                                    # normalised units (0.1 = 3.2 px at 64x64; true joints move
                                    # 1.7 px a frame at the median, 3.7 at the 90th percentile,
                                    # on cartpoles)
    solver_points: str = "readout"  # open, psi_head="solver": the points whose links the solver
                                    # searches at prediction: "readout" (as point_readout reads
                                    # them: the points the metrics score) or "expected" (the
                                    # maps' means, as the losses see them; before session 29).
                                    # A map split between two places has its mean off the body,
                                    # where no link through it is right. Measured on the test
                                    # videos of six trained recipe runs: "readout" raises joint
                                    # F1 on all six (by 0.01-0.03) and Spearman (by 0.11-0.28),
                                    # and lowers the count error on five (docs/benchmarks.md)

    @classmethod
    def paper_literal(cls, preset: str = "cartpoles", **overrides) -> "SkeletonConfig":
        """The paper's text read literally where our defaults depart from it (PAPER_LITERAL)."""
        return cls.from_preset(preset, **{**PAPER_LITERAL, **overrides})

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "SkeletonConfig":
        if preset not in L.PRESETS:
            raise ValueError(f"unknown preset {preset!r}; one of {sorted(L.PRESETS)}")
        return cls(preset=preset, **overrides)

    def loss_weights(self) -> L.LossWeights:
        w = self.weights if self.weights is not None else L.PRESETS[self.preset]
        if self.sparse_joints_scale > 0:
            w = replace(w, sparse_joints=self.sparse_joints_scale * L.PRESETS[self.preset].sparse_joints)
        return w

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = self.loss_weights().as_dict()
        return d


# Where the defaults above depart from a literal reading of the paper, and what it says instead
# (or, where it is silent, the reading closest to its text). Measured reasons: docs/benchmarks.md.
# Selected with ``--literal`` (jobs/train_skeleton.py, jobs/tune_skeleton.py) or
# ``SkeletonConfig.paper_literal()``.
PAPER_LITERAL: dict = {
    "gumbel_noise": True,            # Gumbel-softmax samples
    "gumbel_tau_start": 1.0,         # (temperatures unstated; 1 -> 0.5 annealed)
    "gumbel_tau_end": 0.5,
    "structure_moves_points": True,  # every loss reaches every network
    "psi_maps": "raw",               # "sampled foreground points (represented as heatmaps)"
    "psi_detach_maps": False,
    "uniform_evidence": "raw",       # pi-bar = max_p maxpool(pi_p) of the location maps
    "recon_reduction": "sum",        # eq. 1: a squared norm
    "sparse_links_normalise": "sum",  # eq. 4: sums
    "sparse_joints_normalise": "sum",
    "near_exclude_endpoints": False,  # eq. 3: d = 0 for a link's own endpoints
    "near_endpoint_credit": 1.0,
    "link_grad_floor": 0.0,          # plain sigmoid
    "psi_head": "fc",                # "a fully connected layer outputting P(P-1)/2 parameters"
    "psi_target": "loss",            # the structure losses train psi directly
    "point_readout": "argmax",       # (unstated) each frame's own most likely pixel
}


# ---------------------------------------------------------------- pi: U-Net -> location maps

def gumbel_location_maps(logits: torch.Tensor, tau: float, hard: bool = False,
                         noise: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits: [B, P, H, W] -> location maps [B, P, H, W], each a distribution over the H*W pixels:
    softmax((logits + Gumbel noise) / tau). hard: one-hot of the arg-max in the forward pass with
    the soft sample's gradient (straight-through). noise=False: plain tempered softmax."""
    b, p, h, w = logits.shape
    flat = logits.reshape(b, p, h * w)
    if noise:
        u = torch.rand(flat.shape, device=flat.device, dtype=flat.dtype, generator=generator)
        flat = flat - torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))      # + Gumbel(0, 1)
    soft = torch.softmax(flat / tau, dim=-1)
    if hard:
        one_hot = F.one_hot(soft.argmax(-1), h * w).to(soft.dtype)
        soft = one_hot - soft.detach() + soft
    return soft.view(b, p, h, w)


# ---------------------------------------------------------------- psi: skeleton predictor

class _SigmoidFloor(torch.autograd.Function):
    """sigmoid(z) forward; backward with the slope max(sigmoid'(z), floor), so a saturated link
    probability (z far from 0) still passes gradient to the logit."""

    @staticmethod
    def forward(ctx, z, floor):
        s = torch.sigmoid(z)
        ctx.save_for_backward(s)
        ctx.floor = floor
        return s

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        return grad * (s * (1 - s)).clamp_min(ctx.floor), None


def link_sigmoid(z: torch.Tensor, grad_floor: float = 0.0) -> torch.Tensor:
    """Link probabilities from logits z; grad_floor > 0 keeps a minimum slope in the backward
    pass (``SkeletonConfig.link_grad_floor``); 0 is the plain sigmoid."""
    return _SigmoidFloor.apply(z, grad_floor) if grad_floor > 0 else torch.sigmoid(z)


class SkeletonPredictor(nn.Module):
    """(image [B, 3, H, W], location maps [B, P, H, W]) -> link probabilities S [B, P, P]:
    8 Conv-BN-LeakyReLU (kernels 7, 5, 3, 3, 3, 3, 3, 1; four of them stride 2, 64 -> 4),
    LayerNorm, a fully connected layer to P(P-1)/2 logits, sigmoid, symmetrised."""

    KERNELS = (7, 5, 3, 3, 3, 3, 3, 1)
    STRIDES = (1, 2, 2, 2, 2, 1, 1, 1)

    MAPS = ("peak", "raw")

    def __init__(self, p: int, width: int = 32, image_size: int = 64, maps: str = "peak",
                 detach_maps: bool = False, grad_floor: float = 0.0):
        super().__init__()
        self.grad_floor = float(grad_floor)
        if maps not in self.MAPS:
            raise ValueError(f"psi_maps must be one of {self.MAPS}, got {maps!r}")
        self.maps, self.detach_maps = maps, detach_maps
        mult = (1, 1, 2, 2, 4, 4, 4, 2)
        layers, c_in = [], 3 + p
        for k, s, m in zip(self.KERNELS, self.STRIDES, mult):
            layers += [nn.Conv2d(c_in, width * m, k, s, k // 2, bias=False),
                       nn.BatchNorm2d(width * m), nn.LeakyReLU(0.2, inplace=True)]
            c_in = width * m
        self.conv = nn.Sequential(*layers)
        n_feat = c_in * (image_size // 16) ** 2
        self.norm = nn.LayerNorm(n_feat)
        self.fc = nn.Linear(n_feat, p * (p - 1) // 2)
        self.p = p

    def point_channels(self, location_maps: torch.Tensor) -> torch.Tensor:
        """[B, P, H, W] location maps -> psi's point channels (see ``SkeletonConfig.psi_maps``)."""
        if self.detach_maps:
            location_maps = location_maps.detach()
        if self.maps == "peak":
            location_maps = location_maps / location_maps.amax(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
        return location_maps

    def logits(self, image, location_maps) -> torch.Tensor:
        """[B, P(P-1)/2] link logits z, pairs in ``upper_pairs`` order."""
        x = self.conv(torch.cat([image, self.point_channels(location_maps)], dim=1)).flatten(1)
        return self.fc(self.norm(x))

    def forward(self, image, location_maps):
        s = link_sigmoid(self.logits(image, location_maps), self.grad_floor)   # [B, E]
        i, j = upper_pairs(self.p, s.device)
        links = s.new_zeros(s.shape[0], self.p, self.p)
        links[:, i, j] = s
        return links + links.transpose(1, 2)


class PairwiseSkeletonPredictor(SkeletonPredictor):
    """psi with a link head shared by all pairs (``SkeletonConfig.psi_head = "pairwise"``; the
    paper's psi is ``SkeletonPredictor``, one fully connected output per pair).

    A small conv net maps the image and the points' foreground evidence (max over the point
    channels) to features F [B, C, H/2, W/2]. The logit of pair (i, j) is an MLP of: F sampled
    at both points (sum and product, so the pair is unordered), the mean and the minimum of F
    at ``samples - 2`` places between them (a gap along the segment shows in the minimum), the
    segment's length, and learned embeddings of the two point indices (sum and product), so
    point identities still matter. Every pair shares the weights, so what the image shows along
    a segment decides its link; the fully connected head can only learn a per-pair offset plus
    a small image-dependent part (measured: the same skeleton for every image)."""

    def __init__(self, p: int, width: int = 32, image_size: int = 64, maps: str = "peak",
                 detach_maps: bool = False, grad_floor: float = 0.0, samples: int = 5):
        nn.Module.__init__(self)
        if maps not in self.MAPS:
            raise ValueError(f"psi_maps must be one of {self.MAPS}, got {maps!r}")
        if samples < 3:
            raise ValueError(f"psi_pair_samples must be >= 3, got {samples}")
        self.maps, self.detach_maps, self.grad_floor = maps, detach_maps, float(grad_floor)
        self.p, self.samples = p, samples
        c = 2 * width

        def block(c_in, c_out, k, stride):
            return [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out),
                    nn.LeakyReLU(0.2, inplace=True)]

        self.conv = nn.Sequential(*block(4, width, 5, 1), *block(width, c, 3, 2), *block(c, c, 3, 1),
                                  *block(c, c, 3, 1))
        self.embed = nn.Parameter(0.5 * torch.randn(p, c))
        self.head = nn.Sequential(nn.Linear(6 * c + 1, 2 * c), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Linear(2 * c, 1))

    def logits(self, image, location_maps) -> torch.Tensor:
        maps = location_maps.detach() if self.detach_maps else location_maps
        channels = self.point_channels(location_maps)
        f = self.conv(torch.cat([image, channels.amax(dim=1, keepdim=True)], dim=1))  # [B, C, h, w]
        pts = expected_location(maps)                                               # [B, P, 2]
        i, j = upper_pairs(self.p, image.device)
        a, b = pts[:, i], pts[:, j]                                                  # [B, E, 2]
        t = torch.linspace(0, 1, self.samples, device=image.device, dtype=pts.dtype)
        seg = a[:, :, None] + t[None, None, :, None] * (b - a)[:, :, None]           # [B, E, K, 2]
        v = F.grid_sample(f, seg, align_corners=False).permute(0, 2, 3, 1)           # [B, E, K, C]
        ends, inner = v[:, :, 0] + v[:, :, -1], v[:, :, 1:-1]
        e_i, e_j = self.embed[i], self.embed[j]                                      # [E, C]
        n = v.shape[0]
        x = torch.cat([ends, v[:, :, 0] * v[:, :, -1], inner.mean(2), inner.amin(2),
                       (e_i + e_j).expand(n, -1, -1), (e_i * e_j).expand(n, -1, -1),
                       (b - a).norm(dim=-1, keepdim=True)], dim=-1)
        return self.head(x).squeeze(-1)                                             # [B, E]


PSI_HEADS = {"fc": SkeletonPredictor, "pairwise": PairwiseSkeletonPredictor,
             "solver": SolverSkeletonPredictor}


def make_psi(c: "SkeletonConfig") -> nn.Module:
    """The skeleton predictor that ``c.psi_head`` names, with c's settings."""
    if c.psi_head not in PSI_HEADS:
        raise ValueError(f"psi_head must be one of {sorted(PSI_HEADS)}, got {c.psi_head!r}")
    if c.psi_head == "solver":
        if c.psi_target != "loss":
            raise ValueError("psi_head='solver' has nothing to fit: psi_target must be 'loss'")
        check_solver_start(c)
        if not c.solver_frames >= 1:
            raise ValueError(f"solver_frames must be >= 1, got {c.solver_frames}")
        if not c.solver_rigidity >= 0:
            raise ValueError(f"solver_rigidity must be >= 0, got {c.solver_rigidity}")
        return SolverSkeletonPredictor(c)
    args = (c.num_points, c.psi_width, c.image_size, c.psi_maps, c.psi_detach_maps, c.link_grad_floor)
    return PairwiseSkeletonPredictor(*args, c.psi_pair_samples) if c.psi_head == "pairwise" else \
        SkeletonPredictor(*args)


# ---------------------------------------------------------------- B: background

class BackgroundNet(nn.Module):
    """image [B, 3, 64, 64] -> background [B, 3, 64, 64] from its 16x16 downsample: 3
    Conv-BN-LeakyReLU (16 -> 2) + FC to a latent vector; FC to 16x16 features, two transposed
    convolutions (16 -> 32 -> 64). Its low capacity keeps the moving object out of it."""

    def __init__(self, width: int = 32, latent: int = 64):
        super().__init__()
        w = width

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.LeakyReLU(0.2, inplace=True)]

        self.encoder = nn.Sequential(*block(3, w), *block(w, 2 * w), *block(2 * w, 4 * w),
                                     nn.Flatten(), nn.Linear(4 * w * 2 * 2, latent))
        self.to_map = nn.Linear(latent, w * 16 * 16)
        self.decoder = nn.Sequential(
            nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(w, 3, 4, 2, 1))
        self.width = w

    def forward(self, image):
        small = F.interpolate(image, size=(16, 16), mode="area")
        z = self.encoder(small)
        x = self.to_map(z).view(-1, self.width, 16, 16)
        return torch.sigmoid(self.decoder(x))


# ---------------------------------------------------------------- the neural point transporter

def gaussian_kernel(size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """[size, size] Gaussian (size odd) with centre 1."""
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    return torch.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * sigma ** 2))


def gaussian3x3(sigma: float, peak_one: bool, device=None, dtype=torch.float32) -> torch.Tensor:
    """[3, 3] Gaussian; peak_one: centre = 1 (a splat of full strength), else sums to 1."""
    g = gaussian_kernel(3, sigma, device, dtype)
    return g if peak_one else g / g.sum()


def _conv_each(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of [B, P, H, W] with the same [k, k] kernel, k odd (zero padding,
    same size out)."""
    b, p, h, w = maps.shape
    return F.conv2d(maps.reshape(b * p, 1, h, w), kernel[None, None],
                    padding=kernel.shape[-1] // 2).view(b, p, h, w)


def point_colours(source: torch.Tensor, source_maps: torch.Tensor, sigma: float = 0.8) -> torch.Tensor:
    """c_p: the source colours under each smoothed source location map. source [B, 3, H, W],
    source_maps [B, P, H, W] -> [B, P, 3]."""
    smooth = _conv_each(source_maps, gaussian3x3(sigma, False, source.device, source.dtype))
    total = smooth.sum(dim=(-1, -2)).clamp_min(1e-12)                        # [B, P]
    return torch.einsum("bphw,bchw->bpc", smooth, source) / total.unsqueeze(-1)


def point_patches(source: torch.Tensor, source_maps: torch.Tensor, size: int,
                  sigma: float = 0.8) -> torch.Tensor:
    """The source's size x size patch under each smoothed source location map (the map-weighted
    mean of the patches centred on each pixel): source [B, 3, H, W], source_maps [B, P, H, W] ->
    [B, P, 3, size, size]; entry [.., dy + r, dx + r] is the colour at offset (dx, dy) from the
    point, r = size // 2. size 1 is ``point_colours``."""
    b, _, h, w = source.shape
    smooth = _conv_each(source_maps, gaussian3x3(sigma, False, source.device, source.dtype))
    weight = smooth.flatten(2) / smooth.sum(dim=(-1, -2)).clamp_min(1e-12)[..., None]  # [B, P, HW]
    # edge-replicated: zero padding makes a point at the border carry black, and such points
    # parked on the top row to paint dark sky (measured: 5-6 of 16 points, 250-500 steps)
    r = size // 2
    cols = F.unfold(F.pad(source, (r, r, r, r), mode="replicate"), size)   # [B, 3 size^2, HW]
    return torch.einsum("bpn,bkn->bpk", weight, cols).view(b, -1, 3, size, size)


def neural_point_transport(source: torch.Tensor, source_maps: torch.Tensor,
                           target_maps: torch.Tensor, background: torch.Tensor,
                           sigma: float = 0.8, gamma: float = 0.1,
                           background_strength: float = 0.0, patch: int = 1,
                           patch_sigma: float = 1.0) -> torch.Tensor:
    """NPT(source, pi(source), pi(target)) over a background -> reconstruction [B, 3, H, W].

    patch 1 (the paper): each point p takes colour c_p from the source (``point_colours``) and
    is splatted at its target location: strength A_p = pi_target_p * G (3x3 Gaussian, centre 1).
    Splats and background are composited with a weighted softmax as in the soft rasteriser, the
    strength playing the role of depth: weight_p oc A_p exp(A_p / gamma), weight_bg oc
    exp(background_strength / gamma).

    patch k > 1 (odd; not in the paper): each point carries the source's k x k patch around it
    (``point_patches``) and pastes it at its target location, with strength A_p = pi_target_p *
    G_k (k x k Gaussian of std patch_sigma, centre 1): the colour p gives pixel w is the
    strength-weighted mean over target locations u of patch_p(w - u). A point whose patch is the
    same wherever it sits along a one-colour part is free to slide along it from frame to frame;
    one whose patch holds a colour boundary or a bend (a joint) is not: meant to give points at
    joints an identity over a video. Measured on ``cartpoles-parts`` (k 5): it did not; the
    points paint the body from beside it (docs/benchmarks.md, session 16)."""
    if patch == 1:
        colours = point_colours(source, source_maps, sigma)                 # [B, P, 3]
        strength = _conv_each(target_maps, gaussian3x3(sigma, True, source.device, source.dtype))
    else:
        if patch < 1 or patch % 2 == 0:
            raise ValueError(f"patch must be an odd size >= 1, got {patch}")
        b, p, h, w = target_maps.shape
        g = gaussian_kernel(patch, patch_sigma, source.device, source.dtype)
        patches = point_patches(source, source_maps, patch, sigma)          # [B, P, 3, k, k]
        strength = _conv_each(target_maps, g)
        # sum_u t(u) G(w - u) patch(w - u): a cross-correlation with the flipped G * patch
        kernel = (g * patches).flip(-1, -2).reshape(b * p * 3, 1, patch, patch)
        painted = F.conv2d(target_maps.reshape(1, b * p, h, w), kernel, padding=patch // 2,
                           groups=b * p).view(b, p, 3, h, w)
    logits = torch.cat([torch.log(strength.clamp_min(1e-10)) + strength / gamma,
                        torch.full_like(strength[:, :1], background_strength / gamma)], dim=1)
    weights = torch.softmax(logits, dim=1)                                  # [B, P + 1, H, W]
    if patch == 1:
        fg = torch.einsum("bphw,bpc->bchw", weights[:, :-1], colours)
    else:
        # weight_p / A_p, computed without dividing by a vanishing A_p
        per_strength = torch.exp(strength / gamma - torch.logsumexp(logits, dim=1, keepdim=True))
        fg = torch.einsum("bphw,bpchw->bchw", per_strength, painted)
    return fg + weights[:, -1:] * background


# ---------------------------------------------------------------- the structure losses

def scale_gradient(x: torch.Tensor, gain: float) -> torch.Tensor:
    """x unchanged in the forward pass; its gradient times ``gain`` in the backward pass."""
    return x.detach() + gain * (x - x.detach())


def _gained(ps: torch.Tensor, pt: torch.Tensor, gain: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (ps, pt) if gain == 1.0 else (scale_gradient(ps, gain), scale_gradient(pt, gain))


def link_coverages(c: SkeletonConfig, source_maps, target_maps, source_points,
                   target_points, evidence: torch.Tensor | None = None) -> list[torch.Tensor]:
    """delta^f [B, E] of eq. 7 for f = source, target (no gradient). ``evidence`` [B, H, W] in
    [0, 1], when given, replaces the points' pi-bar in both frames (an oracle of the foreground,
    e.g. the true body mask: ``benchmarks/structure_on_points.py --evidence mask``)."""
    return [frame_coverage(c, maps, pts, evidence)
            for pts, maps in ((source_points, source_maps), (target_points, target_maps))]


def frame_coverage(c: SkeletonConfig, maps: torch.Tensor, points: torch.Tensor,
                   evidence: torch.Tensor | None = None) -> torch.Tensor:
    """delta [B, E] of eq. 7 for one frame's maps [B, P, H, W] and points [B, P, 2] (see
    ``link_coverages``)."""
    fg = L.foreground_evidence(maps, c.uniform_pool, c.uniform_evidence) if evidence is None else evidence
    return L.link_coverage(points, fg, c.uniform_tau)


def structure_terms(c: SkeletonConfig, links: torch.Tensor, source_maps: torch.Tensor,
                    target_maps: torch.Tensor, source_points: torch.Tensor,
                    target_points: torch.Tensor, coverage: list | None = None) -> dict[str, torch.Tensor]:
    """Unweighted near, sparse (links, joints), uniform and length terms of links [B, P, P]
    predicted from the source, for location maps [B, P, H, W] and points [B, P, 2] of both
    frames, with the settings of ``c``. Shared by the model and the psi oracle
    (``kpray.skeleton_oracle``), so both train on the same losses."""
    ps, pt = source_points, target_points
    if not c.structure_moves_points:
        ps, pt = ps.detach(), pt.detach()
    sparse_links, sparse_joints = L.sparse_losses(links, c.sparse_p, c.sparse_links_normalise,
                                                 c.sparse_joints_normalise)
    if coverage is None:
        coverage = link_coverages(c, source_maps, target_maps, ps, pt)
    return {
        "near": L.near_loss(links, *_gained(ps, pt, c.near_points_gain), c.near_scale,
                            c.near_temperature, c.near_exclude_endpoints, c.near_endpoint_credit,
                            c.near_max, c.near_margin, c.near_density_sigma),
        "sparse_joints": sparse_joints,
        "sparse_links": sparse_links,
        "uniform": L.uniform_loss(links, coverage, c.uniform_alpha),
        "length": L.length_loss(links, *_gained(ps, pt, c.length_points_gain), c.l_min, c.l_max),
    }


def fit_links_per_sample(c: SkeletonConfig, source_maps, target_maps, source_points, target_points,
                         init_logits: torch.Tensor | None = None, steps: int = 50,
                         lr: float = 0.2) -> torch.Tensor:
    """Link probabilities [B, P, P] that minimise the weighted structure terms of each sample on
    its own (free logits per sample and pair, Adam from ``init_logits`` [B, E] or 0), for fixed
    maps and points (detached). Sample b's optimum does not depend on the other samples, unlike
    psi's, whose shared weights follow the batch's common gradient (docs/benchmarks.md)."""
    with torch.enable_grad():
        maps = [m.detach() for m in (source_maps, target_maps)]
        pts = [q.detach() for q in (source_points, target_points)]
        b, p = pts[0].shape[:2]
        i, j = upper_pairs(p, pts[0].device)
        z = (torch.zeros(b, len(i), device=pts[0].device) if init_logits is None
             else init_logits.detach().clone().clamp(-6, 6)).requires_grad_(True)
        coverage = link_coverages(c, *maps, *pts)
        w = L.effective_weights(c.loss_weights(), 10 ** 9, 0)     # full weights
        opt = torch.optim.Adam([z], lr=lr)

        def links():
            s = z.new_zeros(b, p, p)
            s[:, i, j] = torch.sigmoid(z)
            return s + s.transpose(1, 2)

        for _ in range(steps):
            terms = structure_terms(c, links(), *maps, *pts, coverage=coverage)
            loss = sum(w[k] * v for k, v in terms.items())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return links().detach()


def psi_fit_loss(c: SkeletonConfig, links: torch.Tensor, source_maps, target_maps, source_points,
                 target_points) -> torch.Tensor:
    """``psi_target="fit"``: binary cross-entropy of psi's links [B, P, P] to each sample's own
    minimiser of the structure terms (``fit_links_per_sample``), started from S = 0.5 or, with
    ``psi_fit_init="psi"``, from psi's own logits (clamped to +-3)."""
    i, j = upper_pairs(c.num_points, links.device)
    s = links[:, i, j].clamp(1e-6, 1 - 1e-6)
    if c.psi_fit_init == "psi":
        init = torch.logit(s.detach()).clamp(-3, 3)
    elif c.psi_fit_init == "zero":
        init = None
    else:
        raise ValueError(f"psi_fit_init must be 'psi' or 'zero', got {c.psi_fit_init!r}")
    fit = fit_links_per_sample(c, source_maps, target_maps, source_points, target_points, init,
                               c.psi_fit_steps, c.psi_fit_lr)
    return F.binary_cross_entropy(s, fit[:, i, j])


# ---------------------------------------------------------------- the model

@dataclass
class SkeletonPrediction:
    """points [B, P, 2] normalised; links [B, P, P] probabilities; joint_mask [B, P] bool."""
    points: torch.Tensor
    links: torch.Tensor
    joint_mask: torch.Tensor

    def joints(self, b: int = 0) -> torch.Tensor:
        """The joints of sample b: [J, 2]."""
        return self.points[b][self.joint_mask[b]]


def reliance(mse: torch.Tensor, mse_background: torch.Tensor) -> torch.Tensor:
    """The share of the background's error that the points remove: 1 - mse / mse_background
    (``restart_step``'s signal; near 0 when B paints the body itself)."""
    return 1 - mse / mse_background.clamp_min(1e-12)


def check_config(c: SkeletonConfig) -> None:
    """Raise ValueError for settings the model cannot be built with."""
    for k in ("near_points_gain", "length_points_gain", "rigidity_weight",
              "rigidity_points_gain", "rigidity_start_step", "track_weight", "track_margin",
              "track_start_step", "seek_weight", "seek_from", "seek_until", "sparse_joints_scale",
              "structure_moves_points_from"):
        if not 0 <= getattr(c, k) < float("inf"):
            raise ValueError(f"{k} must be a number >= 0, got {getattr(c, k)}")
    if c.point_readout not in ("argmax", "expected", "tracked"):
        raise ValueError(f"point_readout must be 'argmax', 'expected' or 'tracked', "
                         f"got {c.point_readout!r}")
    if not (isinstance(c.readout_peaks, int) and c.readout_peaks >= 1 and c.readout_motion > 0):
        raise ValueError(f"readout_peaks must be an integer >= 1 and readout_motion > 0, got "
                         f"{c.readout_peaks!r} and {c.readout_motion!r}")
    if c.solver_points not in ("readout", "expected"):
        raise ValueError(f"solver_points must be 'readout' or 'expected', got {c.solver_points!r}")
    if c.transport_patch < 1 or c.transport_patch % 2 == 0:
        raise ValueError(f"transport_patch must be an odd size >= 1, got {c.transport_patch}")
    if c.restart_step < 0 or c.restart_max < 0 or (
            c.restart_step > 0 and not 0 < c.restart_window <= c.restart_step):
        raise ValueError(f"restart_step must be 0 (off) or > 0 with 0 < restart_window <= it, "
                         f"and restart_max >= 0, got {c.restart_step}, {c.restart_window} and "
                         f"{c.restart_max}")


class SkeletonModel(FreshStarts, nn.Module):

    def __init__(self, config: SkeletonConfig):
        super().__init__()
        self.config = c = config
        check_config(c)
        self.pi = UNet(3, c.num_points, c.pi_width, depth=4)   # 32 .. 512 channels at width 32
        self.psi = make_psi(c)
        self.background = BackgroundNet(c.background_width, c.background_latent)
        if c.restart_step > 0:
            self.register_starts()
            # sums over the window of the reconstruction's and the background's per-pixel error
            self.register_buffer("reliance_sums", torch.zeros(2))

    def fresh_copy(self) -> "SkeletonModel":
        """A new model of this config from the global RNG: start k of ``candidate_state``."""
        return SkeletonModel(self.config)

    def gumbel_temperature(self, step: int) -> float:
        c = self.config
        if c.gumbel_anneal_steps <= 0:
            return c.gumbel_tau_start
        f = min(1.0, max(0, step) / c.gumbel_anneal_steps)
        return c.gumbel_tau_start * (c.gumbel_tau_end / c.gumbel_tau_start) ** f

    def term_weights(self, step: int) -> dict[str, float]:
        """The weight at ``step`` of each term ``loss_terms`` returns: the paper's terms (ramped,
        ``L.effective_weights``), then ``psi_fit`` (with ``psi_target="fit"``) and ``rigidity``
        (with ``rigidity_weight`` > 0; 0 before ``rigidity_start_step``)."""
        c = self.config
        w = L.effective_weights(c.loss_weights(), step, c.ramp_steps)
        if c.psi_target == "fit":
            w["psi_fit"] = c.psi_fit_weight
        if c.rigidity_weight > 0:
            w["rigidity"] = c.rigidity_weight if step >= c.rigidity_start_step else 0.0
        if c.track_weight > 0:
            w["track"] = c.track_weight if step - self.began() >= c.track_start_step else 0.0
        if c.seek_weight > 0:
            w["seek"] = c.seek_weight if c.seek_from <= step - self.began() < c.seek_until else 0.0
        return w

    def forward(self, batch, step: int = 0) -> tuple[torch.Tensor, dict]:
        """batch: (source [B, 3, H, W], target [B, 3, H, W]) float in [0, 1], two frames of one
        episode, and optionally a third, the frame next to the source in its video (used where
        ``track`` is weighted at this step). -> (total loss, terms): terms holds every weighted
        loss term (detached, unweighted values), 'gumbel_tau', 'num_links' and 'num_joints'
        (means over the batch) and 'reliance' (``reliance`` of the batch's reconstruction;
        ``restart_step`` sums its two errors over the window before its decision, then decides:
        ``maybe_restart``)."""
        c = self.config
        restarting = c.restart_step > 0 and self.training and \
            int(self.restarts) < c.restart_max + int(c.restart_keep_best)
        if restarting and step == self.began() + c.restart_step:
            self.maybe_restart(step)
        w = self.term_weights(step)        # after a restart: the new start's own step count
        track = batch[2] if len(batch) > 2 and w.get("track") else None   # unweighted: skipped
        out = self.run(batch[0], batch[1], step=step, track=track)
        terms = self.loss_terms(out, batch[1])
        loss = sum(w[k] * terms[k] for k in w if k in terms)
        logs = {k: v.detach() for k, v in terms.items()}
        logs["gumbel_tau"] = torch.tensor(out["tau"])
        with torch.no_grad():
            errors = torch.stack([F.mse_loss(out["reconstruction"], batch[1]),
                                  F.mse_loss(out["background"], batch[1])])
        logs["reliance"] = reliance(*errors)
        if restarting and 0 < self.began() + c.restart_step - step <= c.restart_window:
            self.reliance_sums += errors
        if out["links"] is not None:
            hard = out["links"].detach() >= c.link_threshold
            logs.update(num_links=hard.sum(dim=(1, 2)).float().mean() / 2,
                        num_joints=hard.any(dim=2).sum(dim=1).float().mean())
        return loss, logs

    @torch.no_grad()
    def maybe_restart(self, step: int) -> float:
        """``restart_step``: the reliance of the window's batches (``reliance_sums``, averaged
        over DDP ranks); below ``restart_below``, load the next fresh start in place
        (``FreshStarts.restart``), shelving this one first with ``restart_keep_best``; once no
        restart is left, go back to the shelved start if it scored higher
        (``FreshStarts.return_to_best``). The sums are cleared either way. Returns the
        reliance."""
        c = self.config
        sums = rank_mean(self.reliance_sums)
        r = float(reliance(*sums))
        self.reliance_sums.zero_()
        if not (math.isfinite(r) and r < c.restart_below):
            print_on_rank0(f"step {step}: reliance {r:.3f} >= {c.restart_below:g}; start kept")
        elif int(self.restarts) < c.restart_max:
            if c.restart_keep_best:
                self.shelve(r)
            self.restart(int(self.restarts) + 1, step, f"reliance {r:.3f} < {c.restart_below:g}",
                         c.restart_max)
        elif not self.return_to_best(r, step):
            print_on_rank0(f"step {step}: reliance {r:.3f} < {c.restart_below:g}, no restart "
                           f"left and no better start shelved; start kept")
        return r

    def training_step(self, batch, step: int = 0) -> tuple[torch.Tensor, dict]:
        return self(batch, step=step)

    def run(self, source: torch.Tensor, target: torch.Tensor, step: int = 0,
            track: torch.Tensor | None = None) -> dict:
        """All intermediate quantities of one training pass (for losses, previews, tests).
        track: [B, 3, H, W], the frame next to each source frame in its video; given, pi locates
        its points too ("track_maps", for ``L.track_loss``)."""
        c = self.config
        tau = self.gumbel_temperature(step)
        frames = [source, target] if track is None else [source, target, track]
        logits = self.pi(torch.cat(frames))                                # one pass: shared BN
        maps = gumbel_location_maps(logits, tau, hard=c.gumbel_hard, noise=c.gumbel_noise)
        source_maps, target_maps, *track_maps = maps.chunk(len(frames))
        if self.skips_structure(step):
            links = None
        elif isinstance(self.psi, SolverSkeletonPredictor):   # links that hold in both frames
            links = self.psi(source, source_maps, target_maps)
        else:
            links = self.psi(source, source_maps)
        background = self.background(target)
        recon = neural_point_transport(source, source_maps, target_maps, background,
                                       c.splat_sigma, c.composite_gamma, c.composite_background,
                                       c.transport_patch, c.transport_patch_sigma)
        out = {"tau": tau, "source_maps": source_maps, "target_maps": target_maps,
               "links": links, "background": background, "reconstruction": recon,
               "source_points": expected_location(source_maps),
               "target_points": expected_location(target_maps),
               "moves_points": self.moves_points(step)}
        if track_maps:
            out["track_maps"] = track_maps[0]
        return out

    def skips_structure(self, step: int = 0) -> bool:
        """True while training with ``psi_head="solver"`` and point coordinates cut off from the
        structure terms (no rigidity, or not yet at ``rigidity_start_step``): nothing would learn
        from them (the solver has no weights), so neither the solver nor the terms are computed
        (``run`` gives links None)."""
        c = self.config
        rigid = c.rigidity_weight > 0 and step >= c.rigidity_start_step
        return (self.training and isinstance(self.psi, SolverSkeletonPredictor)
                and not self.moves_points(step) and not rigid)

    def moves_points(self, step: int) -> bool:
        """Whether near and length move the point coordinates at ``step`` (training):
        ``structure_moves_points``, from ``structure_moves_points_from`` steps into the start."""
        c = self.config
        return c.structure_moves_points and step - self.began() >= c.structure_moves_points_from

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms of eqs. (1)-(5) and supplementary (8), keyed as L.LossWeights
        (recon and contiguity only where ``out["links"]`` is None, see ``skips_structure``).
        With ``psi_target="fit"`` also "psi_fit": the binary cross-entropy of psi's links to each
        sample's own minimiser of the structure terms (``fit_links_per_sample``); the structure
        terms then see psi's links detached (they still reach the points if
        ``structure_moves_points``), so only psi_fit trains psi. Where ``run`` was given the
        next frames, also "track" (``L.track_loss``)."""
        c = self.config
        links, maps, pts = out["links"], (out["source_maps"], out["target_maps"]), \
            (out["source_points"], out["target_points"])
        weight = L.edge_weights(target, c.recon_edge_weight) if c.recon_edge_weight else None
        terms = {"recon": L.pyramid_mse(out["reconstruction"], target, c.pyramid_levels,
                                        c.recon_reduction, weight),
                 "contiguity": L.contiguity_loss(*maps, c.contiguity_pool)}
        if "track_maps" in out:
            terms["track"] = L.track_loss(out["source_maps"], out["track_maps"],
                                          c.track_margin * c.image_size / 2)
        if c.seek_weight > 0:
            terms["seek"] = L.seek_loss(out["target_maps"],
                                        (out["background"] - target).pow(2).sum(1), c.seek_cover)
        if links is None:
            return terms
        if c.psi_target == "fit":
            terms["psi_fit"] = psi_fit_loss(c, links, *maps, *pts)
            links = links.detach()
        elif c.psi_target != "loss":
            raise ValueError(f"psi_target must be 'loss' or 'fit', got {c.psi_target!r}")
        held = pts if out["moves_points"] else [q.detach() for q in pts]   # before _from
        terms.update(structure_terms(c, links, *maps, *held))
        if c.rigidity_weight > 0:
            terms["rigidity"] = L.rigidity_loss(links if c.rigidity_trains_psi else links.detach(),
                                                *_gained(*pts, c.rigidity_points_gain))
        return terms

    def configure_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.Adam(self.parameters(), lr=c.lr, betas=c.betas)

    def clip_gradients(self) -> torch.Tensor:
        """Clip by value then by norm (both 1 in the paper); returns the norm before clipping."""
        c = self.config
        if c.grad_clip_value:
            nn.utils.clip_grad_value_(self.parameters(), c.grad_clip_value)
        return nn.utils.clip_grad_norm_(self.parameters(), c.grad_clip_norm or float("inf"))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, video: bool = False,
                link_frame: int | None = None) -> SkeletonPrediction:
        """images: [B, 3, H, W] (or [3, H, W]) -> points at the arg-max of each point's logits
        (or, with point_readout="expected", at the mean of its noise-free map; with "tracked"
        and video, on each point's tracked peak), links from psi fed noise-free location maps
        (softmax at the final temperature), searched by a solver psi on the points returned;
        joints: points with some link >= link_threshold. Call model.eval() first.
        video: the B images are the frames of one video, in order; with psi_head="solver" and
        solver_frames K > 1, every frame then gets the one skeleton found on K of them, spread
        evenly over the video (``SolverSkeletonPredictor.video_links``); with
        solver_track_points, on points relabelled along their tracks (``track_order``), and the
        points returned carry those labels.
        link_frame: the caller reads the links of this frame only (the paper's protocol: one
        frame's skeleton stands for the video); a solver psi then searches on that frame alone
        and every frame gets its links, instead of one search per frame."""
        if images.dim() == 3:
            images = images[None]
        c = self.config
        logits, maps = self.locate(images)
        b, p, h, w = logits.shape
        if video and isinstance(self.psi, SolverSkeletonPredictor) and c.solver_frames > 1:
            if c.solver_track_points:
                order = track_order(self.read_points(logits, maps, video))
                logits, maps = along_tracks(order, logits), along_tracks(order, maps)
            points = self.read_points(logits, maps, video)
            frames = spread_frames(b, c.solver_frames).to(maps.device)
            links = self.psi.video_links(maps[frames], points[frames]).expand(b, p, p)
            return SkeletonPrediction(points, links, (links >= c.link_threshold).any(dim=-1))
        points = self.read_points(logits, maps, video)
        if not isinstance(self.psi, SolverSkeletonPredictor):
            links = self.psi(images, maps)
        elif link_frame is not None:
            t = int(link_frame)
            links = self.psi(images[t:t + 1], maps[t:t + 1], read=points[t:t + 1]).expand(b, p, p)
        else:
            links = self.psi(images, maps, read=points)
        return SkeletonPrediction(points, links, (links >= c.link_threshold).any(dim=-1))

    def read_points(self, logits: torch.Tensor, maps: torch.Tensor, video: bool = False) -> torch.Tensor:
        """pi's logits and noise-free location maps [B, P, H, W] -> points [B, P, 2]
        (normalised) as ``point_readout`` says: the arg-max pixel, the map's mean, or (with
        video: the B frames of one video, in order) each point's tracked peak."""
        c = self.config
        if c.point_readout == "expected":
            return expected_location(maps)
        if c.point_readout == "tracked" and video:
            return tracked_location(maps, c.readout_peaks, c.readout_motion)
        return argmax_location(logits)

    @torch.no_grad()
    def point_reliance(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """How much the reconstruction of target [B, 3, H, W] from source [B, 3, H, W] owes to
        the points (noise-free maps, ``locate``): 'mse', the reconstruction's per-pixel squared
        error; 'mse_background', the background's alone; 'reliance' = 1 - mse / mse_background,
        the share of the background's error that the points remove (near 0 when B paints the
        body itself and the points add nothing). Label-free; uses the current train/eval mode."""
        c = self.config
        source_maps, target_maps = self.locate(torch.cat([source, target]))[1].chunk(2)
        background = self.background(target)
        recon = neural_point_transport(source, source_maps, target_maps, background,
                                       c.splat_sigma, c.composite_gamma, c.composite_background,
                                       c.transport_patch, c.transport_patch_sigma)
        mse, mse_bg = F.mse_loss(recon, target), F.mse_loss(background, target)
        return {"mse": float(mse), "mse_background": float(mse_bg),
                "reliance": float(reliance(mse, mse_bg))}

    @torch.no_grad()
    def locate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] -> (pi's logits, its noise-free location maps at the final
        temperature), [B, P, H, W] each: what ``predict`` reads points and links from."""
        logits = self.pi(images)
        return logits, gumbel_location_maps(logits, self.config.gumbel_tau_end, noise=False)

    @torch.no_grad()
    def predict_points(self, images: torch.Tensor, video: bool = False) -> torch.Tensor:
        """images [B, 3, H, W] -> the points [B, P, 2] of ``predict``, without running psi."""
        return self.read_points(*self.locate(images), video=video)
