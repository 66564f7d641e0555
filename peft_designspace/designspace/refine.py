"""Comparing design spaces by their error distributions, and the paper's greedy stage-wise refinement.

RegNet's tool (followed by Chen et al., `docs/methods.md` 1.3): sample `n` designs from a space, train each cheaply,
and compare spaces through the empirical distribution function (EDF) of the errors,

    F(e) = (1/n) · Σ_i 1[e_i < e],

a space whose EDF lies further left (more designs with small errors) being better. The refinement fixes one
component per stage in the paper's order, grouping → allocation → tunable groups → strategies of G1, G2, ...,
keeping at each stage the candidate constraint with the lowest mean error (ties: lower median, then the earlier
candidate). This module is pure arithmetic; training and plotting live in `trainer_ext.explore`.

Example:

```py
>>> round(summarize([0.2, 0.1, 0.3])["mean"], 6)
0.2
>>> edf([0.2, 0.1, 0.3], 0.25)
0.6666666666666666
>>> select_best({"spindle": [0.1, 0.2], "uniform": [0.3, 0.2]})
'spindle'
```
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One refinement stage: the component it constrains (and the group, for strategies)."""

    component: str
    group: int | None = None

    @property
    def name(self) -> str:
        return f"strategies_G{self.group + 1}" if self.component == "group_strategies" else self.component

    @property
    def title(self) -> str:
        titles = {
            "grouping": "Layer grouping",
            "allocation": "Parameter allocation",
            "tunable_groups": "Tunable groups",
        }
        return f"Strategies of G{self.group + 1}" if self.group is not None else titles[self.component]


def paper_stages(num_groups: int) -> list[Stage]:
    """The paper's order: grouping, allocation, tunable groups, then the strategies of G1, G2, ... in turn."""
    return [
        Stage("grouping"),
        Stage("allocation"),
        Stage("tunable_groups"),
        *(Stage("group_strategies", g) for g in range(num_groups)),
    ]


def _check_errors(errors) -> list[float]:
    values = [float(e) for e in errors]
    if not values:
        raise ValueError("`errors` is empty: an error distribution needs at least one sample.")
    if any(math.isnan(e) for e in values):
        raise ValueError(f"`errors` holds NaN: {values}.")
    return values


def edf(errors, at: float) -> float:
    """RegNet's error EDF at `at`: the share of errors strictly below it."""
    values = _check_errors(errors)
    return sum(e < at for e in values) / len(values)


def edf_curve(errors) -> tuple[list[float], list[float]]:
    """Points of the EDF as a right-continuous step function: sorted errors and the share of errors `<=` each.

    Plot with `plt.step(xs, ys, where="post")`: at each sorted error the curve jumps by the share of samples equal
    to it. (The EDF at `e` itself, strict `<`, is the value just before the jump.)
    """
    values = sorted(_check_errors(errors))
    n = len(values)
    xs, ys = [], []
    for i, e in enumerate(values):
        if i + 1 < n and values[i + 1] == e:
            continue
        xs.append(e)
        ys.append((i + 1) / n)
    return xs, ys


def summarize(errors) -> dict:
    """`n`, `mean`, `std` (sample standard deviation, 0 for a single value), `min`, `median` and `max`."""
    values = _check_errors(errors)
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((e - mean) ** 2 for e in values) / (n - 1)) if n > 1 else 0.0
    ordered = sorted(values)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"n": n, "mean": mean, "std": std, "min": ordered[0], "median": median, "max": ordered[-1]}


def select_best(candidate_errors: dict) -> str:
    """The candidate whose errors have the lowest mean (ties: lower median, then the earlier candidate).

    Args:
        candidate_errors (`dict[str, list[float]]`): errors of the samples of each candidate, in candidate order.

    Raises:
        ValueError: when there is no candidate or a candidate has no errors.
    """
    if not candidate_errors:
        raise ValueError("`candidate_errors` is empty: a stage needs at least one candidate.")
    order = {name: i for i, name in enumerate(candidate_errors)}
    stats = {name: summarize(errors) for name, errors in candidate_errors.items()}
    return min(stats, key=lambda name: (stats[name]["mean"], stats[name]["median"], order[name]))


def stage_table(summaries: dict, best: str) -> str:
    """Markdown table of a stage: one row per candidate with n, mean ± std, min, median, max; the best in bold."""
    lines = [
        "| candidate | samples | error mean ± std | min | median | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in summaries.items():
        label = f"**{name}** (kept)" if name == best else name
        lines.append(
            f"| {label} | {s['n']} | {s['mean']:.4f} ± {s['std']:.4f} | {s['min']:.4f} | {s['median']:.4f} "
            f"| {s['max']:.4f} |"
        )
    return "\n".join(lines)
