"""AutoLink (He, Wandt, Rhodin, NeurIPS 2022): keypoints and a shared graph from masked inpainting.

    image [B, 3, 128, 128] (networks see [-1, 1])
      -> Detector -> heatmaps [B, K, 32, 32] -> soft-argmax -> keypoints [B, K, 2]
      -> edge map with the shared graph weights w_ij = softplus(512 * w_raw_ij): [B, 1, 128, 128]
      -> decoder U-Net(alpha * masked image (+) edge map) -> reconstruction [B, 3, 128, 128]
      -> perceptual loss against the image (official: VGG16 L1; kpray.losses.autolink)

The layout, initialisation and loss follow the official code by default; the fields of
``AutoLinkConfig`` keep our earlier choices reachable (detector='skip', decoder='unet',
init='torch', pixel_range='unit', loss='lpips', edge_init_logit=0.5413 with edge_init_std=0).

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
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from kpray.losses.autolink import build_loss, equivariance_loss
from kpray.models.starts import FreshStarts, print_on_rank0, rank_mean
from kpray.models.unet import UNet
from kpray.ops.coords import soft_argmax
from kpray.ops.edge_map import edge_map
from kpray.ops.transforms import rotate_images


@dataclass
class AutoLinkConfig:
    """Defaults follow the official code (``models/encoder.py``, ``models/decoder.py``,
    ``utils_/loss.py`` of xingzhehe/AutoLink-...); each departure we measured or needed is a field.
    The CPU-scale recipe (`make learn-autolink`, docs/benchmarks.md) departs through fields."""

    # data
    image_size: int = 128          # paper: all images resized to 128x128
    # keypoints and graph
    num_keypoints: int = 16        # K; paper: 4 to 32 per benchmark (16 for Human3.6M)
    heatmap_size: int = 32         # detector output side (official: 32 at 128 px); a power-of-2
    #                                multiple of image_size / 16 for the official detector
    thickness: float = 5e-5        # sigma^2 of exp(-d^2 / sigma^2), normalised units; paper: 5e-5
    edge_weight_scale: float = 512.0  # w = softplus(scale * w_raw): the paper's x512 lr factor
    edge_init_logit: float = -4.0  # softplus argument at init: official -4 + 0.1 N(0, 1), i.e.
    edge_init_std: float = 0.1     # weights ~0.018, random; (0.5413, 0) gives our old all-1.0
    edge_chunk: int | None = None  # edges per step of the edge map (None: ~16 MiB temporaries)
    # masking
    mask_grid: int = 16            # image divided into grid x grid cells
    mask_ratio: float = 0.8        # fraction of cells masked, per sample: round(ratio * grid^2)
    # networks
    detector: str = "official"     # 'official': 4 stride-2 residual blocks down to S/16 (64 ->
    #                                512 channels at width 64), bilinear upsampling blocks to the
    #                                heatmap, LeakyReLU 0.2, no skip. 'skip': our earlier net
    #                                (pre-activation ResNet to S/8, one skip at S/4, ReLU)
    decoder: str = "official"      # 'official': U-Net with bilinear down/upsampling, LeakyReLU 0.2,
    #                                linear 3x3 output. 'unet': the skeleton model's U-Net
    #                                (max-pool, ReLU, sigmoid output)
    detector_width: int = 64       # detector's first stage channels (official 64, doubling)
    decoder_width: int = 64        # decoder's first level channels (official 64, doubling, cap 8x)
    decoder_depth: int = 4         # decoder down/up steps (official 4: 128 -> 8)
    decoder_coords: bool = False   # also feed the decoder x and y coordinate maps (not in the
    #                                official code): position no longer has to come from the
    #                                edge map, so keypoints are not drawn to fixed places
    init: str = "official"         # 'official': Kaiming-normal (a = 0.2) convs, zero bias;
    #                                'torch': PyTorch's default initialisation
    pixel_range: str = "signed"    # networks see images in [-1, 1] (official; masked cells are
    #                                mid-grey) or 'unit': [0, 1] (masked cells black)
    # keypoint hold (not in the official code; 0 = off)
    keypoint_delay_steps: int = 0  # the reconstruction sends zero gradient to the detector for
    #                                the first N steps, so the decoder first learns what the
    #                                masked image alone gives (the plain background) before the
    #                                keypoints move. Without it some initialisations learn early
    #                                to mark the background with edges and keep their keypoints
    #                                off the body (docs/benchmarks.md, "Background removed,
    #                                keypoints held for 250 steps")
    edge_skip: float = 0.0         # the edge map times a scalar, starting at this, is added to
    #                                the decoder's output (network units; 0 = off, as in the
    #                                official code). Whether edges are pulled onto the body or
    #                                off it follows the sign of the decoder's response to them,
    #                                which at the start is random; a positive skip makes edges
    #                                paint brightness, so on a black background they are pulled
    #                                onto the body. Measured: it does, but the keypoints bunch
    #                                along the body's axis and the regression does not improve
    #                                (docs/benchmarks.md, "The sign of the decoder's response to
    #                                the edges"); not used by the recipe
    edge_skip_steps: int = 0       # 0: the scalar is learned; N > 0: it is fixed and falls
    #                                linearly to 0 at step N (after that the decoder alone)
    edge_polarity: bool = False    # at step keypoint_delay_steps (the first step the keypoints
    #                                move), if the decoder's response to the edge map on that
    #                                batch darkens the reconstruction, negate the weights of the
    #                                decoder's first convolution on the edge channel, so that
    #                                edges brighten it (on a black background: are pulled onto the
    #                                body). Not in the official code; False = off. Measured: it
    #                                rescues a walker seed whose response was clearly negative
    #                                and costs one whose response was near zero (same docs
    #                                section); not used by the recipe
    edge_polarity_step: int = -1   # the step at which edge_polarity measures and orients:
    #                                -1 = keypoint_delay_steps (the hold's end, as above); 0 =
    #                                the first step, before any update: then it only picks, of
    #                                the two equally likely signs of the random start (Kaiming
    #                                weights are symmetric), the one whose edges brighten
    init_candidates: int = 1       # K > 1: at step 0, before any update, build K random starts
    #                                (the run's own and K - 1 more, from seeds the run's seed
    #                                fixes), measure each one's edge response on that step's
    #                                batch (as edge_polarity does) and train the one whose edges
    #                                brighten the reconstruction most. Not in the official code;
    #                                1 = off. Measured: the response at step 0 does not predict
    #                                the run (docs/benchmarks.md, "Which start learns")
    restart_step: int = 0          # N > 0: N steps after the current start began (after the
    #                                hold: N > keypoint_delay_steps), if the edge response on
    #                                that step's batch is below restart_below (at 0: the edges
    #                                paint darkness, so on a black background they are pulled
    #                                off the body), the networks restart from a fresh random
    #                                start (candidate_state), the optimiser's moments are cleared
    #                                and the hold begins again; at most restart_max times. The
    #                                steps before a restart count against the run's. Not in the
    #                                official code; 0 = off ("Which start learns")
    restart_max: int = 2
    restart_below: float = 0.0
    init_seed: int | None = None   # the networks' random start from this seed instead of the
    #                                run's (which then only orders the samples and draws the
    #                                masks): separates what the start decides from what the
    #                                sample stream does (docs/benchmarks.md, "Which start learns")
    # rotation equivariance (not in AutoLink, which trains on upright bodies; 0 = off, as in the
    # official code). Bodies that tumble (our zero-gravity walker) give keypoints that slide along
    # the body without a fixed identity; this asks detect(rotate(x)) = rotate(detect(x)) for a
    # random in-plane rotation of each image (kpray.losses.autolink.equivariance_loss)
    equivariance_weight: float = 0.0
    equivariance_max_angle: float = 180.0  # rotation drawn uniformly in +-this, degrees
    equivariance_max_shift: float = 0.0    # and shifted by up to this in x and y (normalised
    #                                        units, 2 = the image side): a shift has no fixed
    #                                        point, so keypoints at the centre no longer satisfy it
    equivariance_normalise: bool = False   # divide by the keypoints' spread (collapse no longer
    #                                        pays; kpray.losses.autolink.equivariance_loss)
    equivariance_ramp_steps: int = 0       # weight rises linearly from 0 over these steps, so
    #                                        that reconstruction spreads the keypoints first
    #                                        (from step 0 the term pulls them to the centre)
    # loss (kpray.losses.autolink)
    loss: str = "vgg"              # 'vgg' (official: VGG16 L1), 'lpips', 'pixel_grad', 'laplacian'
    perceptual_net: str = "vgg"    # LPIPS backbone: 'vgg' or 'alex' (loss='lpips' only)
    perceptual_weights: str | None = None  # VGG16 state dict file (default: TORCH_HOME's)
    perceptual_resize: int = 224   # inputs resized to this side before VGG (official 224; 0 none)
    pretrained: bool = True        # ImageNet backbone for vgg/lpips; False: random, fixed seed
    # optimisation (paper section 3.3; official code: AdamW, weight decay 1e-3)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-3     # AdamW's decoupled decay (official); 0 gives the paper's Adam
    batch_size: int = 64           # global batch
    max_steps: int = 20_000

    def to_dict(self) -> dict:
        return asdict(self)


DETECTORS = ("official", "skip")
DECODERS = ("official", "unet")
INITS = ("official", "torch")
PIXEL_RANGES = ("signed", "unit")


def check_config(c: AutoLinkConfig) -> None:
    """ValueError with one line for a config the networks cannot be built from."""
    from kpray.losses.autolink import LOSS_KINDS

    for name, val, allowed in (("detector", c.detector, DETECTORS), ("decoder", c.decoder, DECODERS),
                               ("init", c.init, INITS), ("pixel_range", c.pixel_range, PIXEL_RANGES),
                               ("loss", c.loss, LOSS_KINDS)):
        if val not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {val!r}")
    s, h = c.image_size, c.heatmap_size
    if c.detector == "official":
        base = s // 16                            # the detector's coarsest side
        if not (s % 16 == 0 and h <= s and h % base == 0 and (h // base) & (h // base - 1) == 0):
            raise ValueError(f"heatmap_size {h} must be image_size/16 = {s / 16:g} times a power of 2, "
                             f"at most image_size {s} (official detector)")
    elif h != s // 4:
        raise ValueError(f"the 'skip' detector gives image_size/4 = {s // 4} heatmaps, not "
                         f"heatmap_size {h}")
    if c.equivariance_weight < 0 or not 0 <= c.equivariance_max_angle <= 180 \
            or c.equivariance_ramp_steps < 0 or not 0 <= c.equivariance_max_shift < 2:
        raise ValueError(f"equivariance_weight and equivariance_ramp_steps must be >= 0, "
                         f"equivariance_max_angle in [0, 180] and equivariance_max_shift in "
                         f"[0, 2), got {c.equivariance_weight}, {c.equivariance_ramp_steps}, "
                         f"{c.equivariance_max_angle} and {c.equivariance_max_shift}")
    if c.keypoint_delay_steps < 0:
        raise ValueError(f"keypoint_delay_steps must be >= 0, got {c.keypoint_delay_steps}")
    if c.init_candidates < 1:
        raise ValueError(f"init_candidates must be >= 1, got {c.init_candidates}")
    if c.restart_step < 0 or c.restart_max < 0 or (0 < c.restart_step <= c.keypoint_delay_steps):
        raise ValueError(f"restart_step must be 0 (off) or > keypoint_delay_steps "
                         f"({c.keypoint_delay_steps}), and restart_max >= 0, got {c.restart_step} "
                         f"and {c.restart_max}")
    if c.edge_polarity_step < -1:
        raise ValueError(f"edge_polarity_step must be >= -1 (-1: at keypoint_delay_steps), got "
                         f"{c.edge_polarity_step}")
    if not math.isfinite(c.edge_skip) or c.edge_skip_steps < 0:
        raise ValueError(f"edge_skip must be a finite number and edge_skip_steps >= 0, got "
                         f"{c.edge_skip} and {c.edge_skip_steps}")
    if s % (2 ** c.decoder_depth):
        raise ValueError(f"image_size {s} must be divisible by 2^decoder_depth = {2 ** c.decoder_depth}")


# ---------------------------------------------------------------- building blocks

def _lrelu():
    return nn.LeakyReLU(0.2, inplace=True)


def _half(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


def _double(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Half(nn.Module):
    def forward(self, x):
        return _half(x)


class Double(nn.Module):
    def forward(self, x):
        return _double(x)


class DownResBlock(nn.Module):
    """Official detector block: [B, c_in, H, W] -> [B, c_out, H/2, W/2]; two 3x3 convs with a
    bilinear halving after the first, a conv + halving shortcut, LeakyReLU 0.2 after the sum."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.res = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), Half(), nn.BatchNorm2d(c_out))
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), Half(), nn.BatchNorm2d(c_out),
                                  _lrelu(), nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out))
        self.act = _lrelu()

    def forward(self, x):
        return self.act(self.body(x) + self.res(x))


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Official detector upsampling: bilinear x2, 3x3 conv, BatchNorm, LeakyReLU 0.2."""
    return nn.Sequential(Double(), nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), _lrelu())


class OfficialDetector(nn.Module):
    """image [B, 3, S, S] -> heatmap logits [B, K, h, h]: 4 DownResBlocks (S -> S/16, widths w,
    2w, 4w, 8w), then upsampling blocks halving the channels until side h, a 3x3 conv to K."""

    def __init__(self, k: int, width: int, image_size: int, heatmap_size: int):
        super().__init__()
        w = width
        layers = [DownResBlock(3, w), DownResBlock(w, 2 * w), DownResBlock(2 * w, 4 * w),
                  DownResBlock(4 * w, 8 * w)]
        c, side = 8 * w, image_size // 16
        while side < heatmap_size:
            half = max(c // 2, 1)
            layers.append(up_block(c, half))
            c, side = half, side * 2
        layers.append(nn.Conv2d(c, k, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ResBlock(nn.Module):
    """Pre-activation residual block; stride 2 halves the resolution ('skip' detector)."""

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


class SkipDetector(nn.Module):
    """image [B, 3, S, S] -> heatmap logits [B, K, S/4, S/4]: a small residual net going down to
    S/8 and back up once, with a skip from S/4 (our first reading of "ResNet with upsampling")."""

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
        x = torch.cat([x4, _double(x8)], 1)
        return self.head(self.up(x))


def _double_conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), _lrelu(),
            nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out)]


class OfficialDecoder(nn.Module):
    """[B, c_in, S, S] -> [B, 3, S, S], linear output: a 3x3 conv + LeakyReLU at S, `depth`
    down blocks (two convs, bilinear halving; widths 2w, 4w, ... capped at 8w), `depth` up blocks
    (bilinear doubling, two convs) each followed by a concat with the skip of its side, a 3x3
    conv to 3 channels."""

    def __init__(self, c_in: int, width: int = 64, depth: int = 4):
        super().__init__()
        ch = [min(width * 2 ** d, 8 * width) for d in range(depth + 1)]   # 64,128,256,512,512
        self.down0 = nn.Sequential(nn.Conv2d(c_in, ch[0], 3, 1, 1), _lrelu())
        self.downs = nn.ModuleList(nn.Sequential(*_double_conv(ch[d], ch[d + 1]), Half(), _lrelu())
                                   for d in range(depth))
        ups, c = [], ch[depth]
        for d in reversed(range(depth)):          # up block to side S / 2^d, out channels ch[d]
            ups.append(nn.Sequential(Double(), *_double_conv(c, ch[d]), _lrelu()))
            c = 2 * ch[d]                         # after the concat with the skip
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.down0(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = torch.cat([up(x), skips.pop()], dim=1)
        return self.out(x)


def official_init_(module: nn.Module) -> None:
    """Kaiming-normal (a = 0.2) weights and zero biases for every conv and linear (official)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0.2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


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

