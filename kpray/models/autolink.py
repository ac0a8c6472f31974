"""AutoLink (He, Wandt, Rhodin, NeurIPS 2022): keypoints and a shared graph from masked inpainting.

    image [B, 3, 128, 128]
      -> Detector -> heatmaps [B, K, 32, 32] -> soft-argmax -> keypoints [B, K, 2]
      -> edge map with the shared graph weights w_ij = softplus(512 * w_raw_ij): [B, 1, 128, 128]
      -> UNet(alpha * masked image (+) edge map) -> reconstruction [B, 3, 128, 128]
      -> perceptual loss against the image

Coordinates are normalised, x then y, pixel centres at (2 i + 1) / n - 1 (``kpray.ops.coords``).

Training API (shared with ``kpray.models.skeleton``)::

    model = AutoLink(AutoLinkConfig(num_keypoints=16))
    opt = model.configure_optimizer()
    loss, terms = model(images, step=step)   # call the module (a DDP wrapper too), not a method
    loss.backward(); opt.step()

``training_step(batch, step)`` is the same call for an unwrapped model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kpray.losses.autolink import PerceptualLoss
from kpray.models.unet import UNet
from kpray.ops.coords import soft_argmax
from kpray.ops.edge_map import edge_map


@dataclass
class AutoLinkConfig:
    # data
    image_size: int = 128          # paper: all images resized to 128x128
    # keypoints and graph
    num_keypoints: int = 16        # K; paper: 4 to 32 per benchmark (16 for Human3.6M)
    heatmap_size: int = 32         # detector output resolution (official code: 32x32)
    thickness: float = 5e-5        # sigma^2 of exp(-d^2 / sigma^2), normalised units; paper: 5e-5
    edge_weight_scale: float = 512.0  # w = softplus(scale * w_raw): the paper's x512 lr factor
    edge_weight_init: float = 1.0  # initial softplus(scale * w_raw) of every edge (open in paper)
    edge_chunk: int | None = None  # edges per step of the edge map (None: ~16 MiB temporaries)
    # masking
    mask_grid: int = 16            # image divided into grid x grid cells
    mask_ratio: float = 0.8        # fraction of cells masked, per sample: round(ratio * grid^2)
    # networks
    detector_width: int = 64       # channels of the detector's first stage (doubles per stage)
    decoder_width: int = 32        # channels of the UNet's first level (doubles per level)
    decoder_depth: int = 4         # UNet down/up steps (128 -> 8 at depth 4)
    # loss
    perceptual_net: str = "vgg"    # 'vgg' (default, as the official code) or 'alex'
    pretrained: bool = True        # ImageNet backbone for the loss; False only for tests
    # optimisation (paper section 3.3)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    batch_size: int = 64           # global batch
    max_steps: int = 20_000

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- building blocks

class ResBlock(nn.Module):
    """Pre-activation residual block; stride 2 halves the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out
                     else nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x):
        return self.skip(x) + self.body(x)


class Detector(nn.Module):
    """image [B, 3, S, S] -> heatmap logits [B, K, S/4, S/4]: a small residual net going down to
    S/8 and back up once, with a skip from S/4 (the paper's "ResNet with upsampling")."""

    def __init__(self, k: int, width: int = 64):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False),   # S/2
                                  ResBlock(w, w))
        self.down1 = nn.Sequential(ResBlock(w, 2 * w, 2), ResBlock(2 * w, 2 * w))      # S/4
        self.down2 = nn.Sequential(ResBlock(2 * w, 4 * w, 2), ResBlock(4 * w, 4 * w))  # S/8
        self.up = nn.Sequential(ResBlock(4 * w + 2 * w, 2 * w), ResBlock(2 * w, 2 * w))  # S/4
        self.head = nn.Sequential(nn.BatchNorm2d(2 * w), nn.ReLU(), nn.Conv2d(2 * w, k, 1))

    def forward(self, x):
        x4 = self.down1(self.stem(x))
        x8 = self.down2(x4)
        x = torch.cat([x4, F.interpolate(x8, scale_factor=2, mode="bilinear", align_corners=False)], 1)
        return self.head(self.up(x))


