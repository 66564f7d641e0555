"""From keep probabilities to a discrete structure under the budget, and the structure's JSON form.

- `greedy` (the paper's rule): candidates by `p`, descending (ties: search-space order); each is kept when it
  still fits in what is left of the budget.
- `knapsack`: the exact 0/1 knapsack maximising `Σ p_i` of the kept candidates under `Σ n_i ≤ B`, by dynamic
  programming over the budget in units of `g = gcd(n_i)` (`O(N·B/g)` time, and as many bytes); ties go to the DP's
  first optimum, which prefers earlier candidates.

A structure is a JSON-able dict:

```
{"format": "s3pet-structure", "version": 1, "budget": B, "base_params": N, "total": Σ kept sizes,
 "strategy": "greedy", "space": "m",
 "modules": [{"path": "...", "role": "query", "type": "lora", "layer": 0, "size": 128, "rank": 1, "p": 0.83}, ...]}
```
"""

import json
import math
import numbers
import os
from pathlib import Path

import numpy as np

from .._io import write_text_atomic
from .space import TYPES, Candidate

FORMAT = "s3pet-structure"
VERSION = 1
KNAPSACK_LIMIT = 500_000_000  # cells of the DP table (one byte each: 500 MB at most)


def greedy_select(p: list[float], sizes: list[int], budget: int) -> list[int]:
    """Indices kept by the greedy-by-probability rule (in the order they were kept)."""
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    kept, left = [], budget
    for i in order:
        if sizes[i] <= left:
            kept.append(i)
            left -= sizes[i]
    return kept


