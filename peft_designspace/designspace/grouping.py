"""Layer grouping and parameter allocation of the design space (Chen et al., ICLR 2023, sections 1.2-1.4 of
`docs/methods.md`).

A stack of `N` layers is cut into `num_groups` consecutive groups; group 0 (the paper's G1) holds the bottom layers.
The pattern gives the *relative* group sizes, which are apportioned to integers (largest remainder, every group at
least one layer):

| pattern | weights for 4 groups | N = 12 | N = 24 |
|---|---|---|---|
| `increasing` | 1, 2, 3, 6 | (1, 2, 3, 6) | (2, 4, 6, 12) |
| `uniform` | 1, 1, 1, 1 | (3, 3, 3, 3) | (6, 6, 6, 6) |
| `decreasing` | 6, 3, 2, 1 | (6, 3, 2, 1) | (12, 6, 4, 2) |
| `spindle` | 1, 2, 2, 1 | (2, 4, 4, 2) | (4, 8, 8, 4) |
| `bottleneck` | 2, 1, 1, 2 | (4, 2, 2, 4) | (8, 4, 4, 8) |

For other group counts: `increasing` uses 1, 2, ..., K-1 and then the sum of those (K >= 3), `spindle` puts weight
1 on the two end groups and 2 inside, `bottleneck` the reverse.

Example:

```py
>>> group_sizes(12, 4, "spindle")
[2, 4, 4, 2]
>>> allocation_weights(4, "increasing")
[1.0, 2.0, 3.0, 4.0]
```
"""

GROUPING_PATTERNS = ("bottleneck", "decreasing", "increasing", "spindle", "uniform")
ALLOCATIONS = ("decreasing", "increasing", "uniform")


def pattern_weights(num_groups: int, pattern: str) -> list[float]:
    """Relative sizes of the groups for a named pattern."""
    if pattern not in GROUPING_PATTERNS:
        raise ValueError(f"`grouping` must be one of {list(GROUPING_PATTERNS)} or a list of sizes, got {pattern!r}.")
    k = num_groups
    if pattern == "uniform" or k == 1:
        return [1.0] * k
    if pattern in ("increasing", "decreasing"):
        weights = [float(i) for i in range(1, k)] + [float(sum(range(1, k)))] if k >= 3 else [1.0, 2.0]
        return weights if pattern == "increasing" else weights[::-1]
    if k == 2:
        raise ValueError(f"`grouping={pattern!r}` needs at least 3 groups (it has distinct ends and middle), got 2.")
    ends, middle = (1.0, 2.0) if pattern == "spindle" else (2.0, 1.0)
    return [ends] + [middle] * (k - 2) + [ends]


def apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integers proportional to `weights`, each at least 1 (largest remainder method)."""
    if total < len(weights):
        raise ValueError(f"Cannot cut {total} layers into {len(weights)} non-empty groups; use fewer `num_groups`.")
    scale = sum(weights)
    quotas = [total * w / scale for w in weights]
    sizes = [max(1, int(q)) for q in quotas]
    # remainders are taken after raising small groups to 1, so a raised group never jumps ahead of a bigger one
    while sum(sizes) < total:
        i = max(range(len(sizes)), key=lambda i: (quotas[i] - sizes[i], -i))
        sizes[i] += 1
    while sum(sizes) > total:  # only when some groups were raised to 1: take from the most oversized group
        i = max((i for i in range(len(sizes)) if sizes[i] > 1), key=lambda i: (sizes[i] - quotas[i], -i))
        sizes[i] -= 1
    return sizes


def _strictly_monotone(total: int, weights: list[float], sizes: list[int]) -> list[int]:
    """`sizes` made strictly monotone, as the increasing and decreasing patterns are defined, where that is possible.

    Rounding can tie two neighbours (10 layers by 1:2:3:6 give 1, 2, 2, 5). Then the groups get the smallest strict
    shape (1, 2, ..., k) plus the rest of the layers apportioned by the weights (10 layers give 1, 2, 3, 4). With fewer
    than k(k+1)/2 layers no strict shape exists and `sizes` is kept.
    """
    k = len(sizes)
    ascending = weights[0] <= weights[-1]
    order = sizes if ascending else sizes[::-1]
    if all(a < b for a, b in zip(order, order[1:])) or total < k * (k + 1) // 2:
        return sizes
    ranked = sorted(weights)
    extra = total - k * (k + 1) // 2
    quotas = [extra * w / sum(ranked) for w in ranked]
    add = [int(q) for q in quotas]
    while sum(add) < extra:  # largest remainder; a tie goes to the later (larger) group, which keeps `add` monotone
        i = max(range(k), key=lambda i: (quotas[i] - add[i], i))
        add[i] += 1
    strict = [i + 1 + a for i, a in enumerate(add)]
    return strict if ascending else strict[::-1]


def group_sizes(num_layers: int, num_groups: int, grouping: str | list[int]) -> list[int]:
    """Number of consecutive layers in each group, bottom group first.

    Args:
        num_layers (`int`): layers in the stack.
        num_groups (`int`): number of groups.
        grouping (`str` or `list[int]`): a pattern name, or explicit sizes that must sum to `num_layers`.
    """
    if grouping == "decreasing":  # the mirror image of increasing (rounding ties went to the bottom in both)
        return group_sizes(num_layers, num_groups, "increasing")[::-1]
    if isinstance(grouping, str):
        weights = pattern_weights(num_groups, grouping)
        sizes = apportion(num_layers, weights)
        if grouping in ("increasing", "decreasing"):
            sizes = _strictly_monotone(num_layers, weights, sizes)
        return sizes
    sizes = list(grouping)
    if sum(sizes) != num_layers:
        raise ValueError(
            f"`grouping` sizes {sizes} sum to {sum(sizes)}, but the stack has {num_layers} layers; "
            "explicit sizes must add up to the number of layers."
        )
    return sizes


def assign_groups(num_layers: int, num_groups: int, grouping: str | list[int]) -> list[int]:
    """Group index of every layer of a stack of `num_layers` layers."""
    groups: list[int] = []
    for g, size in enumerate(group_sizes(num_layers, num_groups, grouping)):
        groups.extend([g] * size)
    return groups


def allocation_weights(num_layers: int, allocation: str) -> list[float]:
    """Relative share of the budget of each layer (bottom first): flat, growing or shrinking linearly with depth."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"`allocation` must be one of {list(ALLOCATIONS)}, got {allocation!r}.")
    if allocation == "uniform":
        return [1.0] * num_layers
    weights = [float(i + 1) for i in range(num_layers)]
    return weights if allocation == "increasing" else weights[::-1]
