"""AutoLink's one loss: a distance between the image and its reconstruction (eq. 6).

Every loss here takes ``(pred [B, 3, H, W], target [B, 3, H, W])`` in [0, 1] (``pred`` may leave
the range: the official decoder's output is linear) and returns a scalar, the mean over the batch.
``build_loss(kind, ...)`` picks one:

- ``"vgg"`` (default, the official code's ``utils_/loss.py``): L1 between VGG16 features at
  relu1_2, relu2_2, relu3_3 and relu4_3, each layer's mean absolute difference, summed with equal
  weights; inputs normalised with ImageNet's mean and std and resized to ``resize`` (224) first.
  Its backbone needs ImageNet weights: ``weights=PATH`` (a torchvision VGG16 state dict, whole
  model or ``features`` only), else torchvision's file under ``$TORCH_HOME/hub/checkpoints/``.
  This machine cannot download it: a missing or unfitting file is a one-line error naming it.
- ``"lpips"``: the LPIPS distance (``lpips`` package, 5 layers, learned per-channel weights,
  squared differences; backbone ``net`` 'vgg' or 'alex'). Our earlier default.
- ``"pixel_grad"``: no downloaded weights. L1 on pixels plus L1 on the images' horizontal and
  vertical finite differences (so thin limbs and edges count, where MSE would blur them).
- ``"laplacian"``: no downloaded weights. L1 between Laplacian pyramids (5 levels), each level
  weighted 2^level so that coarse levels are not drowned by the fine ones' many pixels.

``pretrained=False`` gives "vgg" and "lpips" a random backbone. It is drawn from a fixed seed
(``RANDOM_BACKBONE_SEED``) whatever the global RNG, so that every DDP rank optimises the same
loss (the loss network is outside the model's state dict and DDP does not sync it), and LPIPS's
linear calibration, fitted to ImageNet features, is dropped (plain channel-normalised distance).
A random backbone is for tests and CPU-scale runs, not for the paper's numbers.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from kpray.ops.transforms import rotate_points

LOSS_KINDS = ("vgg", "lpips", "pixel_grad", "laplacian")
# torchvision's file names for the ImageNet backbones.
BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
_URL = "https://download.pytorch.org/models/"
RANDOM_BACKBONE_SEED = 0
# VGG16 ``features`` slices ending at relu1_2, relu2_2, relu3_3, relu4_3 (official code).
VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_weights_path(net: str) -> str:
    """Where torchvision expects the ImageNet weights of `net` ('vgg' or 'alex')."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", BACKBONE_FILES[net])


def missing_weights_message(net: str, path: str) -> str:
    return (f"the perceptual loss needs the ImageNet weights of its {net} backbone: no file "
            f"{path} (this machine cannot download {_URL}{BACKBONE_FILES[net]}; copy it there, "
            f"set TORCH_HOME to a folder with hub/checkpoints/{BACKBONE_FILES[net]}, give "
            f"--perceptual-weights PATH, or use a loss without weights: --loss pixel_grad)")


class _Frozen(nn.Module):
    """Frozen, always in eval mode, whatever its owner's mode."""

    def _freeze(self):
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)


def vgg16_features(weights: str | None, pretrained: bool) -> nn.Sequential:
    """VGG16 ``features[:23]`` (up to relu4_3): from the state dict file ``weights`` (whole
    torchvision model or ``features`` only), else torchvision's cached ImageNet file, else (only
    when ``pretrained`` is False) random from ``RANDOM_BACKBONE_SEED``. FileNotFoundError /
    ValueError with one line naming the file when it is missing or does not fit."""
    from torchvision.models import vgg16

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_BACKBONE_SEED)
        features = vgg16(weights=None).features[:23]
    if weights is None and not pretrained:
        return features
    path = weights if weights is not None else backbone_weights_path("vgg")
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_weights_message("vgg", path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one line
        raise ValueError(f"cannot read VGG16 weights {path}: {type(e).__name__}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"VGG16 weights {path} is not a state dict")
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()
             if not k.startswith("classifier.")}
    state = {k: v for k, v in state.items() if int(k.split(".")[0]) < 23}
    try:
        features.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"VGG16 weights {path} do not fit torchvision's VGG16 features: {first}") from None
    return features


class VGGPerceptualLoss(_Frozen):
    """The official AutoLink loss (module docstring): sum over relu1_2..relu4_3 of the mean |f(x) -
    f(y)|. ``resize``: side the inputs are resized to (bilinear) before VGG, 0 for none."""

    def __init__(self, weights: str | None = None, pretrained: bool = True, resize: int = 224):
        super().__init__()
        features = vgg16_features(weights, pretrained)
        self.blocks = nn.ModuleList(features[a:b] for a, b in VGG_SLICES)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.resize = resize
        self._freeze()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pred, target]).sub(self.mean).div(self.std)
        if self.resize and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        loss = x.new_zeros(())
        b = pred.shape[0]
        for block in self.blocks:
            x = block(x)
            loss = loss + (x[:b] - x[b:]).abs().mean()
        return loss