def knapsack_select(p: list[float], sizes: list[int], budget: int) -> list[int]:
    """Indices of an exact 0/1 knapsack optimum (maximum `Σ p`) under `Σ sizes ≤ budget` (ascending)."""
    unit = math.gcd(*sizes) if sizes else 1
    weights = [s // unit for s in sizes]
    capacity = budget // unit
    if len(p) * (capacity + 1) > KNAPSACK_LIMIT:
        raise ValueError(
            f"The exact knapsack needs {len(p)} × {capacity + 1:,} table cells (over {KNAPSACK_LIMIT:,}); use "
            "`strategy='greedy'` for this budget and search space."
        )
    best = np.zeros(capacity + 1)
    take = np.zeros((len(p), capacity + 1), dtype=bool)
    for i, (w, value) in enumerate(zip(weights, p)):
        if w > capacity:
            continue
        candidate = best[: capacity + 1 - w] + value
        better = candidate > best[w:] + 1e-15
        take[i, w:] = better
        best[w:] = np.where(better, candidate, best[w:])
    kept, c = [], capacity
    for i in range(len(p) - 1, -1, -1):
        if take[i, c]:
            kept.append(i)
            c -= weights[i]
    return sorted(kept)


def diverged_error(candidates: list[Candidate], indices: list[int], what: str) -> ValueError:
    """The error for a search whose `what` (e.g. "keep probabilities p") is inf or nan at `indices` of `candidates`.

    It names the affected candidates (`path:type`, the first three) and says how to recover.
    """
    keys = [candidates[i].key for i in indices[:3]]
    more = f" and {len(indices) - 3} more" if len(indices) > 3 else ""
    return ValueError(
        f"The S3PET search diverged: the {what} of {len(indices)} of {len(candidates)} candidates are not finite "
        f"(inf or nan), e.g. {', '.join(keys)}{more}. No structure can be derived from them: lower the "
        "architecture learning rate (`arch_learning_rate`) and search again, or derive the structure from an "
        "earlier checkpoint's α (`derive_structure(alpha=...)`)."
    )


def build_structure(
    candidates: list[Candidate], p: list[float], budget: int, base_params: int, strategy: str, space
) -> dict:
    """Discretise: keep candidates under `budget` by `strategy` (`"greedy"` or `"knapsack"`).

    Raises:
        ValueError: when a `p` is not a finite number (a diverged search; the error names the candidates), `p` and
            `candidates` differ in length, or no candidate fits in `budget`.
    """
    if len(p) != len(candidates):
        raise ValueError(f"`p` must hold one value per candidate ({len(candidates)}), got {len(p)}.")
    bad = [i for i, value in enumerate(p) if not _is_finite(value)]
    if bad:
        raise diverged_error(candidates, bad, "keep probabilities p")
    sizes = [c.size for c in candidates]
    if budget < min(sizes):
        raise ValueError(
            f"The budget {budget:,} is smaller than the smallest candidate ({min(sizes):,} parameters, "
            f"{candidates[sizes.index(min(sizes))].key}); no structure fits."
        )
    if strategy == "greedy":
        kept = greedy_select(p, sizes, budget)
    elif strategy == "knapsack":
        kept = knapsack_select(p, sizes, budget)
    else:
        raise ValueError(f"`strategy` must be 'greedy' or 'knapsack', got {strategy!r}.")
    modules = [{**candidates[i].to_dict(), "p": round(float(p[i]), 6)} for i in sorted(kept)]
    total = sum(m["size"] for m in modules)
    assert total <= budget, (total, budget)
    return {
        "format": FORMAT,
        "version": VERSION,
        "budget": int(budget),
        "base_params": int(base_params),
        "total": int(total),
        "strategy": strategy,
        "space": space,
        "modules": modules,
    }


def load_structure(structure) -> dict:
    """A structure from a dict or a JSON file path, checked for its format (module-level checks need the model).

    Each module needs a `path`, a `type` and its `size`; a `lora` module's `rank` defaults to 1, other types take
    none (or 0); `layer` (an int >= 0) and `role` (a string) are optional; a module may appear once per type. A
    hand-written structure may leave out `version` (1), `total` (filled with the sum of the sizes) and `budget`
    (filled with the total; never below it). The result is a copy; the input is not changed.
    """
    if isinstance(structure, (str, os.PathLike)):
        path = Path(structure)
        if not path.is_file():
            raise ValueError(f"`structure` {str(structure)!r} is not a file (expected a JSON written by the search).")
        try:
            structure = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"`structure` file {str(path)!r} is not valid JSON: {err}.") from err
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        raise ValueError(
            f"`structure` must be a dict or JSON file with format {FORMAT!r}: written by the search, or by hand with "
            f'"format": "{FORMAT}" and a "modules" list.'
        )
    version = structure.get("version", VERSION)
    if not _is_int(version):
        raise ValueError(f"`structure['version']` must be an int (1 to {VERSION}), got {version!r}.")
    if not 1 <= version <= VERSION:
        raise ValueError(
            f"`structure['version']` is {version!r}, but this release reads versions 1 to {VERSION}: upgrade "
            "peft-designspace to read a structure written by a newer one."
        )
    modules = structure.get("modules")
    if not isinstance(modules, list) or not modules:
        raise ValueError("`structure['modules']` must be a non-empty list of kept modules.")
    seen: dict[tuple[str, str], int] = {}
    for i, module in enumerate(modules):
        if not isinstance(module, dict) or module.get("type") not in TYPES or not isinstance(module.get("path"), str):
            raise ValueError(f"`structure['modules'][{i}]` must name a `path` and a `type` out of {list(TYPES)}.")
        if not _is_int(module.get("size")) or module["size"] < 1:
            raise ValueError(
                f"`structure['modules'][{i}]` ({module['path']}) must give its `size` (an int >= 1), got "
                f"{module.get('size')!r}."
            )
        module_rank(module, i)
        if "layer" in module and not (_is_int(module["layer"]) and module["layer"] >= 0):
            raise ValueError(
                f"`structure['modules'][{i}]` ({module['path']}) has `layer` {module['layer']!r}; it must be the "
                "index of the module's transformer layer (an int >= 0), or left out."
            )
        if "role" in module and not (isinstance(module["role"], str) and module["role"]):
            raise ValueError(
                f"`structure['modules'][{i}]` ({module['path']}) has `role` {module['role']!r}; it must be a "
                "non-empty string (the role the search found the module under), or left out."
            )
        if "p" in module and not _is_finite(module["p"]):
            raise ValueError(
                f"`structure['modules'][{i}]` ({module['path']}) has `p` {module['p']!r}; the keep probability must "
                "be a finite number (or left out): a structure with inf or nan comes from a diverged search."
            )
        key = (module["path"], module["type"])
        if key in seen:
            raise ValueError(
                f"`structure['modules'][{i}]` repeats the {module['type']!r} module on {module['path']!r} (already "
                f"module {seen[key]}); each module may hold each type once."
            )
        seen[key] = i
    structure = dict(structure)
    # numpy or torch numbers in `p` become floats: the copy must save as JSON (and read back) like the search's own
    structure["modules"] = [{**m, "p": float(m["p"])} if "p" in m else dict(m) for m in modules]
    total = sum(m["size"] for m in modules)
    if not _is_int(structure.setdefault("total", total)):
        raise ValueError(
            f"`structure['total']` must be an int (the sum of the modules' sizes, {total:,}), got "
            f"{structure['total']!r}; fix it or leave it out."
        )
    if structure["total"] != total:
        raise ValueError(
            f"`structure['total']` is {structure['total']!r}, but the modules' sizes add up to {total:,}; fix it "
            "or leave it out."
        )
    if not _is_int(structure.setdefault("budget", total)):
        raise ValueError(
            f"`structure['budget']` must be an int (a parameter count >= the total, {total:,}), got "
            f"{structure['budget']!r}; fix it or leave it out."
        )
    if structure["budget"] < total:
        raise ValueError(
            f"`structure['budget']` is {structure['budget']!r}, but the kept modules hold {total:,} parameters: a "
            "structure never exceeds its budget. Give an int >= the total, or leave it out."
        )
    return structure


