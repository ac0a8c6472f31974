"""BatchNorm whose batch statistics are those of the global batch, across DDP ranks, on any
backend (gloo on CPU included).

With plain ``nn.BatchNorm2d`` under DDP each rank normalises by its own part of the batch and
its running statistics drift apart (DDP only copies rank 0's buffers at the next forward).
``torch.nn.SyncBatchNorm`` fixes that but refuses CPU tensors (torch 2.15: "SyncBatchNorm
expected input tensor to be on GPU or XPU or privateuseone"), so CPU training on gloo cannot
use it. :class:`CrossRankBatchNorm` does the same with two autograd-aware all-reduces::

    x: [N_r, C, *]  on rank r                  (N = sum of N_r x spatial size, per channel)
    mean = all_reduce(sum_r x) / N             [C]
    var  = all_reduce(sum_r (x - mean)^2) / N  [C]   (biased, used to normalise)
    y    = (x - mean) / sqrt(var + eps) * weight + bias
    running_var is updated with the unbiased var * N / (N - 1), as BatchNorm does.

Gradients flow through the all-reduces (their backward is an all-reduce of the gradients), so
each rank's input gradient is that of the loss summed over ranks; DDP's mean over ranks then
gives the gradient of the global batch's loss, as with SyncBatchNorm. In eval mode, or with one
process, it is ordinary BatchNorm. Its state dict is BatchNorm's (checkpoints load either way).

Every rank must call a converted model's forward in training mode the same number of times
(the all-reduces are collectives); a pass on one rank only (rank 0's diagnostics) must run
inside :func:`local_statistics`.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of each rank's input is the sum over ranks
    of the output's gradients (every rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over [N, C, *] inputs with statistics of the batch of every rank."""

    sync = True   # False inside local_statistics(): this rank's batch alone

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected an input of shape [N, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.sync and _world() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        n_local = torch.tensor([x.numel() // c], dtype=torch.float32, device=x.device)
        packed = all_reduce_sum(torch.cat([xf.sum(dims), n_local]))           # [C + 1]
        n = packed[c]
        if int(n.item()) < 2:
            raise ValueError(f"expected more than 1 value per channel when training, got input "
                             f"of shape {tuple(x.shape)} on every rank")
        mean = packed[:c] / n                                               # [C]
        var = all_reduce_sum(((xf - mean.view(shape)) ** 2).sum(dims)) / n     # [C], biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` (not SyncBatchNorm) in ``module`` by a
    :class:`CrossRankBatchNorm` holding the same parameters and buffers (the same tensors, so
    an optimiser built before still holds them). Returns the converted module (a new object
    only when ``module`` itself is a BatchNorm)."""
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if isinstance(module, kinds) and not isinstance(module, CrossRankBatchNorm):
        new = CrossRankBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new = convert_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def count_cross_rank(module: nn.Module) -> int:
    return sum(isinstance(m, CrossRankBatchNorm) for m in module.modules())


@contextlib.contextmanager
def local_statistics(module: nn.Module):
    """Within the block, the module's CrossRankBatchNorm layers use this rank's batch alone
    (no collectives): for forward passes that only one rank makes."""
    layers = [m for m in module.modules() if isinstance(m, CrossRankBatchNorm)]
    before = [m.sync for m in layers]
    for m in layers:
        m.sync = False
    try:
        yield module
    finally:
        for m, s in zip(layers, before):
            m.sync = s


def buffer_fingerprint(module: nn.Module) -> str:
    """sha1 of every buffer's bytes (running statistics), in order: equal on every rank when
    the ranks' BatchNorm statistics agree."""
    import hashlib

    h = hashlib.sha1()
    for b in module.buffers():
        h.update(b.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