class LPIPSLoss(_Frozen):
    """LPIPS distance (``lpips`` package), mean over the batch. With ``pretrained`` False the
    backbone is random (fixed seed) and the linear calibration is off."""

    def __init__(self, net: str = "vgg", pretrained: bool = True):
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"perceptual net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        if pretrained and not os.path.isfile(backbone_weights_path(net)):
            raise FileNotFoundError(missing_weights_message(net, backbone_weights_path(net)))
        import lpips  # imported here: it builds torchvision models, slow to import

        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            torch.manual_seed(RANDOM_BACKBONE_SEED)
            self.lpips = lpips.LPIPS(net=net, pretrained=pretrained, lpips=pretrained,
                                     pnet_rand=not pretrained, verbose=False)
        self.net, self.pretrained = net, pretrained
        self._freeze()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(pred, target, normalize=True).mean()    # normalize: [0,1] -> [-1,1]


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, C, H, W] -> (d/dx [B, C, H, W-1], d/dy [B, C, H-1, W]): forward differences."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


class PixelGradientLoss(nn.Module):
    """mean |x - y| + mean |dx(x) - dx(y)| + mean |dy(x) - dy(y)| (no weights to download)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        (px, py), (tx, ty) = image_gradients(pred), image_gradients(target)
        return ((pred - target).abs().mean() + (px - tx).abs().mean() + (py - ty).abs().mean())


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """x [B, C, H, W] -> ``levels`` band-pass images (finest first; the last is the low-pass
    residual): each level is x minus its 2x average-pooled, bilinearly upsampled self."""
    out = []
    for _ in range(levels - 1):
        if min(x.shape[-2:]) < 2:
            break
        low = F.avg_pool2d(x, 2)
        out.append(x - F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False))
        x = low
    out.append(x)
    return out


class LaplacianLoss(nn.Module):
    """sum over levels l of 2^l * mean |L_l(x) - L_l(y)| (no weights to download)."""

    def __init__(self, levels: int = 5):
        super().__init__()
        self.levels = levels

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = pred.new_zeros(())
        for lvl, (a, b) in enumerate(zip(laplacian_pyramid(pred, self.levels),
                                         laplacian_pyramid(target, self.levels))):
            loss = loss + 2.0 ** lvl * (a - b).abs().mean()
        return loss


def build_loss(kind: str = "vgg", net: str = "vgg", pretrained: bool = True,
               weights: str | None = None, resize: int = 224) -> nn.Module:
    """The reconstruction loss ``kind`` (one of ``LOSS_KINDS``; module docstring)."""
    if kind == "vgg":
        return VGGPerceptualLoss(weights, pretrained, resize)
    if kind == "lpips":
        return LPIPSLoss(net, pretrained)
    if kind == "pixel_grad":
        return PixelGradientLoss()
    if kind == "laplacian":
        return LaplacianLoss()
    raise ValueError(f"loss must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")


def PerceptualLoss(net: str = "vgg", pretrained: bool = True) -> nn.Module:  # noqa: N802
    """The LPIPS loss under its earlier name (kept for callers of the old API)."""
    return LPIPSLoss(net, pretrained)


def equivariance_loss(keypoints_of_rotated: torch.Tensor, keypoints: torch.Tensor,
                      angles: torch.Tensor, shifts: torch.Tensor | None = None,
                      normalise: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """Rotation equivariance of a keypoint detector (not in AutoLink; an option of ours, see
    ``AutoLinkConfig.equivariance_weight``): the mean over images and keypoints of the squared
    distance between the keypoints found on the rotated image, ``keypoints_of_rotated``
    [B, K, 2], and the original keypoints rotated, ``R(angles) keypoints`` ([B, K, 2] and [B]
    radians; normalised units, :mod:`kpray.ops.transforms`), then shifted by ``shifts`` [B, 2]
    when given. 0 for an equivariant detector.

    ``normalise``: divide by the keypoints' spread, the mean over images and keypoints of the
    squared distance to their image's keypoint mean (+ ``eps``), so that shrinking every keypoint
    towards the image centre no longer lowers the loss (without shifts it is then invariant to
    that scaling)."""
    err = (keypoints_of_rotated - rotate_points(keypoints, angles, shifts)).pow(2).sum(-1).mean()
    if not normalise:
        return err
    spread = (keypoints - keypoints.mean(1, keepdim=True)).pow(2).sum(-1).mean()
    return err / (spread + eps)