def module_rank(module: dict, index: int) -> int:
    """The rank of `structure['modules'][index]`: a positive int for `lora` (1 when left out), 0 for other types.

    Raises:
        ValueError: for a `lora` rank that is not a positive int, or a rank other than 0 on another type.
    """
    rank, kind = module.get("rank"), module["type"]
    if kind == "lora":
        if rank is None:
            return 1
        if not _is_int(rank) or rank < 1:
            raise ValueError(
                f"`structure['modules'][{index}]` ({module['path']}) has `rank` {rank!r}; a 'lora' module needs a "
                "positive int (1 when left out)."
            )
        return rank
    if rank is not None and not (_is_int(rank) and rank == 0):
        raise ValueError(
            f"`structure['modules'][{index}]` ({module['path']}) has `rank` {rank!r}, but a {kind!r} module takes no "
            "rank: leave it out or set 0."
        )
    return 0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    """A finite real number: Python, numpy or a one-element torch tensor (`float()` of it); not a bool or a string."""
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _json_value(value: object) -> object:
    """What strict JSON holds for a value `json` does not know: numbers (numpy, one-element tensors) as numbers, a
    path as its string; anything else as its `str` (a number written as a string would not read back as one)."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:  # a torch tensor
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def save_structure(structure: dict, path: str | os.PathLike) -> Path:
    """Write `structure` as strict JSON through a temporary file in the same folder, then rename it into place.

    Raises:
        ValueError: when `structure` holds inf or nan (which strict JSON cannot hold); nothing is written then.
    """
    try:
        text = json.dumps(structure, indent=2, default=_json_value, allow_nan=False)
    except ValueError as err:
        modules = structure.get("modules") if isinstance(structure, dict) else None
        bad = [
            str(m.get("path"))
            for m in modules or []
            if isinstance(m, dict) and "p" in m and isinstance(m["p"], numbers.Real) and not _is_finite(m["p"])
        ]
        where = f" (`p` of {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''})" if bad else ""
        raise ValueError(
            f"The structure holds inf or nan{where}, which strict JSON cannot hold: it comes from a diverged search. "
            f"Nothing was written to {str(path)!r}."
        ) from err
    return write_text_atomic(path, text + "\n")
