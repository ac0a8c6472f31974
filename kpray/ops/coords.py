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


def local_peaks(maps: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """maps [T, P, H, W] (non-negative) -> (values [T, P, k], coordinates [T, P, k, 2]) of each
    map's k largest local maxima (a pixel >= its 8 neighbours), largest first. A map with fewer
    than k maxima pads with value-0 entries (at some pixel of the map)."""
    t, p, h, w = maps.shape
    flat = maps.reshape(t * p, 1, h, w)
    is_peak = flat >= torch.nn.functional.max_pool2d(flat, 3, stride=1, padding=1)
    values, idx = torch.where(is_peak, flat, torch.zeros_like(flat)).reshape(t, p, h * w).topk(
        min(k, h * w), dim=-1)
    return values, pixel_grid(h, w, maps.device, maps.dtype)[idx]


def tracked_location(maps: torch.Tensor, k: int, motion: float, floor: float = 1e-12) -> torch.Tensor:
    """A video's maps [T, P, H, W] (probabilities; frames in order) -> coordinates [T, P, 2]:
    per point, one of its map's k largest local maxima in every frame (``local_peaks``), the
    sequence that maximises

        sum_t log map_t(x_t)  -  sum_t |x_t - x_{t-1}|^2 / (2 motion^2)

    (exact, by dynamic programming over the k peaks of each frame). motion: the typical step
    between frames, in normalised units. Where a map splits its mass between places, the arg-max
    jumps between them from frame to frame; this keeps the point on the place it moves on from.
    k = 1 is ``argmax_location``."""
    values, xy = local_peaks(maps, k)                              # [T, P, k], [T, P, k, 2]
    t = values.shape[0]
    log_v = values.clamp_min(floor).log()
    score, back = log_v[0], []
    for i in range(1, t):
        d2 = (xy[i][:, None] - xy[i - 1][:, :, None]).pow(2).sum(-1)   # [P, prev k, cur k]
        best, arg = (score[:, :, None] - d2 / (2 * motion ** 2)).max(dim=1)
        score = best + log_v[i]
        back.append(arg)                                            # [P, cur k]
    choice = [score.argmax(dim=-1)]                                 # [P]
    for arg in reversed(back):
        choice.append(arg.gather(1, choice[-1][:, None])[:, 0])
    choice = torch.stack(choice[::-1])                              # [T, P]
    return xy.gather(2, choice[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
