"""Heatmaps of S3PET structures: kept modules (layers × candidate kinds), keep probabilities after search, and
every candidate's keep probability over the search steps."""

import math
import os
import re
from pathlib import Path

from .._io import atomic_path
from .space import TYPES, candidate_key

MAX_LABELLED_ROWS = 150  # trajectory rows that get a label each (4-pt text, 0.12 inch per row)


def _stack(module: dict) -> str:
    """The path of a module's layer list (`encoder.block` for `encoder.block.0.layer.1.layer_norm`), or `""`."""
    found = re.match(r"^(.*?)\.\d+\.", module["path"])
    return found.group(1) if found else ""


def _row_name(module: dict, with_stack: bool = False) -> str:
    inside_layer = re.sub(r"^.*?\.\d+\.", "", module["path"], count=1)  # the path relative to its layer
    if with_stack and _stack(module):  # models with two layer lists (T5): the same inner path is another module
        inside_layer = f"{_stack(module)}/{inside_layer}"
    return f"{module['type']} @ {inside_layer}"


def _has_stacks(modules: list[dict]) -> bool:
    return len({_stack(m) for m in modules} - {""}) > 1


def module_layer(module: dict) -> int:
    """The layer (heatmap column) of a module: its `layer`, or for a hand-written module without one the first
    integer in its path (its index in the layer list, e.g. 3 for `bert.encoder.layer.3.output.dense`), or -1 when
    the path has none.

    In a model with two stacks (T5) the path's integer restarts at 0 in the decoder, so hand-written encoder and
    decoder modules share columns; structures written by the search carry `layer` (decoder layers after the encoder's).
    """
    if "layer" in module:
        return int(module["layer"])
    found = re.search(r"(?:^|\.)(\d+)(?:\.|$)", module["path"])
    return int(found.group(1)) if found else -1


def structure_grid(
    modules: list[dict], value_key: str | None = None, frame: list[dict] | None = None
) -> tuple[list[str], list[int], list[list[float]]]:
    """`(rows, layers, grid)`: one row per `type @ module inside the layer`, one column per layer.

    Cells hold 1 for each module (or its `value_key`), 0 for a module of `frame` (e.g. every candidate) that is not
    in `modules`, and NaN where `frame` has no module at all (drawn blank, apart from a real 0). `frame` fixes the
    rows and columns. Columns come from `module_layer()` (a module without `layer` is placed by the first integer in
    its path). In a model with two layer lists (T5's encoder and decoder), rows name the list too
    (`lnfit @ encoder.block/layer.1.layer_norm`): the same inner path is another module in each.
    """
    frame = frame or modules
    stacks = _has_stacks(frame)
    start: dict[str, tuple[int, int]] = {}  # each layer list's first layer, then its first appearance in `frame`:
    for i, m in enumerate(frame):  # T5's encoder rows come before the decoder's (also when hand-written paths
        stack = _stack(m)  # restart their layer numbers in the decoder)
        start[stack] = min(start.get(stack, (module_layer(m), i)), (module_layer(m), i))
    names = {_row_name(m, stacks): start[_stack(m)] if stacks else (0, 0) for m in frame}
    rows = sorted(names, key=lambda r: (TYPES.index(r.split(" @ ")[0]), names[r], r))
    layers = sorted({module_layer(m) for m in frame})
    row_of, column_of = {r: i for i, r in enumerate(rows)}, {layer: j for j, layer in enumerate(layers)}
    grid = [[math.nan] * len(layers) for _ in rows]
    for m in frame:
        grid[row_of[_row_name(m, stacks)]][column_of[module_layer(m)]] = 0.0
    for m in modules:
        i, j = row_of[_row_name(m, stacks)], column_of[module_layer(m)]
        value = float(m[value_key]) if value_key else 1.0
        grid[i][j] = value if math.isnan(grid[i][j]) else max(grid[i][j], value)
    return rows, layers, grid


def _stack_boundaries(frame: list[dict], layers: list[int]) -> list[float]:
    """x positions between two columns whose layers belong to different layer lists (encoder | decoder).

    None when a column holds modules of several lists (hand-written T5 paths without `layer`, numbered from 0 in both).
    """
    stacks_of: dict[int, set[str]] = {}
    for m in frame:
        stacks_of.setdefault(module_layer(m), set()).add(_stack(m))
    if any(len(found) > 1 for found in stacks_of.values()):
        return []
    return [j - 0.5 for j in range(1, len(layers)) if stacks_of[layers[j]] != stacks_of[layers[j - 1]]]


def _colormap(name: str) -> "matplotlib.colors.Colormap":  # noqa: F821 - matplotlib is imported lazily
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#e6e6e6")  # bad (NaN): no candidate there


