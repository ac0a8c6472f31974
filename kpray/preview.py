"""Contact sheet of a shard folder: frames with the GT joints and skeleton drawn on them."""
from __future__ import annotations

import colorsys
import itertools
import os

import numpy as np
from PIL import Image, ImageDraw

from kpray.data import iter_episodes, shard_urls


def joint_colours(n: int) -> list[tuple[int, int, int]]:
    """n well-separated RGB colours (golden-ratio hue steps)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * j) % 1.0, 0.85, 1.0))
            for j in range(n)]


def draw_skeleton(frame: np.ndarray, joints: np.ndarray, visible: np.ndarray,
                  adjacency: np.ndarray, scale: int = 3) -> Image.Image:
    """frame [H, W, 3] uint8, joints [J, 2] pixels (x, y), visible [J], adjacency [J, J] ->
    an upscaled image: links in white, visible joints filled, hidden joints as rings."""
    h, w, _ = frame.shape
    img = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    # Pixel centres are at integer coordinates: centre of pixel x is at (x + 0.5) * scale.
    pts = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in joints]
    for i, j in zip(*np.nonzero(np.triu(adjacency, 1))):
        draw.line([pts[i], pts[j]], fill=(255, 255, 255), width=max(1, scale // 2))
    r = max(2, scale)
    for (x, y), vis, col in zip(pts, visible, joint_colours(len(pts))):
        box = [x - r, y - r, x + r, y + r]
        if vis:
            draw.ellipse(box, fill=col, outline=(0, 0, 0))
        else:
            draw.ellipse(box, outline=col, width=1)
    return img


def contact_sheet(episodes, columns: int = 8, scale: int = 3, pad: int = 2) -> Image.Image:
    """One row per episode, ``columns`` frames spread evenly over it."""
    rows = []
    for ep in episodes:
        t = len(ep["frames"])
        idx = np.linspace(0, t - 1, min(columns, t)).round().astype(int)
        rows.append([draw_skeleton(ep["frames"][i], ep["joints"][i], ep["visible"][i],
                                   ep["adjacency"], scale) for i in idx])
    if not rows:
        raise ValueError("no episodes to draw")
    tile_w, tile_h = rows[0][0].size
    sheet = Image.new("RGB", (columns * (tile_w + pad) + pad, len(rows) * (tile_h + pad) + pad),
                      (40, 40, 40))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (pad + c * (tile_w + pad), pad + r * (tile_h + pad)))
    return sheet


def write_preview(shard_dir: str, path: str, rows: int = 6, columns: int = 8) -> str:
    """Draw the first ``rows`` episodes of the train split (test split if no train)."""
    split = "train" if any(os.path.basename(u).startswith("train-") for u in shard_urls(shard_dir)) else "test"
    episodes = list(itertools.islice(iter_episodes(shard_dir, split), rows))
    sheet = contact_sheet(episodes, columns)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    sheet.save(tmp)
    os.replace(tmp, path)
    return path
