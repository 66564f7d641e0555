"""Heatmaps of S3PET structures: kept modules (layers × candidate kinds), keep probabilities after search, and
every candidate's keep probability over the search steps."""

import os
import re
from pathlib import Path

from .._io import atomic_path
from .space import TYPES, candidate_key


def _row_name(module: dict) -> str:
    inside_layer = re.sub(r"^.*?\.\d+\.", "", module["path"], count=1)  # the path relative to its layer
    return f"{module['type']} @ {inside_layer}"


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

    Cells hold 1 for each module (or its `value_key`); `frame` (e.g. every candidate) fixes the rows and columns.
    Columns come from `module_layer()` (a module without `layer` is placed by the first integer in its path).
    """
    frame = frame or modules
    rows = sorted({_row_name(m) for m in frame}, key=lambda r: (TYPES.index(r.split(" @ ")[0]), r))
    layers = sorted({module_layer(m) for m in frame})
    grid = [[0.0] * len(layers) for _ in rows]
    for m in modules:
        i, j = rows.index(_row_name(m)), layers.index(module_layer(m))
        grid[i][j] = max(grid[i][j], float(m[value_key]) if value_key else 1.0)
    return rows, layers, grid


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
    all_rows = structure_grid(frame)[0]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 0.35 * len(all_rows) + 2), squeeze=False)
    for ax, (name, modules, key) in zip(axes[0], panels):
        rows, layers, grid = structure_grid(modules, key, frame)
        image = ax.imshow(grid, aspect="auto", cmap="viridis" if key else "Greens", vmin=0, vmax=1)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(layers)), layers, fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(name, fontsize=9)
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
    the row labels. Columns are the α steps in `steps`.

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
    fig, ax = plt.subplots(figsize=(8, 0.12 * len(labels) + 2))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(top, 1e-6), interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels, fontsize=4)
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
