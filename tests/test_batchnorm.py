"""CrossRankBatchNorm (kpray/ops/batchnorm.py): two real gloo processes on CPU with different
data give the single-process BatchNorm's result on the concatenated batch."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from kpray.ops.batchnorm import (CrossRankBatchNorm, buffer_fingerprint, convert_batchnorm,
                                 count_cross_rank, local_statistics)

C = 3


def _data(rank: int) -> torch.Tensor:
    """Rank r's part of the batch, [N_r, C, 5, 4]: different sizes, means and scales per rank."""
    g = torch.Generator().manual_seed(100 + rank)
    n = 3 + 2 * rank
    return torch.randn(n, C, 5, 4, generator=g) * (1 + 2 * rank) + 3 * rank


def _weights() -> torch.Tensor:
    """Fixed per-element weights of the test loss, [N, C, 5, 4] over the concatenated batch."""
    n = sum(_data(r).shape[0] for r in range(2))
    return torch.randn(n, C, 5, 4, generator=torch.Generator().manual_seed(7))


def _make_bn() -> nn.Module:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(C, momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def _rank(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        bn = convert_batchnorm(nn.Sequential(_make_bn()))
        x = _data(rank).requires_grad_(True)
        lo = sum(_data(r).shape[0] for r in range(rank))
        w = _weights()[lo:lo + x.shape[0]]
        for _ in range(2):                     # two steps: the running statistics accumulate
            y = bn(x)
        (y * w).sum().backward()
        res = {"y": y.detach(), "x_grad": x.grad, "w_grad": bn[0].weight.grad,
               "b_grad": bn[0].bias.grad, "buffers": buffer_fingerprint(bn),
               "state": {k: v.clone() for k, v in bn.state_dict().items()}}
        if rank == 0:                          # a pass on one rank only must not wait for rank 1
            with local_statistics(bn):
                res["local_y"] = bn(x.detach()).detach()
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ranks"))
    mp.start_processes(_rank, args=(_free_port(), out), nprocs=2, start_method="spawn")
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_ranks):
    ref = _make_bn()
    x = torch.cat([_data(0), _data(1)]).requires_grad_(True)
    for _ in range(2):
        y = ref(x)
    (y * _weights()).sum().backward()
    n0 = _data(0).shape[0]
    # normalised outputs: each rank's slice of the global batch's normalisation
    torch.testing.assert_close(two_ranks[0]["y"], y[:n0].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two_ranks[1]["y"], y[n0:].detach(), atol=1e-5, rtol=1e-5)
    # running statistics: identical on both ranks and equal to the global batch's
    assert two_ranks[0]["buffers"] == two_ranks[1]["buffers"]
    for k in ("0.running_mean", "0.running_var", "0.num_batches_tracked"):
        torch.testing.assert_close(two_ranks[0]["state"][k], ref.state_dict()[k[2:]], atol=1e-5, rtol=1e-5)
    # gradients: the input's equal the one-process ones; the parameters' sum to them (DDP's
    # mean over ranks of each rank's loss then gives the global loss's gradient / world size)
    torch.testing.assert_close(two_ranks[0]["x_grad"], x.grad[:n0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(two_ranks[1]["x_grad"], x.grad[n0:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(two_ranks[0]["w_grad"] + two_ranks[1]["w_grad"], ref.weight.grad,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(two_ranks[0]["b_grad"] + two_ranks[1]["b_grad"], ref.bias.grad,
                               atol=1e-4, rtol=1e-4)


def test_plain_batchnorm_per_rank_would_differ(two_ranks):
    """The check above has teeth: each rank's own statistics are far from the global ones; and
    inside local_statistics a rank normalises by its own batch (without waiting for the other)."""
    own = _make_bn()
    own(_data(1))
    assert not torch.allclose(own.running_mean, two_ranks[1]["state"]["0.running_mean"], atol=1e-2)
    alone = _make_bn()
    torch.testing.assert_close(two_ranks[0]["local_y"], alone(_data(0)).detach(), atol=1e-5, rtol=1e-5)


def test_convert_keeps_parameters_buffers_and_state_dict_keys():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(2)))
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    model.eval()
    out = convert_batchnorm(model)
    assert out is model and count_cross_rank(model) == 2
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    assert not model[1].training                               # mode kept
    # one process: ordinary BatchNorm
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(model[1].state_dict())
    x = torch.randn(2, 4, 3, 3)
    model[1].train()
    ref.train()
    torch.testing.assert_close(model[1](x), ref(x))
    assert isinstance(convert_batchnorm(nn.BatchNorm2d(2)), CrossRankBatchNorm)
