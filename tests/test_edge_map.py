"""The coordinate convention and readouts; the chunked arg-max edge map against brute force:
values, gradients, ties, memory."""
import itertools
import math

import pytest
import torch

from kpray.ops.coords import (argmax_location, local_peaks, pixel_grid, to_normalised, to_pixels,
                              tracked_location)
from kpray.ops.edge_map import edge_map, edge_map_naive, segment_distance2, upper_pairs


def _inputs(b, k, dtype, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(b, k, 2, generator=g, dtype=dtype) * 1.6 - 0.8
    w = torch.rand(k * (k - 1) // 2, generator=g, dtype=dtype) + 0.5
    return kp.requires_grad_(requires_grad), w.requires_grad_(requires_grad)


def test_coordinate_convention_round_trip():
    grid = pixel_grid(4, 8)
    assert torch.allclose(grid[0], torch.tensor([-7 / 8, -3 / 4]))     # centre of pixel (0, 0)
    assert torch.allclose(grid[-1], torch.tensor([7 / 8, 3 / 4]))
    pix = torch.tensor([[0.0, 0.0], [63.0, 31.5]])
    assert torch.allclose(to_pixels(to_normalised(pix, 64), 64), pix)
    assert torch.allclose(to_normalised(torch.tensor([31.5, 31.5]), 64), torch.zeros(2))


def test_tracked_location_is_the_best_path_over_the_peaks_by_brute_force():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 2, 6, 6, generator=g) ** 4                     # [T, P, H, W]
    maps = maps / maps.sum((-1, -2), keepdim=True)
    k, motion = 3, 0.3
    values, xy = local_peaks(maps, k)
    assert values.shape == (4, 2, 3) and (values[..., :-1] >= values[..., 1:]).all()
    got = tracked_location(maps, k, motion)
    for p in range(2):
        def score(path):
            pts = xy[torch.arange(4), p, list(path)]
            return float(values[torch.arange(4), p, list(path)].log().sum()
                         - ((pts[1:] - pts[:-1]) ** 2).sum() / (2 * motion ** 2))
        best = max(itertools.product(range(k), repeat=4), key=score)
        assert torch.equal(got[:, p], xy[torch.arange(4), p, list(best)])
    assert torch.equal(tracked_location(maps, 1, motion), argmax_location(maps))


def test_tracked_location_keeps_a_point_on_its_moving_place_where_the_arg_max_jumps():
    """A point's map splits its mass between a place A that moves 1 px a frame along row 2 and a
    still place B in the far corner; in frame 2 B holds more (0.6), elsewhere A does (0.55)."""
    maps = torch.zeros(5, 1, 16, 16)
    for t in range(5):
        a = 0.4 if t == 2 else 0.55
        maps[t, 0, 2, 2 + t] = a
        maps[t, 0, 13, 13] = 1 - a
    on_a = to_normalised(torch.tensor([[[2.0 + t, 2.0]] for t in range(5)]), 16)   # [T, 1, 2]
    assert not torch.equal(argmax_location(maps)[2], on_a[2])           # the arg-max jumps to B
    assert torch.equal(tracked_location(maps, 2, motion=0.5), on_a)     # follows A as it moves
    # a tight motion prior prefers the still place: A's 4 steps of 1 px cost more than it gains
    assert torch.equal(tracked_location(maps, 2, motion=0.2)[:, 0], torch.full((5, 2), 0.6875))
    # where moving costs nothing, each frame takes its largest peak, as the arg-max does
    assert torch.equal(tracked_location(maps, 2, motion=1e3), argmax_location(maps))


def test_segment_distance_hand_cases():
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.0])
    p = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [3.0, 4.0], [0.5, -0.5]])
    assert torch.allclose(segment_distance2(p, a, b), torch.tensor([1.0, 1.0, 17.0, 0.25]))
    # degenerate segment: distance to the point
    assert torch.allclose(segment_distance2(p, a, a), (p ** 2).sum(-1))


