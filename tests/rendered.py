"""Small shard folders of real MuJoCo renders for tests that need data but not the Ray generator
(shard sizes can be uneven on purpose)."""
import os

import webdataset as wds

from kpray.data import encode_episode


def write_rendered_shards(out_dir: str, train_shards=(2, 2, 2), test_episodes: int = 2,
                          frames: int = 16, size: int = 64, dataset: str = "cartpoles",
                          seed: int = 0) -> str:
    """``out_dir/train-00000k.tar`` holding ``train_shards[k]`` episodes, and one test shard."""
    from sim import render_episode

    os.makedirs(out_dir, exist_ok=True)
    for split, counts in (("train", list(train_shards)), ("test", [test_episodes] if test_episodes else [])):
        index = 0
        for k, n in enumerate(counts):
            with wds.TarWriter(os.path.join(out_dir, f"{split}-{k:06d}.tar"), mtime=0.0) as sink:
                for _ in range(n):
                    ep = render_episode(dataset, split, seed=seed, index=index, frames=frames, size=size)
                    sink.write(encode_episode(ep, f"{split}-{index:06d}"))
                    index += 1
    return out_dir
