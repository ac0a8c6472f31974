"""Episode codec and reader: round trip through real WebDataset tar files."""
import os

import numpy as np
import pytest
import webdataset as wds

from kpray.data import decode_episode, encode_episode, iter_episodes, shard_urls


def _episode(rng, t=5, h=16, w=12, j=4):
    return {
        "frames": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        "masks": rng.random((t, h, w)) > 0.5,
        "joints": rng.normal(size=(t, j, 2)).astype(np.float32) * 10,
        "visible": rng.random((t, j)) > 0.3,
        "adjacency": np.eye(j, k=1, dtype=bool) | np.eye(j, k=-1, dtype=bool),
        "meta": {"dataset": "toy", "index": int(rng.integers(100))},
    }


def _assert_same(a, b):
    for k in ("frames", "masks", "joints", "visible", "adjacency"):
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert {k: v for k, v in b["meta"].items() if k != "shape"} == a["meta"]


@pytest.mark.parametrize("codec", ["webp", "png"])
@pytest.mark.parametrize("t", [1, 5, 7])
def test_lossless_round_trip_is_exact_and_deterministic(codec, t):
    rng = np.random.default_rng(t)
    ep = _episode(rng, t=t)
    s1 = encode_episode(ep, "train-000001", frame_codec=codec)
    assert s1 == encode_episode(ep, "train-000001", frame_codec=codec)  # bytes depend on the episode alone
    assert f"frames.{codec}" in s1
    _assert_same(ep, decode_episode(s1))


def test_tiling_is_a_near_square_grid():
    from kpray.data import tile_frames, untile_frames

    frames = np.arange(90 * 4 * 3 * 3, dtype=np.uint8).reshape(90, 4, 3, 3)
    grid = tile_frames(frames)
    assert grid.shape == (9 * 4, 10 * 3, 3)  # 10 columns, 9 rows
    np.testing.assert_array_equal(grid[4:8, 0:3], frames[10])  # row-major: frame 10 starts row 2
    np.testing.assert_array_equal(untile_frames(grid, 90, 4, 3), frames)


def test_jpg_codec_is_lossy_but_close():
    rng = np.random.default_rng(1)
    ep = _episode(rng)
    ep["frames"] = np.repeat(np.repeat(ep["frames"][:, ::4, ::4], 4, 1), 4, 2)  # smooth-ish image
    out = decode_episode(encode_episode(ep, "k", frame_codec="jpg", jpeg_quality=95))
    err = np.abs(out["frames"].astype(int) - ep["frames"].astype(int)).mean()
    assert err < 12
    np.testing.assert_array_equal(out["masks"], ep["masks"])


def test_unknown_codec_rejected():
    with pytest.raises(ValueError, match="unknown frame codec"):
        encode_episode(_episode(np.random.default_rng(2)), "k", frame_codec="gif")


def _write_shard(path, episodes, prefix):
    with wds.TarWriter(str(path), mtime=0.0) as sink:
        for i, ep in enumerate(episodes):
            sink.write(encode_episode(ep, f"{prefix}-{i:06d}"))


def test_iter_episodes_folder_file_and_urls(tmp_path):
    rng = np.random.default_rng(3)
    train = [_episode(rng) for _ in range(3)]
    test = [_episode(rng, j=6) for _ in range(2)]
    _write_shard(tmp_path / "train-000000.tar", train[:2], "train")
    _write_shard(tmp_path / "train-000001.tar", train[2:], "train")
    _write_shard(tmp_path / "test-000000.tar", test, "test")

    got = list(iter_episodes(tmp_path, split="train"))
    assert len(got) == 3
    for a, b in zip(train, got):
        _assert_same(a, b)
    assert len(list(iter_episodes(tmp_path))) == 5
    one_file = list(iter_episodes(str(tmp_path / "test-000000.tar")))
    assert [e["joints"].shape[1] for e in one_file] == [6, 6]
    urls = shard_urls(tmp_path, "train")
    assert [os.path.basename(u) for u in urls] == ["train-000000.tar", "train-000001.tar"]
    assert len(list(iter_episodes(urls))) == 3


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards matching test-"):
        list(iter_episodes(tmp_path, split="test"))
