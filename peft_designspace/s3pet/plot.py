"""Heatmaps of S3PET structures: kept modules (layers × candidate kinds) and keep probabilities after search."""

import os
import re
from pathlib import Path

from .space import TYPES


def _row_name(module: dict) -> str:
    inside_layer = re.sub(r"^.*?\.\d+\.", "", module["path"], count=1)  # the path relative to its layer
    return f"{module['type']} @ {inside_layer}"


def structure_grid(
    modules: list[dict], value_key: str | None = None, frame: list[dict] | None = None
) -> tuple[list[str], list[int], list[list[float]]]:
    """`(rows, layers, grid)`: one row per `type @ module inside the layer`, one column per layer.

    Cells hold 1 for each module (or its `value_key`); `frame` (e.g. every candidate) fixes the rows and columns.
    """
    frame = frame or modules
    rows = sorted({_row_name(m) for m in frame}, key=lambda r: (TYPES.index(r.split(" @ ")[0]), r))
    layers = sorted({m["layer"] for m in frame})
    grid = [[0.0] * len(layers) for _ in rows]
    for m in modules:
        i, j = rows.index(_row_name(m)), layers.index(m["layer"])
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
    fig.suptitle(
        title or f"S3PET structure: {structure['total']:,} of {structure['budget']:,} parameters", fontsize=10
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
