"""Constrained design spaces of the S4 method, and uniform sampling from them at a fixed budget.

The design-spaces paper (Chen et al., ICLR 2023; `docs/methods.md` 1.3) found S4 by refining a design space the RegNet
way. A *design* fixes the four components of a `DesignSpaceConfig`:

| component | values | default domain |
|---|---|---|
| `grouping` | pattern name or explicit group sizes | the 5 patterns of `grouping.py` |
| `allocation` | `uniform`, `increasing`, `decreasing` | all 3 |
| `tunable_groups` | non-empty set of group indices | all `2^K - 1` non-empty subsets |
| `group_strategies[g]` | non-empty set of strategies, per group | all 15 non-empty subsets of {A, B, L, P} |

A `DesignSpace` holds one domain per component (the strategy domain once per group); a *constraint* shrinks a
domain to one value (`constrain`). Sampling draws every component uniformly and independently from its domain, so
designs are uniform over the product space; designs whose plan misses the budget by more than ±2% are rejected and
redrawn, which keeps the samples uniform over the designs that meet it.

Example:

```py
>>> from peft_designspace.designspace.space import DesignSampler, DesignSpace, design_config
>>> from transformers import BertConfig, BertForSequenceClassification
>>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=8, num_attention_heads=2,
...                                                  intermediate_size=64, vocab_size=100))
>>> space = DesignSpace().constrain("grouping", "spindle")
>>> sampler = DesignSampler(model, budget=0.005)  # a transformers model (the base, without adapters)
>>> designs = sampler.sample(space, 20, seed=0)
>>> config = design_config(designs[0], budget=0.005, task_type="SEQ_CLS")
>>> len(designs), config.grouping
(20, 'spindle')
```
"""

import hashlib
import itertools
import json
import math
import random
import warnings
from dataclasses import dataclass, field

from torch import nn

from ..architecture import resolve_architecture
from .budget import TOLERANCE, InfeasibleBudgetError, build_plan
from .config import DesignSpaceConfig
from .grouping import ALLOCATIONS, GROUPING_PATTERNS, pattern_weights
from .model import count_base_parameters
from .presets import STRATEGIES

COMPONENTS = ("grouping", "allocation", "tunable_groups", "group_strategies")
MAX_TRIES_PER_SAMPLE = 200


def all_subsets(items: list | tuple) -> list[list]:
    """Every non-empty subset of `items`, smallest first, each sorted."""
    items = sorted(items)
    return [list(c) for r in range(1, len(items) + 1) for c in itertools.combinations(items, r)]


def _label(value) -> str:
    """Short text of a component value, for reports: `spindle`, `G1+G3`, `adapter+lora`, `1-2-2-1`."""
    if isinstance(value, str):
        return value
    if value and all(isinstance(v, int) for v in value):
        return "-".join(str(v) for v in value)
    return "+".join(str(v) for v in value)


def tunable_label(groups: list[int]) -> str:
    return "+".join(f"G{g + 1}" for g in groups)