def plot_structure(
    structure: dict, path: str | os.PathLike, probabilities: list[dict] | None = None, title: str | None = None
) -> Path:
    """Save a PNG heatmap of the kept modules (and, when given, of every candidate's keep probability).

    Args:
        structure (`dict`): a structure from `derive_structure`.
        path (`str` or `os.PathLike`): the PNG to write (through a temporary file, then renamed).
        probabilities (`list[dict]`, *optional*): every candidate as a dict with `p` (e.g. `candidate.to_dict()`
            plus `p`), drawn as a second panel.
        title (`str`, *optional*): figure title.

    Example:

    ```py
    >>> plot_structure(structure, "outputs/structure.png")  # doctest: +SKIP
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("kept modules", structure["modules"], None)]
    if probabilities:
        panels.append(("keep probability after search", probabilities, "p"))
    frame = probabilities or structure["modules"]
    all_rows, all_layers, _ = structure_grid(frame)
    width = min(16.0, max(6.0, 0.16 * len(all_layers) + 3))  # deep models (T5-large: 48 layers) get wider panels
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 0.35 * len(all_rows) + 2), squeeze=False)
    every = math.ceil(len(all_layers) / 32)  # at most about 32 layer labels per panel
    for ax, (name, modules, key) in zip(axes[0], panels):
        rows, layers, grid = structure_grid(modules, key, frame)
        cmap = _colormap("viridis" if key else "Greens")
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(0, len(layers), every), layers[::every], fontsize=7)
        for x in _stack_boundaries(frame, layers):
            ax.axvline(x, color="crimson", linewidth=1.2)
        ax.set_xlabel("layer" + (" (red line: next layer list, e.g. encoder | decoder)" if _has_stacks(frame) else ""))
        ax.set_title(f"{name} (grey: {'no candidate' if probabilities else 'not kept'})", fontsize=9)
        if key:
            fig.colorbar(image, ax=ax, fraction=0.04)
    total = structure.get("total", sum(m["size"] for m in structure["modules"]))
    budget = structure.get("budget", total)
    fig.suptitle(title or f"S3PET structure: {total:,} of {budget:,} parameters", fontsize=10)
    return _save(fig, path, dpi=120)


def plot_trajectory(
    history: list[list[float]],
    steps: list[int],
    candidates: list[dict],
    kept: set[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Save a PNG heatmap of every candidate's keep probability over the search steps.

    Rows are the candidates, sorted by their last keep probability (highest on top); kept ones are marked `■` in
    the row labels. Columns are the α steps in `steps`. Above `MAX_LABELLED_ROWS` candidates the rows are not
    labelled (the figure keeps that height) and kept ones get a red mark at the left edge.

    Args:
        history (`list[list[float]]`): one list of keep probabilities per recorded step, in candidate order.
        steps (`list[int]`): the global step of each entry of `history`.
        candidates (`list[dict]`): the candidates (e.g. `candidate.to_dict()`), in the order of `history`'s entries.
        kept (`set[str]`): `"path:type"` of the candidates the structure kept.
        path (`str` or `os.PathLike`): the PNG to write (through a temporary file, then renamed).
        title (`str`, *optional*): figure title.

    Example:

    ```py
    >>> steps, history = zip(*((step, p.tolist()) for step, p in trainer.p_history))  # doctest: +SKIP
    >>> plot_trajectory(list(history), list(steps), candidates, kept, "trajectory.png")  # doctest: +SKIP
    ```
    """
    if not history or len(history) != len(steps):
        raise ValueError(
            f"`history` must hold one entry per step and at least one, got {len(history)} entries for "
            f"{len(steps)} steps."
        )
    if any(len(row) != len(candidates) for row in history):
        raise ValueError(f"every `history` entry must have one value per candidate ({len(candidates)}).")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(candidates)), key=lambda i: -history[-1][i])
    grid = [[row[i] for row in history] for i in order]
    labels = []
    for i in order:
        c = candidates[i]
        mark = "■ " if candidate_key(c["path"], c["type"]) in kept else ""
        labels.append(f"{mark}{_row_name(c)}, layer {module_layer(c)}")
    top = max(max(row) for row in history)  # the colours span the values reached, not [0, 1]
    labelled = len(labels) <= MAX_LABELLED_ROWS
    fig, ax = plt.subplots(figsize=(8, 0.12 * len(labels) + 2 if labelled else 0.12 * MAX_LABELLED_ROWS + 2))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(top, 1e-6), interpolation="nearest")
    if labelled:
        ax.set_yticks(range(len(labels)), labels, fontsize=4)
    else:  # one label per row would make a figure tens of thousands of pixels tall: kept rows get a mark instead
        ax.set_yticks([])
        ax.set_ylabel(f"{len(labels)} candidates, sorted by last keep probability (red: kept)", fontsize=7)
        marks = [row for row, label in enumerate(labels) if label.startswith("■")]
        ax.scatter([-0.5] * len(marks), marks, marker="_", s=30, color="red", clip_on=False, linewidths=0.8)
    ticks = sorted({0, len(steps) - 1, *range(0, len(steps), max(1, len(steps) // 8))})
    ax.set_xticks(ticks, [steps[t] for t in ticks], fontsize=7)
    ax.set_xlabel("step")
    fig.colorbar(image, ax=ax, fraction=0.04, label="keep probability")
    ax.set_title(title or "S3PET search: keep probability per candidate (■ kept)", fontsize=9)
    return _save(fig, path, dpi=150)


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Write `fig` as a PNG at `path` atomically (`_io.atomic_path`: no half-written file), then close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)