class AutoLink(FreshStarts, nn.Module):

    def __init__(self, config: AutoLinkConfig, perceptual: nn.Module | None = None):
        super().__init__()
        check_config(config)
        self.config = config
        if config.init_seed is None:
            self._build(perceptual)
        else:                                  # the start from its own seed; the run's RNG untouched
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.init_seed)
                self._build(perceptual)

    def _build(self, perceptual: nn.Module | None) -> None:
        c = self.config
        k = c.num_keypoints
        if c.detector == "official":
            self.detector = OfficialDetector(k, c.detector_width, c.image_size, c.heatmap_size)
        else:
            self.detector = SkipDetector(k, c.detector_width)
        c_in = 3 + 1 + (2 if c.decoder_coords else 0)
        if c.decoder == "official":
            self.decoder = OfficialDecoder(c_in, c.decoder_width, c.decoder_depth)
        else:
            self.decoder = UNet(c_in, 3, c.decoder_width, c.decoder_depth, max_mult=8)
        if c.init == "official":
            official_init_(self.detector)
            official_init_(self.decoder)
        # The graph, shared by the dataset. Stored divided by edge_weight_scale so that Adam's
        # steps on it are edge_weight_scale times larger (the paper's x512 learning rate).
        logits = c.edge_init_logit + c.edge_init_std * torch.randn(k, k)
        self.edge_weight_raw = nn.Parameter(logits / c.edge_weight_scale)
        self.alpha = nn.Parameter(torch.ones(()))   # scales the masked image; paper: init 1
        if c.edge_skip != 0 and c.edge_skip_steps == 0:   # only then: old checkpoints load
            self.edge_skip = nn.Parameter(torch.tensor(float(c.edge_skip)))
        if c.edge_polarity:                                # -1 once the edge channel is negated
            self.register_buffer("edge_sign", torch.ones(()))
        if c.init_candidates > 1 or c.restart_step > 0:   # kpray.models.starts
            self.register_starts(chosen=c.init_candidates == 1)
        # The frozen loss network is kept out of state_dict/parameters (it is not trained and is
        # large); _apply below still moves it with .to()/.cuda(). Every rank builds the same one
        # (random backbones come from a fixed seed: kpray.losses.autolink).
        self.__dict__["perceptual"] = perceptual if perceptual is not None else build_loss(
            c.loss, c.perceptual_net, c.pretrained, c.perceptual_weights, c.perceptual_resize)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.perceptual._apply(fn, *args, **kwargs)
        return self

    # -- pieces, each usable on its own

    def edge_weights(self) -> torch.Tensor:
        """The shared graph: [K, K], symmetric, positive off the diagonal, zero on it."""
        w = F.softplus(self.config.edge_weight_scale * self.edge_weight_raw).triu(1)
        return w + w.T

    def to_net(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the networks' pixel range (``pixel_range``)."""
        return images * 2 - 1 if self.config.pixel_range == "signed" else images

    def from_net(self, x: torch.Tensor) -> torch.Tensor:
        """The networks' pixel range -> [0, 1] units (not clamped)."""
        return (x + 1) / 2 if self.config.pixel_range == "signed" else x

    def detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: [B, 3, S, S] in [0, 1] -> (keypoints [B, K, 2], heatmap logits [B, K, h, h])."""
        heatmaps = self.detector(self.to_net(images))
        return soft_argmax(heatmaps), heatmaps

    def draw_edges(self, keypoints: torch.Tensor) -> torch.Tensor:
        """keypoints: [B, K, 2] -> edge map [B, 1, S, S]."""
        s = self.config.image_size
        return edge_map(keypoints, self.edge_weights(), self.config.thickness, (s, s),
                        chunk=self.config.edge_chunk).unsqueeze(1)

    def edge_skip_at(self, step: int | None = None):
        """The edge skip's scalar (``edge_skip``) at ``step``: the learned parameter, or the fixed
        schedule edge_skip * max(0, 1 - step / edge_skip_steps) (step None: the schedule's end)."""
        c = self.config
        if c.edge_skip == 0:
            return 0.0
        if c.edge_skip_steps == 0:
            return self.edge_skip
        return 0.0 if step is None else c.edge_skip * max(0.0, 1 - step / c.edge_skip_steps)

    def decode(self, masked: torch.Tensor, edges: torch.Tensor,
               step: int | None = None) -> torch.Tensor:
        """masked image [B, 3, S, S] in the networks' range, edge map [B, 1, S, S] ->
        reconstruction [B, 3, S, S] in [0, 1] units (sigmoid for 'unet', linear for 'official')."""
        parts = [self.alpha * masked, edges]
        if self.config.decoder_coords:
            b, _, h, w = masked.shape
            ys = torch.linspace(-1, 1, h, device=masked.device, dtype=masked.dtype)
            xs = torch.linspace(-1, 1, w, device=masked.device, dtype=masked.dtype)
            parts += [xs.view(1, 1, 1, w).expand(b, 1, h, w), ys.view(1, 1, h, 1).expand(b, 1, h, w)]
        out = self.decoder(torch.cat(parts, dim=1))
        if self.config.edge_skip != 0:
            out = out + self.edge_skip_at(step) * edges
        return torch.sigmoid(out) if self.config.decoder == "unet" else self.from_net(out)

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None,
                    mask: torch.Tensor | None = None, hold_keypoints: bool = False,
                    step: int | None = None) -> dict:
        """images: [B, 3, S, S] in [0, 1] -> dict of keypoints, heatmaps, edge_map, mask, masked
        (in [0, 1] units, for display), reconstruction ([0, 1] units). ``mask`` [B, 1, S, S]
        (1 = visible) replaces the random one when given. ``hold_keypoints``: the loss sends
        zero gradient to the detector (zero, not none, so DDP sees every parameter used)."""
        c = self.config
        keypoints, heatmaps = self.detect(images)
        if hold_keypoints:
            keypoints = keypoints.detach() + 0 * keypoints
        edges = self.draw_edges(keypoints)
        if mask is None:
            mask = random_grid_mask(images.shape[0], c.image_size, c.mask_grid, c.mask_ratio,
                                    images.device, generator)
        masked = self.to_net(images) * mask
        recon = self.decode(masked, edges, step)
        return {"keypoints": keypoints, "heatmaps": heatmaps, "edge_map": edges, "mask": mask,
                "masked": self.from_net(masked), "reconstruction": recon}

    # -- training

    def forward(self, images: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict]:
        """images: [B, 3, S, S] float in [0, 1] -> (loss, terms). `step` only holds the keypoints
        (``keypoint_delay_steps``) and ramps the optional equivariance term (AutoLink itself has
        no schedule). terms: detached
        scalars for logging: 'perceptual' (the loss), 'alpha', 'edge_weight_mean/max',
        'keypoint_spread' (mean distance between an image's keypoints, normalised units: 2 is
        the image side)."""
        if self.config.init_candidates > 1 and self.training and step == 0:
            self.choose_start(images)
        c = self.config
        if c.restart_step > 0 and self.training and int(self.restarts) < c.restart_max \
                and step == self.began() + c.restart_step:
            self.maybe_restart(images, step)
        if c.edge_polarity and self.training and step == self.began() + self.edge_polarity_at():
            self.orient_edges(images, step)
        out = self.reconstruct(images, hold_keypoints=step < self.began() + c.keypoint_delay_steps,
                               step=step)
        loss = self.perceptual(out["reconstruction"], images)
        w = self.edge_weights().detach()
        k = w.shape[0]
        terms = {"perceptual": loss.detach(), "alpha": self.alpha.detach(),
                 "edge_weight_mean": w.sum() / (k * (k - 1)), "edge_weight_max": w.max(),
                 "keypoint_spread": keypoint_spread(out["keypoints"].detach())}
        if self.config.equivariance_weight > 0:
            eq = self.equivariance(images, out["keypoints"])
            terms["equivariance"] = eq.detach()
            loss = loss + self.equivariance_weight_at(step) * eq
        return loss, terms

    @torch.no_grad()
    def maybe_restart(self, images: torch.Tensor, step: int) -> float:
        """``restart_step``: measure the edge response on ``images`` [B, 3, S, S]
        (``mean_edge_response``, the same on every rank); if it is below ``restart_below``, load
        the next fresh start (``candidate_state(init_candidates + restarts)``) in place, count
        the restart and set ``start_step``, ``init_choice`` and ``restarted_at`` to ``step``.
        Returns the response."""
        c = self.config
        r = self.mean_edge_response(images, step)
        if torch.isfinite(r) and r < c.restart_below:
            self.restart(c.init_candidates + int(self.restarts), step,
                         f"edge response {float(r):+.3f} < {c.restart_below:g}", c.restart_max)
        return float(r)

    def edge_polarity_at(self) -> int:
        """The training step at which ``edge_polarity`` orients the edge channel."""
        c = self.config
        return c.keypoint_delay_steps if c.edge_polarity_step < 0 else c.edge_polarity_step

    @torch.no_grad()
    def mean_edge_response(self, images: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The edge response (``edge_map_reliance``, in eval mode, masks seeded by ``step``) on
        ``images`` [B, 3, S, S], averaged over DDP ranks so that every rank decides alike; a
        0-d tensor."""
        was = self.training
        self.eval()
        r = torch.tensor(self.edge_map_reliance(images, seed=step or 0, step=step)["edge_response"],
                         device=images.device)
        self.train(was)
        return rank_mean(r)

    @torch.no_grad()
    def orient_edges(self, images: torch.Tensor, step: int | None = None) -> float:
        """``edge_polarity``: measure the edge response on ``images`` [B, 3, S, S]
        (``mean_edge_response``); if it is negative, negate the decoder's first convolution's
        weights on the edge channel (its first-order response changes sign) and flip
        ``edge_sign``. Returns the response before. Adam's moments for those weights keep their
        sign and fade within ~10 steps."""
        r = self.mean_edge_response(images, step)
        if torch.isfinite(r) and r < 0:
            first = next(m for m in self.decoder.modules() if isinstance(m, nn.Conv2d))
            first.weight[:, 3] *= -1                   # input channels: image (3), edges, coords
            self.edge_sign *= -1
        return float(r)

    def fresh_copy(self) -> "AutoLink":
        """A new AutoLink of this config from the global RNG (``init_seed`` ignored), sharing the
        frozen loss network: start k of ``candidate_state`` (kpray.models.starts)."""
        return AutoLink(replace(self.config, init_seed=None), perceptual=self.perceptual)

    @torch.no_grad()
    def choose_start(self, images: torch.Tensor) -> list[float]:
        """``init_candidates``: measure the edge response of each of the K starts on ``images``
        [B, 3, S, S] (``mean_edge_response``; the same on every rank) and load the one with
        the largest (the first on ties and NaN) into this model, in place (so an optimiser and
        DDP built on it still hold its parameters). Sets ``init_choice``; returns the K
        responses."""
        best_state = {n: t.detach().clone() for n, t in self.state_dict().items()}
        responses = [float(self.mean_edge_response(images, 0))]
        best, best_r = 0, responses[0] if math.isfinite(responses[0]) else -math.inf
        for k in range(1, self.config.init_candidates):
            state = self.candidate_state(k)
            self.load_state_dict(state)
            responses.append(float(self.mean_edge_response(images, 0)))
            if math.isfinite(responses[-1]) and responses[-1] > best_r:   # first on ties
                best, best_r, best_state = k, responses[-1], state
        self.load_state_dict(best_state)
        self.init_choice.fill_(best)
        print_on_rank0(f"init_candidates: edge responses {', '.join(f'{r:+.3f}' for r in responses)}"
                        f"; training start {best}")
        return responses

    def equivariance_weight_at(self, step: int) -> float:
        """``equivariance_weight`` times min(1, step / ``equivariance_ramp_steps``)."""
        c = self.config
        ramp = min(1.0, step / c.equivariance_ramp_steps) if c.equivariance_ramp_steps > 0 else 1.0
        return c.equivariance_weight * ramp

    def equivariance(self, images: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """:func:`kpray.losses.autolink.equivariance_loss` of the detector on ``images``
        [B, 3, S, S] (keypoints [B, K, 2] already detected on them), each image rotated by an
        angle drawn uniformly in +-``equivariance_max_angle`` degrees and shifted by up to
        ``equivariance_max_shift`` in x and y (global RNG)."""
        c = self.config
        b = images.shape[0]
        angles = (torch.rand(b, device=images.device) * 2 - 1) * math.radians(c.equivariance_max_angle)
        shifts = None
        if c.equivariance_max_shift > 0:
            shifts = (torch.rand(b, 2, device=images.device) * 2 - 1) * c.equivariance_max_shift
        rotated, _ = self.detect(rotate_images(images, angles, shifts=shifts))
        return equivariance_loss(rotated, keypoints, angles, shifts, normalise=c.equivariance_normalise)

    def training_step(self, images: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict]:
        return self(images, step=step)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(self.parameters(), lr=c.lr, betas=c.betas,
                                 weight_decay=c.weight_decay)

    @torch.no_grad()
    def edge_map_reliance(self, images: torch.Tensor, seed: int = 0,
                          step: int | None = None) -> dict:
        """How much the decoder uses the edge map: the loss on ``images`` [B, 3, S, S] with the
        edge map as drawn and with it zeroed, on the same masks (seeded). Returns floats
        ``loss``, ``loss_no_edges``, ``edge_reliance`` = loss_no_edges / loss - 1 (0 when the
        decoder ignores the edges; the edge skip counts as use) and ``edge_response``: the
        least-squares slope of the change the edges make to the reconstruction's brightness
        ([0, 1] units, channel mean) on the edge map's value, over all pixels (NaN for an empty
        edge map). Its sign says whether edges paint brightness (on a black background: pulled
        onto the body) or darkness (pushed off it). ``step``: of the edge skip's schedule.
        Runs in the module's current mode."""
        g = torch.Generator(device=images.device).manual_seed(seed)
        out = self.reconstruct(images, generator=g, step=step)
        loss = self.perceptual(out["reconstruction"], images)
        blank = self.decode(self.to_net(images) * out["mask"], torch.zeros_like(out["edge_map"]),
                            step)
        loss0 = self.perceptual(blank, images)
        e = out["edge_map"][:, 0]                                          # [B, S, S]
        change = (out["reconstruction"] - blank).mean(1)                   # [B, S, S]
        e2 = (e * e).sum()
        response = (change * e).sum() / e2 if e2 > 0 else torch.tensor(math.nan)
        return {"loss": float(loss), "loss_no_edges": float(loss0),
                "edge_reliance": float(loss0 / loss.clamp_min(1e-12) - 1),
                "edge_response": float(response)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict:
        """Inference: keypoints [B, K, 2] and the graph edge weights [K, K]."""
        keypoints, _ = self.detect(images)
        return {"keypoints": keypoints, "edge_weights": self.edge_weights()}


def keypoint_spread(keypoints: torch.Tensor) -> torch.Tensor:
    """keypoints [B, K, 2] -> scalar: mean over images of the mean distance between an image's
    K (K - 1) / 2 keypoint pairs, in the keypoints' units."""
    k = keypoints.shape[1]
    d = torch.cdist(keypoints.float(), keypoints.float())            # [B, K, K]
    return d.sum(dim=(1, 2)).mean() / max(1, k * (k - 1))
