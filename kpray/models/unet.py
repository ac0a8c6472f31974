"""The U-Net both models use: AutoLink's decoder and the skeleton model's point extractor pi."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Sequential):
    """Two 3x3 Conv-BatchNorm-ReLU, stride 1, padding 1 (skeleton paper, supplementary VIII-a)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class UNet(nn.Module):
    """[B, c_in, H, W] -> [B, c_out, H, W]: DoubleConv, `depth` x (max-pool 2, DoubleConv),
    `depth` x (bilinear upsample to the skip's size, concat skip, DoubleConv), 1x1 conv.
    Channels double per level from `width`, capped at `max_mult * width` when given."""

    def __init__(self, c_in: int, c_out: int, width: int = 32, depth: int = 4,
                 max_mult: int | None = None):
        super().__init__()
        cap = max_mult * width if max_mult else None
        ch = [width * 2 ** d if cap is None else min(width * 2 ** d, cap) for d in range(depth + 1)]
        self.inc = DoubleConv(c_in, ch[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(ch[d], ch[d + 1]))
                                   for d in range(depth))
        self.ups = nn.ModuleList(DoubleConv(ch[d + 1] + ch[d], ch[d]) for d in reversed(range(depth)))
        self.out = nn.Conv2d(ch[0], c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        return self.out(x)
