"""In-plane rotations (and shifts) of images and of points in the normalised convention of
:mod:`kpray.ops.coords` (x right, y down, both in [-1, 1] across a square image).

A rotation by ``theta`` (radians) maps a point p to ``R p`` with ``R = [[cos, -sin], [sin, cos]]``
about the image centre (0, 0); on screen (y down) a positive angle turns clockwise. Rotating an
image by ``theta`` moves the content at p to ``R p``, so a keypoint detector that is equivariant
to rotations satisfies ``detect(rotate_images(x, t)) == rotate_points(detect(x), t)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """angles [B] radians -> [B, 2, 2]."""
    c, s = angles.cos(), angles.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def rotate_points(points: torch.Tensor, angles: torch.Tensor,
                  shifts: torch.Tensor | None = None) -> torch.Tensor:
    """points [B, K, 2] normalised, angles [B] radians -> [B, K, 2], each rotated about (0, 0),
    then moved by ``shifts`` [B, 2] (normalised units) when given: p -> R p + t."""
    out = points @ rotation_matrices(angles).transpose(1, 2)
    return out if shifts is None else out + shifts[:, None, :]


def rotate_images(images: torch.Tensor, angles: torch.Tensor, padding: str = "border",
                  shifts: torch.Tensor | None = None) -> torch.Tensor:
    """images [B, C, S, S] (square), angles [B] radians -> [B, C, S, S]: the content at p moves to
    R p (+ ``shifts`` [B, 2], normalised units, when given; bilinear). Pixels whose source falls
    outside the image take ``padding`` (``F.grid_sample``'s 'border', 'reflection' or 'zeros')."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate_images needs square images, got {tuple(images.shape[-2:])}")
    # grid_sample pulls: the output at q reads the input at R^-1 (q - t) = R^T q - R^T t.
    inv = rotation_matrices(angles).transpose(1, 2)
    offset = inv.new_zeros(inv.shape[0], 2, 1) if shifts is None else -(inv @ shifts[:, :, None])
    theta = torch.cat([inv, offset], dim=2).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)
