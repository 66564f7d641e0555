"""What a saved adapter holds, read from its folder alone (no base model): budget table and structure heatmap.

The structure is a grid with one row per transformer layer:

- design space: one column per strategy (`adapter`, `bitfit`, `lora`, `prefix`), cells = parameters, from the plan;
- SAM: one column per kind of tensor (`attention.self.query.weight`, ...), cells = selected entries, from the
  config's `nnz_pattern`.

`heatmap_text` draws it with shade characters for a terminal; `plot_heatmap` writes an image with matplotlib.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from peft_designspace._io import atomic_path

from .loading import CONFIG_NAME, WEIGHTS_NAME

SHADES = " ░▒▓█"
LAYER_RE = re.compile(r"\.(\d+)\.")


@dataclass
class Structure:
    """A layer × column grid of counts.

    Attributes:
        title (`str`): what the cells count.
        rows (`list[str]`): row labels (layers).
        columns (`list[str]`): column labels.
        cells (`list[list[int]]`): `cells[row][column]`.
        table (`str`): the budget table (text) of the adapter.
    """

    title: str
    rows: list[str]
    columns: list[str]
    cells: list[list[int]]
    table: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"title": self.title, "rows": self.rows, "columns": self.columns, "cells": self.cells, **self.extra}


def read_config(adapter_dir: str | os.PathLike) -> dict:
    """The adapter's `adapter_config.json`, with a clear error when the folder holds none or it is not a JSON object.

    Raises:
        FileNotFoundError: the folder holds no `adapter_config.json`.
        ValueError: the file is not valid JSON, or holds something other than an object of adapter settings.
    """
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no {CONFIG_NAME}; is it a folder written by save_pretrained?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); save the adapter again.") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{str(path)!r} holds a JSON {type(config).__name__}, expected an object of adapter settings; save the "
            "adapter again."
        )
    return config


def adapter_structure(adapter_dir: str | os.PathLike) -> Structure:
    """The budget table and structure grid of a saved design-space or SAM adapter.

    Raises:
        ValueError: for other methods, or a config without its resolved plan / selection.
    """
    config = read_config(adapter_dir)
    peft_type = config.get("peft_type")
    if peft_type == "DESIGNSPACE" and isinstance(config.get("plan"), dict):
        return _designspace_structure(adapter_dir, config)
    if peft_type == "SAMTUNING" and isinstance(config.get("nnz_pattern"), dict):
        return _sam_structure(config)
    raise ValueError(
        f"{adapter_dir}: no structure report for a {peft_type} adapter (reports cover design-space adapters with a "
        "plan and calibrated SAM adapters)."
    )


def _designspace_structure(adapter_dir, config: dict) -> Structure:
    from .card import report_from_saved, saved_adapter_name

    plan = config["plan"]
    name = saved_adapter_name(adapter_dir)  # a named adapter (PEFT's subfolder) is saved with its name in the card
    table = str(report_from_saved(adapter_dir, name)) if (Path(adapter_dir) / WEIGHTS_NAME).is_file() else ""
    columns = sorted({s for layer in plan["layers"] for s in layer["params"]})
    by_index = {layer["index"]: layer for layer in plan["layers"]}
    group_of = {i: g for g, members in enumerate(plan["groups"]) for i in members}
    rows, cells = [], []
    for i in range(plan["num_layers"]):
        rows.append(f"L{i} G{group_of.get(i, 0) + 1}")
        params = by_index.get(i, {}).get("params", {})
        cells.append([int(params.get(c, 0)) for c in columns])
    return Structure("parameters per layer and strategy", rows, columns, cells, table)


def _sam_structure(config: dict) -> Structure:
    from .card import _selection_table

    pattern = config["nnz_pattern"]
    grid: dict[int, dict[str, int]] = {}
    columns: list[str] = []
    outside = 0
    for key, count in pattern.items():
        match = LAYER_RE.search(key)
        if match is None:
            outside += count
            continue
        column = key[match.end() :]
        if column not in columns:
            columns.append(column)
        grid.setdefault(int(match.group(1)), {})[column] = count
    layers = sorted(grid)
    cells = [[grid[i].get(c, 0) for c in columns] for i in layers]
    table = "\n".join(_selection_table(pattern))
    return Structure(
        "selected entries per layer and tensor", [f"L{i}" for i in layers], columns, cells, table, {"outside": outside}
    )


def heatmap_text(structure: Structure) -> str:
    """The grid as text: one shade character per cell (darker = more), with the count; a legend line at the end."""
    peak = max((v for row in structure.cells for v in row), default=0) or 1
    width = max(8, *(len(c) for c in _short(structure.columns)))
    label = max((len(r) for r in structure.rows), default=0)
    lines = [structure.title, " " * label + " " + " ".join(f"{c:>{width}}" for c in _short(structure.columns))]
    for name, row in zip(structure.rows, structure.cells):
        cells = []
        for value in row:
            shade = SHADES[0] if value == 0 else SHADES[1 + min(3, int(4 * value / peak - 1e-9))]
            cells.append(f"{shade * 2}{_compact(value):>{width - 2}}")
        lines.append(f"{name:<{label}} " + " ".join(cells))
    lines.append(f"shades: {SHADES[1]} ≤25%  {SHADES[2]} ≤50%  {SHADES[3]} ≤75%  {SHADES[4]} >75% of the largest cell")
    return "\n".join(lines)


def plot_heatmap(structure: Structure, path: str | os.PathLike) -> Path:
    """Write the grid as an image (format from the suffix: .png, .pdf, .svg); needs matplotlib.

    The image is written to a temporary file in the same folder and renamed into place, so a failed write (e.g. a
    full disk) leaves a previous image at `path` untouched and no partial file behind.

    Args:
        structure (`Structure`): the grid, from `adapter_structure`.
        path (`str` or `os.PathLike`): the image to write (its folder must exist).

    Returns:
        `Path`: the image written.

    Raises:
        FileNotFoundError: if the folder of `path` does not exist.

    Example:

    ```py
    >>> plot_heatmap(adapter_structure("./adapter"), "structure.png")  # doctest: +SKIP
    PosixPath('structure.png')
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot write the image {str(path)!r}: its folder {str(folder)!r} does not exist.")
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(structure.columns), 0.8 + 0.35 * len(structure.rows)))
    try:
        image = ax.imshow(structure.cells, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(structure.columns)), _short(structure.columns), rotation=45, ha="right")
        ax.set_yticks(range(len(structure.rows)), structure.rows)
        ax.set_title(structure.title)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        # the format named explicitly: from the suffix of `path` (matplotlib's default without one), not of the copy
        image_format = path.suffix[1:].lower() or plt.rcParams["savefig.format"]
        with atomic_path(path, make_parents=False) as tmp:
            fig.savefig(tmp, format=image_format)
    finally:
        plt.close(fig)
    return path


def _short(columns: list[str]) -> list[str]:
    """Each label as its shortest dotted suffix that no other label shares (`.weight` dropped)."""
    parts = [c.removesuffix(".weight").split(".") for c in columns]
    short = []
    for i, p in enumerate(parts):
        k = 1
        while k < len(p) and any(q[-k:] == p[-k:] for j, q in enumerate(parts) if j != i):
            k += 1
        short.append(".".join(p[-k:]))
    return short


def _compact(value: int) -> str:
    if value >= 10_000_000:
        return f"{value / 1e6:.0f}M"
    if value >= 10_000:
        return f"{value / 1e3:.0f}k"
    return str(value)