@dataclass
class DesignSpace:
    """A design space: the allowed values of every component of a design.

    Args:
        num_groups (`int`, *optional*, defaults to `4`):
            Number of consecutive layer groups.
        groupings (`list`, *optional*):
            Allowed groupings: pattern names or explicit size lists. Defaults to all patterns.
        allocations (`list[str]`, *optional*):
            Allowed allocations. Defaults to all three.
        tunable_groups (`list[list[int]]`, *optional*):
            Allowed sets of tuned groups (0-based; group 0 is G1). Defaults to every non-empty subset.
        group_strategies (`list[list[list[str]]]`, *optional*):
            For every group, the allowed strategy sets. Defaults to the 15 non-empty subsets for each group.

    Raises:
        ValueError: an empty domain, an unknown or duplicated value, or values that contradict `num_groups`.
    """

    num_groups: int = 4
    groupings: list | None = None
    allocations: list[str] | None = None
    tunable_groups: list[list[int]] | None = None
    group_strategies: list[list[list[str]]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_groups, bool) or not isinstance(self.num_groups, int) or self.num_groups < 1:
            raise ValueError(f"`num_groups` must be a positive int, got {self.num_groups!r}.")
        k = self.num_groups
        if self.groupings is None:
            self.groupings = [p for p in GROUPING_PATTERNS if k >= 3 or p in ("uniform", "increasing", "decreasing")]
        if self.allocations is None:
            self.allocations = list(ALLOCATIONS)
        if self.tunable_groups is None:
            self.tunable_groups = all_subsets(range(k))
        if self.group_strategies is None:
            self.group_strategies = [all_subsets(STRATEGIES) for _ in range(k)]
        self._validate()

    def _validate(self) -> None:
        k = self.num_groups
        groupings = []
        for value in _domain("groupings", self.groupings):
            if isinstance(value, str):
                if value not in GROUPING_PATTERNS:
                    raise ValueError(f"`groupings` has unknown pattern {value!r}; allowed: {list(GROUPING_PATTERNS)}.")
                try:
                    pattern_weights(k, value)
                except ValueError as err:
                    raise ValueError(f"`groupings` contradicts `num_groups={k}`: {err}") from None
                groupings.append(value)
            elif isinstance(value, (list, tuple)) and all(isinstance(v, int) and v >= 1 for v in value):
                if len(value) != k:
                    raise ValueError(
                        f"`groupings` entry {list(value)} has {len(value)} sizes but `num_groups` is {k}; "
                        "they contradict each other."
                    )
                groupings.append(list(value))
            else:
                raise ValueError(
                    f"`groupings` entries must be pattern names or lists of positive ints, got {value!r}."
                )
        self.groupings = _unique("groupings", groupings)
        for value in _domain("allocations", self.allocations):
            if value not in ALLOCATIONS:
                raise ValueError(f"`allocations` has unknown value {value!r}; allowed: {list(ALLOCATIONS)}.")
        self.allocations = _unique("allocations", list(self.allocations))
        tunable = []
        for value in _domain("tunable_groups", self.tunable_groups):
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"`tunable_groups` entries must be non-empty lists of group indices, got {value!r}.")
            if not all(isinstance(g, int) and 0 <= g < k for g in value) or len(set(value)) != len(value):
                raise ValueError(
                    f"`tunable_groups` entry {list(value)} contradicts `num_groups={k}`: indices must be distinct "
                    f"and in range(0, {k})."
                )
            tunable.append(sorted(value))
        self.tunable_groups = _unique("tunable_groups", tunable)
        if not isinstance(self.group_strategies, (list, tuple)) or len(self.group_strategies) != k:
            raise ValueError(
                f"`group_strategies` must hold one domain per group ({k}), got {self.group_strategies!r}."
            )
        strategies = []
        for g, domain in enumerate(self.group_strategies):
            cleaned = []
            for value in _domain(f"group_strategies[{g}]", domain):
                if not isinstance(value, (list, tuple)) or not value or not set(value) <= set(STRATEGIES):
                    raise ValueError(
                        f"`group_strategies[{g}]` entries must be non-empty lists out of {list(STRATEGIES)}, "
                        f"got {value!r}."
                    )
                if len(set(value)) != len(value):
                    raise ValueError(f"`group_strategies[{g}]` entry {list(value)} lists a strategy twice.")
                cleaned.append(sorted(value))
            strategies.append(_unique(f"group_strategies[{g}]", cleaned))
        self.group_strategies = strategies

    @property
    def size(self) -> int:
        """Number of designs (tuples of component values) in the space."""
        return (
            len(self.groupings)
            * len(self.allocations)
            * len(self.tunable_groups)
            * math.prod(len(d) for d in self.group_strategies)
        )

    def domain(self, component: str, group: int | None = None) -> list:
        """Allowed values of `component` (and of group `group` for `group_strategies`)."""
        if component == "group_strategies":
            return [list(v) for v in self.group_strategies[self._group(group)]]
        attribute = {"grouping": "groupings", "allocation": "allocations", "tunable_groups": "tunable_groups"}
        if component not in attribute:
            raise ValueError(f"`component` must be one of {list(COMPONENTS)}, got {component!r}.")
        return [v if isinstance(v, str) else list(v) for v in getattr(self, attribute[component])]

    def constrain(self, component: str, value, group: int | None = None) -> "DesignSpace":
        """A new space where `component` (of group `group`) can only take `value`.

        Raises:
            ValueError: when `value` is not in the current domain (the constraint contradicts the space).
        """
        if component == "group_strategies" and isinstance(value, (list, tuple)):
            value = sorted(value)
        elif component == "tunable_groups" and isinstance(value, (list, tuple)):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        domain = self.domain(component, group)
        if value not in domain:
            where = f"{component}[{group}]" if component == "group_strategies" else component
            raise ValueError(f"The constraint `{where}={value!r}` contradicts the space: allowed values are {domain}.")
        data = self.to_dict()
        if component == "group_strategies":
            data["group_strategies"][self._group(group)] = [value]
        else:
            data[{"grouping": "groupings", "allocation": "allocations"}.get(component, component)] = [value]
        return DesignSpace.from_dict(data)

    def _group(self, group: int | None) -> int:
        if not isinstance(group, int) or not 0 <= group < self.num_groups:
            raise ValueError(f"`group` must be a group index in range(0, {self.num_groups}), got {group!r}.")
        return group

    def to_dict(self) -> dict:
        return json.loads(
            json.dumps(
                {
                    "num_groups": self.num_groups,
                    "groupings": self.groupings,
                    "allocations": self.allocations,
                    "tunable_groups": self.tunable_groups,
                    "group_strategies": self.group_strategies,
                }
            )
        )

    @classmethod
    def from_dict(cls, data: dict) -> "DesignSpace":
        unknown = sorted(set(data) - {"num_groups", "groupings", "allocations", "tunable_groups", "group_strategies"})
        if unknown:
            raise ValueError(f"Unknown design-space fields {unknown}.")
        return cls(**data)

    def draw(self, rng: random.Random) -> dict:
        """One design drawn uniformly from the product space (budget not checked)."""
        return {
            "grouping": _copy(rng.choice(self.groupings)),
            "allocation": rng.choice(self.allocations),
            "tunable_groups": list(rng.choice(self.tunable_groups)),
            "group_strategies": [list(rng.choice(d)) for d in self.group_strategies],
        }


