"""Training input pipeline: shard URLs -> an endless stream of batches, one stream per rank.

Every rank reads *all* training shards, resampled with replacement (as WebDataset's
``resampled=True``), from a random generator seeded by ``(seed, rank, loader process,
start_step)``. The stream never ends, and the training loop draws exactly one batch per step, so
every rank runs the same number of steps whatever the number of shards (no DDP hang when shards
do not divide evenly between ranks), and ranks see different samples. A resumed run seeds with
the step it resumes from, so it does not replay the start of the stream.

Samples (uint8, channel-first; converted to float in [0, 1] on the device by :func:`to_device`):

- skeleton model: a pair of two different random frames of one episode, and the frame next to
  the source (the one after it; the one before for the last frame),
  ``{"source": [3, H, W], "target": [3, H, W], "track": [3, H, W]}``;
- AutoLink: one random frame, ``{"image": [3, H, W]}``; :func:`to_device` upsamples it to the
  model's input size (128x128) with bilinear interpolation.

Decoding an episode (a PNG film strip of T frames) costs a few milliseconds, so each loader
process keeps a buffer of ``buffer_episodes`` decoded episodes, draws samples from a random
buffered episode, and replaces one random buffered episode by the next one read every
``samples_per_episode`` samples. That mixes episodes across shards and amortises decoding.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from kpray.data import decode_episode, shard_urls

SAMPLE_MODES = ("pair", "frame")


def _frames_of(sample: dict) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 (writable, so that torch can share them)."""
    return np.array(decode_episode(sample)["frames"])


def read_shard(url: str) -> Iterator[dict]:
    """Raw samples (``ext -> bytes``) of one shard, any URL WebDataset opens. Unlike
    ``wds.WebDataset`` this does no node or worker splitting: the caller chose the shard."""
    from webdataset.tariterators import tarfile_samples

    yield from tarfile_samples([{"url": url}])


def resampled_episodes(urls: list[str], rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless frames ``[T, H, W, 3]`` of episodes from shards drawn with replacement."""
    if not urls:
        raise ValueError("no training shards")
    while True:
        url = urls[int(rng.integers(len(urls)))]
        n = 0
        for sample in read_shard(url):
            n += 1
            yield _frames_of(sample)
        if n == 0:
            raise ValueError(f"shard {url} holds no episode")


class EpisodeSamples(IterableDataset):
    """Endless training samples for one rank (see the module docstring).

    urls: training shard URLs; mode: ``"pair"`` (skeleton model) or ``"frame"`` (AutoLink);
    seed, rank, start_step: seed material (each DataLoader process adds its own id).
    """

    def __init__(self, urls, mode: str, seed: int = 0, rank: int = 0, start_step: int = 0,
                 buffer_episodes: int = 8, samples_per_episode: int = 8):
        if mode not in SAMPLE_MODES:
            raise ValueError(f"unknown sample mode {mode!r}: choose from {SAMPLE_MODES}")
        self.urls = list(urls)
        self.mode = mode
        self.seed, self.rank, self.start_step = int(seed), int(rank), int(start_step)
        self.buffer_episodes = int(buffer_episodes)
        self.samples_per_episode = int(samples_per_episode)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker, self.start_step, 0x6B70])
        episodes = resampled_episodes(self.urls, rng)
        buffer = [next(episodes) for _ in range(self.buffer_episodes)]
        drawn = 0
        while True:
            frames = buffer[int(rng.integers(len(buffer)))]         # [T, H, W, 3]
            t = len(frames)
            if self.mode == "pair":
                if t < 2:
                    raise ValueError("pairs need episodes of at least 2 frames")
                i, j = rng.choice(t, size=2, replace=False)
                k = i + 1 if i + 1 < t else i - 1      # no draw: the pairs stay as they were
                yield {"source": torch.from_numpy(frames[i]).permute(2, 0, 1).contiguous(),
                       "target": torch.from_numpy(frames[j]).permute(2, 0, 1).contiguous(),
                       "track": torch.from_numpy(frames[k]).permute(2, 0, 1).contiguous()}
            else:
                i = int(rng.integers(t))
                yield {"image": torch.from_numpy(frames[i]).permute(2, 0, 1).contiguous()}
            drawn += 1
            if drawn % self.samples_per_episode == 0:
                buffer[int(rng.integers(len(buffer)))] = next(episodes)


def _seed_worker(worker_id: int) -> None:
    # torch/random state of a loader process (the sampling itself uses its own numpy rng).
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def make_loader(source, mode: str, batch_size: int, *, seed: int = 0, rank: int = 0,
                start_step: int = 0, loader_workers: int = 1, buffer_episodes: int = 8,
                samples_per_episode: int = 8, pin_memory: bool = False) -> Iterator[dict]:
    """Endless iterator of batches for one rank: dicts of uint8 ``[B, 3, H, W]`` tensors.

    source: a shard folder (its ``train-*.tar``), a shard file, or a list of URLs.
    """
    urls = shard_urls(source, "train")
    ds = EpisodeSamples(urls, mode, seed=seed, rank=rank, start_step=start_step,
                        buffer_episodes=buffer_episodes, samples_per_episode=samples_per_episode)
    kw = {}
    if loader_workers > 0:
        kw = {"persistent_workers": True, "prefetch_factor": 4, "worker_init_fn": _seed_worker}
    loader = DataLoader(ds, batch_size=batch_size, num_workers=loader_workers,
                        pin_memory=pin_memory, **kw)
    return iter(loader)


def to_device(batch: dict, device, image_size: int | None = None) -> dict:
    """uint8 ``[B, 3, H, W]`` tensors -> float in [0, 1] on ``device``, resized to
    ``image_size`` (bilinear) when given and different from H."""
    out = {}
    for k, v in batch.items():
        x = v.to(device, non_blocking=True).float().div_(255.0)
        if image_size is not None and x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                              align_corners=False).clamp_(0, 1)
        out[k] = x
    return out


# ----------------------------------------------------------------------------- validation data

def load_episodes(source, split: str, n: int, frames: int) -> list[dict]:
    """The first ``n`` episodes of ``split``, each cut to ``frames`` evenly spaced frames.

    Returns dicts with ``frames [F, H, W, 3]`` uint8, ``masks [F, H, W]`` bool, ``joints [F, J,
    2]``, ``visible [F, J]``, ``adjacency [J, J]``, ``meta``. Empty when the split has no shard.
    """
    if n <= 0:
        return []
    try:
        urls = shard_urls(source, split)
    except FileNotFoundError:
        return []
    out = []
    for ep in (decode_episode(s) for url in urls for s in read_shard(url)):
        t = len(ep["frames"])
        idx = np.unique(np.linspace(0, t - 1, min(frames, t)).round().astype(int))
        out.append({"frames": ep["frames"][idx], "masks": ep["masks"][idx], "joints": ep["joints"][idx],
                    "visible": ep["visible"][idx], "adjacency": ep["adjacency"],
                    "meta": ep["meta"]})
        if len(out) >= n:
            break
    return out
