"""AutoLink's one loss: perceptual distance between the image and its reconstruction (eq. 6).

Computed with ``lpips`` (learned linear calibration over VGG16 features by default, AlexNet
selectable). Its backbone needs ImageNet weights, which torchvision looks for under
``$TORCH_HOME/hub/checkpoints/`` (``~/.cache/torch/hub/checkpoints`` by default) and would
otherwise download. Machines without internet must place the file there: ``pretrained=True``
refuses to start without it (no silent download attempt, no silent random backbone).
``pretrained=False`` builds a randomly initialised backbone, for tests only.

Note: the official AutoLink code uses a plain L1 over VGG16 relu1_2..relu4_3 features; LPIPS-VGG
uses the same five-stage VGG16 features, unit-normalised per channel and linearly weighted.
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn

# torchvision's file names for the ImageNet backbones lpips uses.
BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
_URL = "https://download.pytorch.org/models/"


def backbone_weights_path(net: str) -> str:
    """Where torchvision expects the ImageNet weights of `net` ('vgg' or 'alex')."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", BACKBONE_FILES[net])


class PerceptualLoss(nn.Module):
    """LPIPS distance between images in [0, 1]: (pred [B, 3, H, W], target [B, 3, H, W]) -> scalar
    mean over the batch. All of its parameters are frozen and it always runs in eval mode."""

    def __init__(self, net: str = "vgg", pretrained: bool = True):
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"perceptual net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        if pretrained:
            path = backbone_weights_path(net)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"AutoLink's perceptual loss needs the ImageNet weights of its {net} backbone, "
                    f"file {BACKBONE_FILES[net]!r}, expected at {path} (TORCH_HOME="
                    f"{os.environ.get('TORCH_HOME', '<unset: ~/.cache/torch>')}). This machine "
                    f"cannot download it: copy {_URL}{BACKBONE_FILES[net]} into "
                    f"$TORCH_HOME/hub/checkpoints/, or set TORCH_HOME to a folder that has "
                    f"hub/checkpoints/{BACKBONE_FILES[net]}. (pretrained=False gives a random "
                    f"backbone: for tests only, not for training.)")
        import lpips  # imported here: it builds torchvision models, slow to import

        # pretrained=True loads lpips' own linear layers (shipped in the package);
        # pnet_rand picks the backbone: ImageNet weights or random.
        with warnings.catch_warnings():  # lpips uses torchvision's deprecated `pretrained=`
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.lpips = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained,
                                     verbose=False)
        self.lpips.requires_grad_(False)
        self.lpips.eval()
        self.net, self.pretrained = net, pretrained

    def train(self, mode: bool = True):
        super().train(mode)
        self.lpips.eval()                 # dropout off, whatever the owner's mode
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(pred, target, normalize=True).mean()    # normalize: [0,1] -> [-1,1]