def _domain(name: str, values) -> list:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"`{name}` must be a list of allowed values, got {values!r}.")
    if not values:
        raise ValueError(f"`{name}` is empty: the constrained space holds no design.")
    return list(values)


def _unique(name: str, values: list) -> list:
    seen = []
    for v in values:
        if v in seen:
            raise ValueError(f"`{name}` lists {v!r} twice.")
        seen.append(v)
    return seen


def _copy(value):
    return value if isinstance(value, str) else list(value)


def canonical_design(design: dict) -> dict:
    """The design with the strategies of untuned groups dropped (they do not change the model)."""
    tuned = sorted(design["tunable_groups"])
    return {
        "grouping": _copy(design["grouping"]),
        "allocation": design["allocation"],
        "tunable_groups": tuned,
        "group_strategies": [sorted(s) if g in tuned else None for g, s in enumerate(design["group_strategies"])],
    }


def design_key(design: dict, extra: dict | None = None) -> str:
    """A stable 16-hex-digit hash of the canonical design (and of `extra`, e.g. the budget and training settings)."""
    text = json.dumps({"design": canonical_design(design), "extra": extra or {}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def design_label(design: dict) -> str:
    """Readable one-line summary: `spindle | uniform | G1+G2 | adapter+lora / prefix`."""
    strategies = " / ".join(
        _label(s) for g, s in enumerate(design["group_strategies"]) if g in design["tunable_groups"]
    )
    return (
        f"{_label(design['grouping'])} | {design['allocation']} | "
        f"{tunable_label(design['tunable_groups'])} | {strategies}"
    )


def design_config(design: dict, budget: float, **kwargs) -> DesignSpaceConfig:
    """The `DesignSpaceConfig` of a design (`kwargs` go to the config: `task_type`, `adapter_mode`, ...)."""
    untuned_fill = [s if s is not None else ["bitfit"] for s in design["group_strategies"]]
    return DesignSpaceConfig(
        preset=None,
        budget=budget,
        num_groups=len(design["group_strategies"]),
        grouping=_copy(design["grouping"]),
        allocation=design["allocation"],
        tunable_groups=list(design["tunable_groups"]),
        group_strategies=[list(s) for s in untuned_fill],
        **kwargs,
    )


def check_num_samples(num_samples: object) -> None:
    """Raise a ValueError unless `num_samples` is an int >= 2 (an error distribution needs two samples)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(
            f"`num_samples` must be an int >= 2 (an error distribution needs at least two samples), "
            f"got {num_samples!r}."
        )


@dataclass
class DesignSampler:
    """Draws designs that meet a trainable-parameter budget on a given model, uniformly and reproducibly.

    Args:
        model (`nn.Module`): the base model (no adapters); only its layers and parameter count are read.
        budget (`float`): a fraction (< 1) of the base parameters or an absolute count (>= 1).
        tolerance (`float`, *optional*, defaults to `0.02`): accepted relative distance of the realised count.
        config_kwargs (`dict`, *optional*): further `DesignSpaceConfig` fields that change costs
            (`adapter_mode`, `lora_targets`, `bitfit_norms`, `layer_stacks`).
    """

    model: nn.Module
    budget: float
    tolerance: float = TOLERANCE
    config_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arch = resolve_architecture(self.model, self.config_kwargs.get("layer_stacks"))
        self.base_params = count_base_parameters(self.model)  # as get_peft_model counts (4-bit values included)
        self._realised: dict[str, int | None] = {}

    @property
    def target(self) -> int:
        return int(self.budget) if self.budget >= 1 else int(round(self.budget * self.base_params))

    def realised(self, design: dict) -> int | None:
        """Trainable parameters of the design's plan, or None when the budget is below the design's smallest plan.

        Raises:
            ValueError: the design cannot be planned on this model for another reason (e.g. group sizes that do not
                add up to its layers); reported as such rather than as a budget that was not met.
        """
        key = design_key(design)
        if key not in self._realised:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the tolerance is checked here, not warned about
                    config = design_config(design, self.budget, **self.config_kwargs)
                    self._realised[key] = build_plan(config, self.arch, self.base_params)["realised"]
            except InfeasibleBudgetError:
                self._realised[key] = None
        return self._realised[key]

    def meets_budget(self, design: dict) -> bool:
        realised = self.realised(design)
        return realised is not None and abs(realised - self.target) <= self.tolerance * self.target

    def sample(self, space: DesignSpace, num_samples: int, *, seed: int) -> list[dict]:
        """`num_samples` designs drawn uniformly (with replacement) from the designs of `space` that meet the budget.

        Raises:
            InfeasibleBudgetError: no design of the space (or too few of those tried) meets the budget within the
                tolerance.
            ValueError: `num_samples` < 2 (an error distribution needs two samples), or a design cannot be planned
                on this model for another reason (the planner's own message).
        """
        check_num_samples(num_samples)
        rng = random.Random(seed)
        designs: list[dict] = []
        tries = 0
        seen: list[int] = []
        distinct: set[str] = set()
        max_tries = MAX_TRIES_PER_SAMPLE * num_samples
        while len(designs) < num_samples:
            # give up when the tries run out, or early when nothing met the budget: every design of the space was
            # drawn, or MAX_TRIES_PER_SAMPLE draws in a row failed
            exhausted = not designs and (len(distinct) == space.size or tries >= MAX_TRIES_PER_SAMPLE)
            if tries >= max_tries or exhausted:
                self._raise_unmet(space, tries, len(designs), num_samples, seen)
            tries += 1
            design = space.draw(rng)
            distinct.add(design_key(design))
            if self.meets_budget(design):
                designs.append(design)
            elif self.realised(design) is not None:
                seen.append(self.realised(design))
        return designs

    def _raise_unmet(self, space: DesignSpace, tries: int, found: int, wanted: int, seen: list[int]) -> None:
        spread = f" (realised counts seen: {min(seen):,} to {max(seen):,})" if seen else " (every plan was infeasible)"
        raise InfeasibleBudgetError(
            f"The budget {self.budget!r} ({self.target:,} parameters, ±{self.tolerance:.0%}) is met by {found} of "
            f"{tries} designs drawn from a space of {space.size:,}{spread}, fewer than the {wanted} samples asked "
            "for. Change the budget or widen the space (strategies with a size: adapter, lora, prefix)."
        )