def test_single_edge_hand_value():
    # keypoints on the centre row of a 1x5 image: pixel centres x = -0.8, -0.4, 0, 0.4, 0.8
    kp = torch.tensor([[[-0.4, 0.0], [0.4, 0.0]]])
    w = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    out = edge_map(kp, w, 0.16, (1, 5))
    expected = torch.tensor([2 * math.exp(-1.0), 2, 2, 2, 2 * math.exp(-1.0)])
    assert torch.allclose(out[0, 0], expected)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_values_match_naive(chunk):
    kp, w = _inputs(3, 6, torch.float32, requires_grad=False)
    ours = edge_map(kp, w, 5e-3, (24, 20), chunk=chunk)
    ref = edge_map_naive(kp, w, 5e-3, (24, 20))
    assert ours.shape == (3, 24, 20)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_weight_matrix_uses_upper_triangle():
    kp, w = _inputs(2, 5, torch.float64, requires_grad=False)
    mat = torch.full((5, 5), 123.0, dtype=torch.float64)      # lower triangle and diagonal ignored
    i, j = upper_pairs(5)
    mat[i, j] = w
    assert torch.equal(edge_map(kp, mat, 0.01, (8, 8)), edge_map(kp, w, 0.01, (8, 8)))


def test_gradients_match_naive():
    kp, w = _inputs(2, 7, torch.float64, seed=1)
    th = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 16, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = torch.autograd.grad(edge_map(kp, w, th, (16, 12), chunk=4), (kp, w, th), g)
    ref = torch.autograd.grad(edge_map_naive(kp, w, th, (16, 12)), (kp, w, th), g)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64():
    kp, w = _inputs(2, 4, torch.float64, seed=2)
    th = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k_, w_, t_: edge_map(k_, w_, t_, (6, 7), chunk=2),
                                    (kp, w, th))


def test_ties_go_to_the_lowest_edge_like_naive():
    # keypoints 1 and 2 coincide: edges (0,1) and (0,2) are the same segment with the same weight
    kp = torch.tensor([[[-0.5, -0.2], [0.5, 0.3], [0.5, 0.3]]], dtype=torch.float64,
                      requires_grad=True)
    w = torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64, requires_grad=True)
    ours, arg = edge_map(kp, w, 0.05, (10, 10), chunk=1, return_argmax=True)
    assert set(arg.unique().tolist()) <= {0, 2}             # edge 1 (0,2) never wins a tie
    gw, gk = torch.autograd.grad(ours.sum(), (w, kp))
    rw, rk = torch.autograd.grad(edge_map_naive(kp, w, 0.05, (10, 10)).sum(), (w, kp))
    assert gw[1] == 0 and torch.allclose(gw, rw) and torch.allclose(gk, rk)


def test_coincident_keypoints_give_finite_gradients():
    kp = torch.zeros(1, 3, 2, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    out = edge_map(kp, w, 0.01, (8, 8))
    out.sum().backward()
    assert torch.isfinite(kp.grad).all() and torch.isfinite(w.grad).all()


def _saved_bytes(fn):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_saved_memory_does_not_grow_with_edges():
    size = (32, 32)
    mem = {}
    for k in (4, 32):
        kp, w = _inputs(2, k, torch.float32)
        mem[k] = _saved_bytes(lambda: edge_map(kp, w, 1e-3, size))
    # only O(K + E) tensors (keypoints, weights, edge index pairs) grow with K; the per-pixel
    # state (arg-max edge, grid) is [B, H*W] whatever the number of edges
    n_edges = 32 * 31 // 2
    assert mem[32] - mem[4] < 64 * n_edges
    assert mem[4] >= 2 * 32 * 32 * 8                         # the [B, H*W] int64 arg-max
    kp, w = _inputs(2, 32, torch.float32)
    naive = _saved_bytes(lambda: edge_map_naive(kp, w, 1e-3, size))
    assert mem[32] * 50 < naive
