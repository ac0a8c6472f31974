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

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kpray.losses import skeleton as L
from kpray.models.unet import UNet
from kpray.ops.coords import expected_location, pixel_grid
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
    gumbel_tau_start: float = 1.0   # temperature at step 0 ...
    gumbel_tau_end: float = 0.5     # ... annealed geometrically to this ...
    gumbel_anneal_steps: int = 10_000  # ... over these steps (0: constant gumbel_tau_start)
    gumbel_hard: bool = False       # straight-through one-hot samples instead of soft ones
    gumbel_noise: bool = True       # False: plain tempered softmax in training (no Gumbel sample)
    # psi and B (open: widths)
    psi_width: int = 32
    background_width: int = 32
    background_latent: int = 64
    # neural point transporter (open: splat and compositing constants)
    splat_sigma: float = 0.8        # std (pixels) of the 3x3 Gaussians used to smooth and to splat
    composite_gamma: float = 0.1    # softmax temperature over splat strengths (soft rasteriser)
    composite_background: float = 0.0  # background's "strength"; a full splat (1) beats it by e^10
    # losses (stated: pools, alpha, levels; open: the rest)
    preset: str = "cartpoles"       # row of the paper's weight table: see L.PRESETS
    weights: L.LossWeights | None = None  # overrides the preset's weights when given
    pyramid_levels: int = 5
    contiguity_pool: int = 7        # beta
    uniform_pool: int = 5
    uniform_alpha: float = 0.8
    uniform_tau: float = 1.0        # open: length scale (pixels) of the line mask exp(-d / tau)
    sparse_p: float = 0.5           # open: exponent 0 < p < 1 of the sparsity loss
    sparse_links_normalise: str = "mean"  # open: "mean" over pairs or "sum" (literal eq. 4)
    sparse_joints_normalise: str = "sum"  # open: "sum" over points (literal eq. 4) or "mean"
    near_scale: float = 0.1         # open: unit of d in exp(-d) of the near loss (normalised)
    near_temperature: float = 0.1   # open: softmax temperature of the relaxed max
    near_exclude_endpoints: bool = False  # open: True: a link explains only points other than
                                          # its two endpoints; helps at P = 16, not at P = 32
    structure_moves_points: bool = True  # open: False stops the gradients of near and length at
                                         # the point coordinates (they still reach pi through
                                         # psi's input maps), so they cannot pull points together
    l_min: float = 0.1              # open: shortest plausible link (normalised; 3.2 px at 64)
    l_max: float = 1.0              # open: longest plausible link (normalised; 32 px at 64)
    ramp_steps: int = 10_000        # uniform and sparse weights rise linearly over these steps
    # optimisation
    lr: float = 0.005
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float = 1.0
    grad_clip_value: float = 1.0
    batch_size: int = 8             # pairs, global
    link_threshold: float = 0.5     # a link exists where S >= this (evaluation)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "SkeletonConfig":
        if preset not in L.PRESETS:
            raise ValueError(f"unknown preset {preset!r}; one of {sorted(L.PRESETS)}")
        return cls(preset=preset, **overrides)

    def loss_weights(self) -> L.LossWeights:
        return self.weights if self.weights is not None else L.PRESETS[self.preset]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = self.loss_weights().as_dict()
        return d


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

class SkeletonPredictor(nn.Module):
    """(image [B, 3, H, W], location maps [B, P, H, W]) -> link probabilities S [B, P, P]:
    8 Conv-BN-LeakyReLU (kernels 7, 5, 3, 3, 3, 3, 3, 1; four of them stride 2, 64 -> 4),
    LayerNorm, a fully connected layer to P(P-1)/2 logits, sigmoid, symmetrised."""

    KERNELS = (7, 5, 3, 3, 3, 3, 3, 1)
    STRIDES = (1, 2, 2, 2, 2, 1, 1, 1)

    def __init__(self, p: int, width: int = 32, image_size: int = 64):
        super().__init__()
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

    def forward(self, image, location_maps):
        x = self.conv(torch.cat([image, location_maps], dim=1)).flatten(1)
        s = torch.sigmoid(self.fc(self.norm(x)))                      # [B, E]
        i, j = upper_pairs(self.p, s.device)
        links = s.new_zeros(s.shape[0], self.p, self.p)
        links[:, i, j] = s
        return links + links.transpose(1, 2)


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

