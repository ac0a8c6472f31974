"""Writers for evaluation results: ``metrics.json`` and Markdown tables laid out as the skeleton
paper's Tables I (structure) and II (joints), with the paper's numbers beside ours.

Inputs are plain dicts of floats (as returned by :func:`kpray.metrics.aggregate`); NaN is written
as JSON ``null`` and as ``n/a`` in Markdown.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kpray.metrics import (DATASET_LABELS, JOINT_KEYS, PAPER_DATASETS, PAPER_TABLE_I,
                           PAPER_TABLE_II, STRUCTURE_KEYS)

TABLE_I_COLUMNS = {"acc": "Acc ↑", "bcc": "Bcc ↑", "f1": "F1 ↑", "precision": "Prec ↑",
                   "recall": "Rec ↑"}
TABLE_II_COLUMNS = {"dist": "Dist ↓", "consistency": "Constcy ↑", "f1": "F1 ↑",
                    "precision": "Prec ↑", "recall": "Rec ↑", "diff": "Diff ↓"}
_DECIMALS = {"dist": 3}  # the paper prints Dist with 3 decimals, everything else with 2


def to_jsonable(obj):
    """Recursively convert numpy scalars/arrays to Python and NaN/inf to None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_metrics_json(path, metrics: Mapping) -> Path:
    """Write ``metrics`` (nested dicts/lists of numbers, strings) as indented JSON; NaN -> null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n")
    return path


def _fmt(value, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{_DECIMALS.get(key, 2)}f}"


def _label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def markdown_table(results: Mapping[str, Mapping], columns: Mapping[str, str], paper: Mapping,
                   model_name: str = "ours") -> str:
    """One Markdown table: a row per dataset, then column blocks ``model_name`` (our run), the
    paper's method and the paper's baseline, each block in the paper's column order.

    results: ``{dataset: {metric: value, "n_videos": N, ...}}`` (our run); datasets are ordered as
    in the paper, unknown ones after. Paper cells of datasets the paper lacks are ``n/a``.
    """
    order = [d for d in PAPER_DATASETS if d in results] + sorted(
        d for d in results if d not in PAPER_DATASETS)
    blocks = [(model_name, None), (paper["method"], paper["ours"]),
              (paper["baseline"], paper["baseline_rows"])]
    header = ["Dataset", "N"] + [f"{title}: {label}" for title, _ in blocks
                                 for label in columns.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in order:
        cells = [_label(d), str(results[d].get("n_videos", ""))]
        for _, rows in blocks:
            src = results[d] if rows is None else rows.get(d, {})
            cells += [_fmt(src.get(k), k) for k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(results: Mapping[str, Mapping], model_name: str = "ours",
                    eps: Mapping[str, float] | None = None) -> str:
    """Both tables (I: structure, II: joints) with a short legend, as one Markdown document.

    results: ``{dataset: {"structure": {...}, "joints": {...}}}``, each inner dict as returned
    by :func:`kpray.metrics.aggregate` (keys of ``STRUCTURE_KEYS`` / ``JOINT_KEYS``, ``n_videos``).
    """
    structure = {d: r["structure"] for d, r in results.items()}
    joints = {d: r["joints"] for d, r in results.items()}
    parts = ["# Evaluation", "",
             f"`{model_name}` is this run (means over test videos, NaN videos left out; see "
             "`metrics.json` for their counts). Paper numbers: Anciukevicius et al., ICPR 2022, "
             "Tables I and II. Definitions: `docs/metrics.md`.", ""]
    if eps:
        parts += ["Epsilon (normalised units): " + ", ".join(
            f"{_label(d)} {e:.2f}" for d, e in eps.items()), ""]
    parts += ["## Table I: skeleton structure", "",
              markdown_table(structure, TABLE_I_COLUMNS, PAPER_TABLE_I, model_name),
              "## Table II: joint detection", "",
              markdown_table(joints, TABLE_II_COLUMNS, PAPER_TABLE_II, model_name)]
    return "\n".join(parts)


def write_markdown_tables(path, results: Mapping[str, Mapping], model_name: str = "ours",
                          eps: Mapping[str, float] | None = None) -> Path:
    """Write :func:`markdown_report` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_report(results, model_name, eps))
    return path


def parse_markdown_tables(text: str) -> list[list[dict]]:
    """Every Markdown table in ``text``, each as a list of rows ``{header: cell}`` (for tests)."""
    tables, block = [], []
    for ln in text.splitlines() + [""]:
        if ln.strip().startswith("|"):
            block.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif block:
            header, body = block[0], block[2:]  # block[1] is the |---| rule
            tables.append([dict(zip(header, row)) for row in body])
            block = []
    return tables


assert tuple(TABLE_I_COLUMNS) == STRUCTURE_KEYS and tuple(TABLE_II_COLUMNS) == JOINT_KEYS