def random_grid_mask(b: int, size: int, grid: int = 16, ratio: float = 0.8, device=None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-mask [B, 1, size, size] (1 = visible): the image is cut into grid x grid cells and
    exactly round(ratio * grid^2) cells, drawn independently per sample, are set to 0."""
    n_cells = grid * grid
    n_masked = int(round(ratio * n_cells))
    order = torch.rand(b, n_cells, device=device, generator=generator).argsort(dim=1)
    keep = (order >= n_masked).float()            # a random permutation's first n_masked cells
    keep = keep.view(b, 1, grid, grid)
    return F.interpolate(keep, size=(size, size), mode="nearest")


# ---------------------------------------------------------------- the model

class AutoLink(nn.Module):

    def __init__(self, config: AutoLinkConfig, perceptual: nn.Module | None = None):
        super().__init__()
        self.config = c = config
        k = c.num_keypoints
        self.detector = Detector(k, c.detector_width)
        # The graph, shared by the dataset. Stored divided by edge_weight_scale so that Adam's
        # steps on it are edge_weight_scale times larger (the paper's x512 learning rate).
        init = math.log(math.expm1(c.edge_weight_init)) / c.edge_weight_scale  # softplus^-1
        self.edge_weight_raw = nn.Parameter(torch.full((k, k), init))
        self.alpha = nn.Parameter(torch.ones(()))   # scales the masked image; paper: init 1
        self.decoder = UNet(3 + 1, 3, c.decoder_width, c.decoder_depth, max_mult=8)
        # The frozen loss network is kept out of state_dict/parameters (it is not trained and is
        # large); _apply below still moves it with .to()/.cuda().
        self.__dict__["perceptual"] = perceptual if perceptual is not None else \
            PerceptualLoss(c.perceptual_net, pretrained=c.pretrained)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.perceptual._apply(fn, *args, **kwargs)
        return self

    # -- pieces, each usable on its own

    def edge_weights(self) -> torch.Tensor:
        """The shared graph: [K, K], symmetric, positive off the diagonal, zero on it."""
        w = F.softplus(self.config.edge_weight_scale * self.edge_weight_raw).triu(1)
        return w + w.T

    def detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: [B, 3, S, S] in [0, 1] -> (keypoints [B, K, 2], heatmap logits [B, K, h, h])."""
        heatmaps = self.detector(images)
        return soft_argmax(heatmaps), heatmaps

    def draw_edges(self, keypoints: torch.Tensor) -> torch.Tensor:
        """keypoints: [B, K, 2] -> edge map [B, 1, S, S]."""
        s = self.config.image_size
        return edge_map(keypoints, self.edge_weights(), self.config.thickness, (s, s),
                        chunk=self.config.edge_chunk).unsqueeze(1)

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """images: [B, 3, S, S] -> dict of keypoints, heatmaps, edge_map, mask, reconstruction."""
        c = self.config
        keypoints, heatmaps = self.detect(images)
        edges = self.draw_edges(keypoints)
        mask = random_grid_mask(images.shape[0], c.image_size, c.mask_grid, c.mask_ratio,
                                images.device, generator)
        masked = images * mask
        recon = torch.sigmoid(self.decoder(torch.cat([self.alpha * masked, edges], dim=1)))
        return {"keypoints": keypoints, "heatmaps": heatmaps, "edge_map": edges, "mask": mask,
                "masked": masked, "reconstruction": recon}

    # -- training

    def forward(self, images: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict]:
        """images: [B, 3, S, S] float in [0, 1] -> (loss, terms). `step` is unused (AutoLink has
        no schedule) and kept for a loop shared with the skeleton model. terms: detached
        scalars for logging: 'perceptual' (the loss), 'alpha', 'edge_weight_mean/max'."""
        out = self.reconstruct(images)
        loss = self.perceptual(out["reconstruction"], images)
        w = self.edge_weights().detach()
        k = w.shape[0]
        terms = {"perceptual": loss.detach(), "alpha": self.alpha.detach(),
                 "edge_weight_mean": w.sum() / (k * (k - 1)), "edge_weight_max": w.max()}
        return loss, terms

    def training_step(self, images: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict]:
        return self(images, step=step)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.Adam(self.parameters(), lr=c.lr, betas=c.betas)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict:
        """Inference: keypoints [B, K, 2] and the graph edge weights [K, K]."""
        keypoints, _ = self.detect(images)
        return {"keypoints": keypoints, "edge_weights": self.edge_weights()}
