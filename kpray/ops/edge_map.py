"""AutoLink's differentiable edge map, without per-edge per-pixel tensors.

    E[b, p] = max_{i<j} w_ij * exp(-d_ij(p)^2 / thickness)

where ``d_ij(p)`` is the distance from pixel centre ``p`` to the segment between keypoints ``i`` and
``j`` (AutoLink eqs. 2-4; coordinates as in ``kpray.ops.coords``: normalised, x then y, pixel
centres at ``(2 i + 1) / n - 1``), ``w_ij > 0`` the shared edge weights and ``thickness`` the
paper's sigma^2 (5e-5 in normalised units for all its benchmarks, about half a pixel at 128x128).

A direct implementation builds ``[B, E, H*W]`` maps (and ``[B, E, H*W, 2]`` offsets) for the
E = K(K-1)/2 edges: at K = 32, B = 64, 128x128 that is 2 GB per float32 tensor, several of them
kept for backward. Because the result is a max, only one edge per pixel receives gradient, so
``edge_map`` runs the edges in chunks keeping a running max and its arg-max edge (``[B, H*W]``
each), and the backward pass recomputes just that edge's term at every pixel. Peak memory is
``O(B * H*W * chunk)``, independent of the number of edges.

Ties: the lowest edge index (in ``upper_pairs`` order) wins, as ``torch.max`` does in
``edge_map_naive``, so both give identical subgradients. Pixels where every term underflows to 0
report edge 0 with value 0, and their gradient is exactly 0 either way. (Ours floors each term
at ``w * tiny`` -- the smallest normal float, 1e-38 in float32 -- because exp() producing denormals
is very slow on CPUs; there the max-weight edge wins, with the same, negligible, gradient.)
"""
from __future__ import annotations

import math

import torch

from kpray.ops.coords import pixel_grid

# Elements of one [B, chunk, H*W] temporary (3 are alive at once): 2**22 floats = 16 MiB.
_CHUNK_ELEMENTS = 2 ** 22