def gaussian3x3(sigma: float, peak_one: bool, device=None, dtype=torch.float32) -> torch.Tensor:
    """[3, 3] Gaussian; peak_one: centre = 1 (a splat of full strength), else sums to 1."""
    x = torch.tensor([-1.0, 0.0, 1.0], device=device, dtype=dtype)
    g = torch.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * sigma ** 2))
    return g if peak_one else g / g.sum()


def _conv_each(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of [B, P, H, W] with the same [3, 3] kernel (zero padding)."""
    b, p, h, w = maps.shape
    return F.conv2d(maps.reshape(b * p, 1, h, w), kernel[None, None], padding=1).view(b, p, h, w)


def point_colours(source: torch.Tensor, source_maps: torch.Tensor, sigma: float = 0.8) -> torch.Tensor:
    """c_p: the source colours under each smoothed source location map. source [B, 3, H, W],
    source_maps [B, P, H, W] -> [B, P, 3]."""
    smooth = _conv_each(source_maps, gaussian3x3(sigma, False, source.device, source.dtype))
    total = smooth.sum(dim=(-1, -2)).clamp_min(1e-12)                        # [B, P]
    return torch.einsum("bphw,bchw->bpc", smooth, source) / total.unsqueeze(-1)


def neural_point_transport(source: torch.Tensor, source_maps: torch.Tensor,
                           target_maps: torch.Tensor, background: torch.Tensor,
                           sigma: float = 0.8, gamma: float = 0.1,
                           background_strength: float = 0.0) -> torch.Tensor:
    """NPT(source, pi(source), pi(target)) over a background -> reconstruction [B, 3, H, W].

    Each point p takes colour c_p from the source (``point_colours``) and is splatted at its
    target location: strength A_p = pi_target_p * G (3x3 Gaussian, centre 1). Splats and
    background are composited with a weighted softmax as in the soft rasteriser, the strength
    playing the role of depth: weight_p oc A_p exp(A_p / gamma), weight_bg oc
    exp(background_strength / gamma)."""
    colours = point_colours(source, source_maps, sigma)                     # [B, P, 3]
    strength = _conv_each(target_maps, gaussian3x3(sigma, True, source.device, source.dtype))
    logits = torch.cat([torch.log(strength.clamp_min(1e-10)) + strength / gamma,
                        torch.full_like(strength[:, :1], background_strength / gamma)], dim=1)
    weights = torch.softmax(logits, dim=1)                                  # [B, P + 1, H, W]
    fg = torch.einsum("bphw,bpc->bchw", weights[:, :-1], colours)
    return fg + weights[:, -1:] * background


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


class SkeletonModel(nn.Module):

    def __init__(self, config: SkeletonConfig):
        super().__init__()
        self.config = c = config
        self.pi = UNet(3, c.num_points, c.pi_width, depth=4)   # 32 .. 512 channels at width 32
        self.psi = SkeletonPredictor(c.num_points, c.psi_width, c.image_size)
        self.background = BackgroundNet(c.background_width, c.background_latent)

    def gumbel_temperature(self, step: int) -> float:
        c = self.config
        if c.gumbel_anneal_steps <= 0:
            return c.gumbel_tau_start
        f = min(1.0, max(0, step) / c.gumbel_anneal_steps)
        return c.gumbel_tau_start * (c.gumbel_tau_end / c.gumbel_tau_start) ** f

    def forward(self, batch, step: int = 0) -> tuple[torch.Tensor, dict]:
        """batch: (source [B, 3, H, W], target [B, 3, H, W]) float in [0, 1], two frames of one
        episode. -> (total loss, terms): terms holds every weighted loss term (detached,
        unweighted values), 'gumbel_tau', 'num_links' and 'num_joints' (means over the batch)."""
        out = self.run(*batch, step=step)
        c = self.config
        terms = self.loss_terms(out, batch[1])
        loss = L.total_loss(terms, c.loss_weights(), step, c.ramp_steps)
        logs = {k: v.detach() for k, v in terms.items()}
        hard = out["links"].detach() >= c.link_threshold
        logs.update(gumbel_tau=torch.tensor(out["tau"]),
                    num_links=hard.sum(dim=(1, 2)).float().mean() / 2,
                    num_joints=hard.any(dim=2).sum(dim=1).float().mean())
        return loss, logs

    def training_step(self, batch, step: int = 0) -> tuple[torch.Tensor, dict]:
        return self(batch, step=step)

    def run(self, source: torch.Tensor, target: torch.Tensor, step: int = 0) -> dict:
        """All intermediate quantities of one training pass (for losses, previews, tests)."""
        c = self.config
        tau = self.gumbel_temperature(step)
        logits = self.pi(torch.cat([source, target]))                      # one pass: shared BN
        maps = gumbel_location_maps(logits, tau, hard=c.gumbel_hard, noise=c.gumbel_noise)
        source_maps, target_maps = maps.chunk(2)
        links = self.psi(source, source_maps)
        background = self.background(target)
        recon = neural_point_transport(source, source_maps, target_maps, background,
                                       c.splat_sigma, c.composite_gamma, c.composite_background)
        return {"tau": tau, "source_maps": source_maps, "target_maps": target_maps,
                "links": links, "background": background, "reconstruction": recon,
                "source_points": expected_location(source_maps),
                "target_points": expected_location(target_maps)}

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms of eqs. (1)-(5) and supplementary (8), keyed as L.LossWeights."""
        c = self.config
        s, ps, pt = out["links"], out["source_points"], out["target_points"]
        if not c.structure_moves_points:
            ps, pt = ps.detach(), pt.detach()
        sparse_links, sparse_joints = L.sparse_losses(s, c.sparse_p, c.sparse_links_normalise,
                                                     c.sparse_joints_normalise)
        coverage = [L.link_coverage(pts, L.foreground_evidence(maps, c.uniform_pool), c.uniform_tau)
                    for pts, maps in ((ps, out["source_maps"]), (pt, out["target_maps"]))]
        return {
            "recon": L.pyramid_mse(out["reconstruction"], target, c.pyramid_levels),
            "contiguity": L.contiguity_loss(out["source_maps"], out["target_maps"], c.contiguity_pool),
            "near": L.near_loss(s, ps, pt, c.near_scale, c.near_temperature,
                                c.near_exclude_endpoints),
            "sparse_joints": sparse_joints,
            "sparse_links": sparse_links,
            "uniform": L.uniform_loss(s, coverage, c.uniform_alpha),
            "length": L.length_loss(s, ps, pt, c.l_min, c.l_max),
        }

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
    def predict(self, images: torch.Tensor) -> SkeletonPrediction:
        """images: [B, 3, H, W] (or [3, H, W]) -> points at the arg-max of each point's logits,
        links from psi fed noise-free location maps (softmax at the final temperature), joints:
        points with some link >= link_threshold. Call model.eval() first."""
        if images.dim() == 3:
            images = images[None]
        c = self.config
        logits = self.pi(images)
        b, p, h, w = logits.shape
        maps = gumbel_location_maps(logits, c.gumbel_tau_end, noise=False)
        links = self.psi(images, maps)
        grid = pixel_grid(h, w, images.device, images.dtype)
        points = grid[logits.reshape(b, p, h * w).argmax(-1)]                 # [B, P, 2]
        return SkeletonPrediction(points, links, (links >= c.link_threshold).any(dim=-1))
