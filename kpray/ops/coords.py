"""The one coordinate convention of kpray's models, and soft-argmax.

Normalised coordinates ``[..., 2]``: ``[..., 0]`` = x (column), ``[..., 1]`` = y (row), both in
``[-1, 1]``, where -1 and +1 are the *outer edges* of the image and the centre of pixel ``i`` of an
``n``-pixel axis is at ``(2 i + 1) / n - 1`` (the ``align_corners=False`` convention of
``F.grid_sample``). This makes a coordinate mean the same place at every resolution, so keypoints
found on a 32x32 heatmap can be drawn on a 128x128 edge map unchanged.

The episode contract gives joints in pixels with pixel centres at integers; ``to_normalised`` and
``to_pixels`` convert between the two.
"""
from __future__ import annotations

import torch


def to_normalised(pixels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """pixels: [..., 2] (x, y), centres at integers -> normalised [..., 2]. size: n or (H, W)."""
    h, w = (size, size) if isinstance(size, int) else size
    scale = pixels.new_tensor([w, h])
    return (2 * pixels + 1) / scale - 1


def to_pixels(normalised: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """normalised: [..., 2] -> pixels [..., 2] (x, y), centres at integers. size: n or (H, W)."""
    h, w = (size, size) if isinstance(size, int) else size
    scale = normalised.new_tensor([w, h])
    return ((normalised + 1) * scale - 1) / 2


def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised centres of an HxW image, row-major: [H*W, 2] (x, y)."""
    ys = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """heatmaps: [B, K, H, W] logits -> keypoints [B, K, 2], the softmax-weighted mean pixel centre
    (AutoLink eq. 1)."""
    b, k, h, w = heatmaps.shape
    prob = heatmaps.reshape(b, k, h * w).softmax(dim=-1)
    return prob @ pixel_grid(h, w, heatmaps.device, prob.dtype)  # [B, K, 2]


def expected_location(location_maps: torch.Tensor) -> torch.Tensor:
    """location_maps: [B, P, H, W], each a distribution over pixels -> coordinates [B, P, 2]
    (the skeleton paper's gamma_p, supplementary VI-c)."""
    b, p, h, w = location_maps.shape
    return location_maps.reshape(b, p, h * w) @ pixel_grid(h, w, location_maps.device,
                                                           location_maps.dtype)


def argmax_location(maps: torch.Tensor) -> torch.Tensor:
    """maps (or logits): [B, P, H, W] -> coordinates [B, P, 2] of each map's largest pixel (the
    first on a tie)."""
    b, p, h, w = maps.shape
    return pixel_grid(h, w, maps.device, maps.dtype)[maps.reshape(b, p, h * w).argmax(-1)]