def upper_pairs(k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The E = K(K-1)/2 edges i < j, row-major: (i [E], j [E])."""
    i, j = torch.triu_indices(k, k, offset=1, device=device)
    return i, j


def segment_distance2(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance from points p to segments [a, b]; all [..., 2], broadcast -> [...].

    A degenerate segment (a == b) is the point a."""
    ba = b - a
    ap = p - a
    len2 = (ba * ba).sum(-1)
    t = ((ap * ba).sum(-1) / len2.clamp_min(torch.finfo(len2.dtype).tiny)).clamp(0, 1)
    r = ap - t.unsqueeze(-1) * ba
    return (r * r).sum(-1)


def _edge_weights(weights: torch.Tensor, k: int) -> torch.Tensor:
    """weights: [K, K] (strict upper triangle used) or [E] -> [E]."""
    if weights.dim() == 2:
        i, j = upper_pairs(k, weights.device)
        return weights[i, j]
    if weights.shape != (k * (k - 1) // 2,):
        raise ValueError(f"edge weights must be [K, K] or [K(K-1)/2], got {tuple(weights.shape)}")
    return weights


def edge_map_naive(keypoints: torch.Tensor, weights: torch.Tensor, thickness: float | torch.Tensor,
                   size: tuple[int, int]) -> torch.Tensor:
    """Reference: materialises every edge's map, [B, E, H*W] (and [B, E, H*W, 2] offsets).

    keypoints: [B, K, 2]; weights: [K, K] or [E], positive; returns [B, H, W]."""
    b, k, _ = keypoints.shape
    h, w = size
    i, j = upper_pairs(k, keypoints.device)
    grid = pixel_grid(h, w, keypoints.device, keypoints.dtype)             # [HW, 2]
    d2 = segment_distance2(grid, keypoints[:, i, None], keypoints[:, j, None])  # [B, E, HW]
    maps = _edge_weights(weights, k)[:, None] * torch.exp(-d2 / thickness)
    return maps.max(dim=1).values.view(b, h, w)


class _EdgeMapMax(torch.autograd.Function):
    """keypoints [B, K, 2], edge_w [E], thickness [] -> (value [B, HW]); saves the arg-max edge."""

    @staticmethod
    def forward(ctx, keypoints, edge_w, thickness, pair_i, pair_j, grid, chunk):
        b, hw = keypoints.shape[0], grid.shape[0]
        n_edges = pair_i.numel()
        neg_inv_th = -1.0 / float(thickness)
        px, py = grid[:, 0], grid[:, 1]                                  # [HW]
        best = keypoints.new_full((b, hw), float("-inf"))
        arg = torch.zeros(b, hw, dtype=torch.long, device=keypoints.device)
        tiny = torch.finfo(keypoints.dtype).tiny
        log_tiny = math.log(tiny)
        for s in range(0, n_edges, chunk):
            a = keypoints[:, pair_i[s:s + chunk]]                        # [B, c, 2]
            ba = keypoints[:, pair_j[s:s + chunk]] - a
            inv_len2 = 1.0 / (ba * ba).sum(-1, keepdim=True).clamp_min(tiny)  # [B, c, 1]
            ax, ay = a[..., 0:1], a[..., 1:2]
            bx, by = ba[..., 0:1], ba[..., 1:2]
            # In place from here on: three [B, c, HW] temporaries in all.
            dx = px - ax
            dy = py - ay
            t = dx * bx
            t.addcmul_(dy, by).mul_(inv_len2).clamp_(0, 1)              # projection onto segment
            dx.addcmul_(t, bx, value=-1)
            dy.addcmul_(t, by, value=-1)
            del t
            # floor the exponent at the smallest normal float: denormal exp() is very slow on CPUs
            val = dx.square_().addcmul_(dy, dy).mul_(neg_inv_th).clamp_(min=log_tiny).exp_()
            val.mul_(edge_w[s:s + chunk, None])
            del dy
            vmax, vidx = val.max(dim=1)                                  # first index on ties
            del val, dx
            better = vmax > best                                         # strict: earlier edge wins ties
            best = torch.where(better, vmax, best)
            arg = torch.where(better, vidx + s, arg)
        ctx.save_for_backward(keypoints, edge_w, thickness, pair_i, pair_j, grid, arg)
        ctx.mark_non_differentiable(arg)
        return best, arg

    @staticmethod
    def backward(ctx, grad_out, _grad_arg):
        keypoints, edge_w, thickness, pair_i, pair_j, grid, arg = ctx.saved_tensors
        b, k, _ = keypoints.shape
        # Recompute only the winning edge's term at each pixel: [B, HW] and [B, HW, 2] tensors.
        ei, ej = pair_i[arg], pair_j[arg]                                # [B, HW]
        a = keypoints.gather(1, ei.unsqueeze(-1).expand(-1, -1, 2))      # [B, HW, 2]
        bb = keypoints.gather(1, ej.unsqueeze(-1).expand(-1, -1, 2))
        ba = bb - a
        ap = grid - a
        len2 = (ba * ba).sum(-1)
        t = ((ap * ba).sum(-1) / len2.clamp_min(torch.finfo(len2.dtype).tiny)).clamp(0, 1)
        r = ap - t.unsqueeze(-1) * ba                                    # pixel minus closest point
        d2 = (r * r).sum(-1)
        e = torch.exp(-d2 / thickness)
        val = edge_w[arg] * e
        grad_kp = grad_w = grad_th = None
        if ctx.needs_input_grad[0]:
            # d2 = min_t |p - a - t (b - a)|^2, so by the envelope theorem t is held fixed:
            # dd2/da = -2 (1 - t) r, dd2/db = -2 t r; and dval/dd2 = -val / thickness.
            coef = (grad_out * val * 2 / thickness).unsqueeze(-1) * r    # [B, HW, 2]
            tt = t.unsqueeze(-1)
            grad_kp = torch.zeros_like(keypoints)
            grad_kp.scatter_add_(1, ei.unsqueeze(-1).expand(-1, -1, 2), coef * (1 - tt))
            grad_kp.scatter_add_(1, ej.unsqueeze(-1).expand(-1, -1, 2), coef * tt)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(edge_w).index_add_(0, arg.reshape(-1), (grad_out * e).reshape(-1))
        if ctx.needs_input_grad[2]:
            grad_th = (grad_out * val * d2).sum() / thickness ** 2
        return grad_kp, grad_w, grad_th, None, None, None, None


def edge_map(keypoints: torch.Tensor, weights: torch.Tensor, thickness: float | torch.Tensor,
             size: tuple[int, int], chunk: int | None = None,
             return_argmax: bool = False):
    """AutoLink's edge map with memory independent of the number of edges.

    keypoints: [B, K, 2] normalised (x, y); weights: [K, K] (strict upper triangle used) or [E],
    positive; thickness: sigma^2, a float or a 0-dim tensor (differentiable if it requires grad);
    size: (H, W); chunk: edges per step (default: about 16 MiB of temporaries per tensor).
    Returns edge map [B, H, W] (and, if return_argmax, the winning edge index [B, H, W]).
    """
    b, k, _ = keypoints.shape
    h, w = size
    if k < 2:
        raise ValueError("an edge map needs at least 2 keypoints")
    pair_i, pair_j = upper_pairs(k, keypoints.device)
    edge_w = _edge_weights(weights, k).to(keypoints.dtype)
    if not torch.is_tensor(thickness):
        thickness = torch.tensor(float(thickness))
    thickness = thickness.to(device=keypoints.device, dtype=keypoints.dtype)
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * w))
    grid = pixel_grid(h, w, keypoints.device, keypoints.dtype)
    value, arg = _EdgeMapMax.apply(keypoints, edge_w, thickness, pair_i, pair_j, grid, int(chunk))
    value = value.view(b, h, w)
    return (value, arg.view(b, h, w)) if return_argmax else value
