"""From a `DesignSpaceConfig` and a model's layers to a concrete plan: which module gets what, and how big.

Budget rule (`docs/methods.md` 1.4, made exact):

1. `B` = `budget × base parameters` (or `budget` itself when >= 1).
2. Layers of the tuned groups share `B` by the allocation weights: `b_l = B · w_l / Σ w`.
3. Inside a layer, fixed costs come first (BitFit, and strategies with an explicit size); the rest of `b_l` is split
   equally between the sized strategies (adapter width, prefix length, LoRA rank), each rounded down, at least 1.
4. A greedy pass then adds one size unit at a time to the strategy furthest below its share while the total stays
   within `B`, and takes one last unit if that lands closer to `B`. The total ends within one size unit of `B`.

Per-layer cost of each strategy (exact, from the module shapes):

| strategy | cost |
|---|---|
| adapter, width r, sequential | Σ over attention-output and FFN-output projections of `2·out·r + r + out` |
| adapter, width r, parallel | Σ of `(in + out)·r + r + out` |
| prefix, length P | `2·P·kv_heads·head_dim` |
| LoRA, rank r | Σ over the targeted projections of `r·(in + out)` |
| BitFit | Σ `out` over every linear of the layer, plus the size of each norm included |
"""

import math
import warnings
from dataclasses import dataclass

from .._warnings import DesignSpaceWarning
from ..architecture import ArchitectureInfo, LayerInfo
from .config import DesignSpaceConfig
from .grouping import allocation_weights, assign_groups

SIZED = ("adapter", "lora", "prefix")
FIELDS = {"adapter": "adapter_size", "lora": "lora_rank", "prefix": "prefix_length"}  # the size fields of SIZED
TOLERANCE = 0.02  # methods.md §1.3/§1.5: the realised total is within ±2% of the budget


class InfeasibleBudgetError(ValueError):
    """The budget cannot be met by a design: below its smallest plan, or met by none of the designs sampled.

    A `ValueError`, so existing handlers keep working; the design sampler treats only this error as "the design does
    not fit the budget" and lets every other planning error (group sizes, layer count) reach the user.
    """


@dataclass
class LayerCosts:
    """Cost model of one layer: `cost = const + unit × size` for each sized strategy, plus BitFit's fixed cost."""

    layer: LayerInfo
    lora_modules: list[str]
    adapter_sites: list[str]
    unit: dict[str, int]
    const: dict[str, int]
    bitfit_modules: list[str]
    bitfit: int

    def cost(self, strategy: str, size: int) -> int:
        if strategy == "bitfit":
            return self.bitfit if size else 0
        return self.const[strategy] + self.unit[strategy] * size if size else 0


def _unique(paths: list[str]) -> list[str]:
    return list(dict.fromkeys(paths))


def layer_costs(layer: LayerInfo, config: DesignSpaceConfig, strategies: set[str]) -> LayerCosts:
    """Build the cost model of `layer`; raise a clear error if a strategy has nowhere to go in it."""
    lora_modules = _unique([p for role in config.lora_targets for p in layer.modules_for(role)])
    sites = [path for role in config.adapter_sites for path in layer.modules_for(role)[:1]]
    unit, const = {}, {}
    if not layer.roles and strategies - {"bitfit"}:
        raise ValueError(
            f"No module of layer {layer.path!r} has a known role (attention, projections, FFN): role detection "
            "(`peft_designspace.architecture.ROLE_PATTERNS`) does not know this architecture's module names, so only "
            f"BitFit can be placed on it, not {sorted(strategies - {'bitfit'})}. `layer_stacks` cannot help here: "
            "the layers were found, their modules were not recognised."
        )
    if "lora" in strategies and not lora_modules:
        raise ValueError(
            f"`lora_targets={config.lora_targets}` matched no projection in layer {layer.path!r}; found roles "
            f"{sorted(layer.roles)}. Choose other roles, or pass `layer_stacks` if the layers were misdetected."
        )
    if "adapter" in strategies and not sites:
        raise ValueError(
            f"No projection of the adapter sites found in layer {layer.path!r} for the `adapter` strategy "
            f"(searched roles {config.adapter_sites} of `adapter_sites`; found {sorted(layer.roles)})."
        )
    if "prefix" in strategies and layer.attention_heads is None:
        raise ValueError(
            f"No self-attention module with known head sizes found in layer {layer.path!r} for the `prefix` strategy "
            f"(searched role 'attention'; found {sorted(layer.roles)})."
        )
    unit["lora"] = sum(sum(layer.features[p]) for p in lora_modules)
    const["lora"] = 0
    if config.adapter_mode == "sequential":
        unit["adapter"] = sum(2 * layer.features[p][1] + 1 for p in sites)
    else:
        unit["adapter"] = sum(layer.features[p][0] + layer.features[p][1] + 1 for p in sites)
    const["adapter"] = sum(layer.features[p][1] for p in sites)
    kv_heads, head_dim = layer.attention_heads or (0, 0)
    unit["prefix"], const["prefix"] = 2 * kv_heads * head_dim, 0
    norms = [n for n in layer.norms if _bitfit_on_norm(config.bitfit_norms, layer, n)]
    bitfit_modules = layer.linears + norms
    bitfit = sum(layer.features[p][1] for p in bitfit_modules)
    return LayerCosts(layer, lora_modules, sites, unit, const, bitfit_modules, bitfit)


def _bitfit_on_norm(setting: bool | None, layer: LayerInfo, norm: str) -> bool:
    """Whether BitFit tunes a delta on `norm`. With `bitfit_norms=None`: a norm with a bias of its own, and every
    norm of a layer where some projection has no bias (T5, Llama, Qwen2's o/FFN): BitFit adds biases there, as
    `methods.md` §1.4 does on T5's projections and layer norms, and such deltas cannot be merged whatever the norms
    get."""
    if setting is not None:
        return setting
    return layer.norm_has_bias[norm] or not all(layer.linear_has_bias.get(p, True) for p in layer.linears)


def layer_groups(config: DesignSpaceConfig, arch: ArchitectureInfo) -> list[int]:
    """Group index of every layer of `arch.layers`, following `grouping` and `stack_grouping`."""
    if config.stack_grouping == "joint" or len(arch.stacks) == 1:
        return assign_groups(len(arch.layers), config.num_groups, config.grouping)
    groups: list[int] = []
    for stack in arch.stacks:
        groups.extend(assign_groups(len(arch.layers_of(stack)), config.num_groups, config.grouping))
    return groups


def _explicit_sizes(config: DesignSpaceConfig) -> dict[str, int | None]:
    return {s: getattr(config, FIELDS[s]) for s in SIZED}


def _warn_not_low_rank(
    config: DesignSpaceConfig, costs: dict[int, LayerCosts], sizes: dict[int, dict[str, int]], target: int, base: int
) -> None:
    """Warn (once per strategy) when a LoRA rank or adapter width reaches the full rank of its projections.

    Such a part is no longer low-rank and costs more than tuning those weights outright. It usually comes from a
    budget meant as a percentage (`budget=0.5` for 0.5%) or from an explicit size too large for the model. A warning,
    not an error: experiments on tiny models may want it.
    """
    for strategy in ("lora", "adapter"):
        field_name = FIELDS[strategy]
        over = []
        for i, layer_sizes in sizes.items():
            c = costs[i]
            dims = [min(c.layer.features[p]) for p in c.lora_modules] if strategy == "lora" else []
            dims += [c.layer.features[p][1] for p in c.adapter_sites] if strategy == "adapter" else []
            if dims and layer_sizes.get(strategy, 0) >= min(dims):
                over.append((c.layer.path, layer_sizes[strategy], min(dims)))
        if not over:
            continue
        path, size, limit = over[0]
        if _explicit_sizes(config)[strategy] is not None:
            cause = f"`{field_name}={size}` is large for this model"
        else:
            cause = (
                f"`budget={config.budget!r}` ({target:,} parameters, {target / base:.1%} of the base model) is large: "
                "a budget is a fraction (0.005 means 0.5%) or a parameter count"
            )
        warnings.warn(
            f"The {strategy} size of {len(over)} layer(s) reaches the full rank of the projections it sits on (e.g. "
            f"{size} in {path!r}, full rank {limit}), so it is no longer low-rank and costs more than tuning those "
            f"weights: {cause}.",
            DesignSpaceWarning,
            stacklevel=4,
        )


def build_plan(config: DesignSpaceConfig, arch: ArchitectureInfo, base_params: int) -> dict:
    """Resolve groups, per-layer sizes and per-module parts into a JSON-able plan.

    Raises:
        InfeasibleBudgetError: when the budget is below the smallest feasible one (the message gives that value).
        ValueError: when a strategy has nowhere to go, the group sizes do not fit the layers, or the budget is not
            below the base model's size.
    """
    groups = layer_groups(config, arch)
    tuned = set(config.tuned_groups)
    target = int(config.budget) if config.budget >= 1 else int(round(config.budget * base_params))
    if target >= base_params:
        raise ValueError(
            f"`budget={config.budget!r}` ({target:,} parameters) is not below the base model's {base_params:,} "
            "parameters; a budget is a fraction of the base model (0.005 means 0.5%) or a smaller parameter count."
        )
    explicit = _explicit_sizes(config)

    weights_all = allocation_weights(len(arch.layers), config.allocation)
    chosen = [i for i, g in enumerate(groups) if g in tuned]
    costs = {i: layer_costs(arch.layers[i], config, set(config.group_strategies[groups[i]])) for i in chosen}
    weight_sum = sum(weights_all[i] for i in chosen)
    sizes: dict[int, dict[str, int]] = {}
    share: dict[tuple[int, str], float] = {}
    for i in chosen:
        strategies = config.group_strategies[groups[i]]
        c = costs[i]
        layer_sizes = dict.fromkeys((*SIZED, "bitfit"), 0)
        fixed = 0
        if "bitfit" in strategies:
            layer_sizes["bitfit"] = 1
            fixed += c.bitfit
        free = [s for s in strategies if s in SIZED and explicit[s] is None]
        for s in strategies:
            if s in SIZED and explicit[s] is not None:
                layer_sizes[s] = explicit[s]
                fixed += c.cost(s, explicit[s])
        layer_budget = target * weights_all[i] / weight_sum
        for s in free:
            share[(i, s)] = (layer_budget - fixed) / len(free)
            layer_sizes[s] = max(1, math.floor((share[(i, s)] - c.const[s]) / c.unit[s]))
        sizes[i] = layer_sizes

    def total() -> int:
        return sum(costs[i].cost(s, n) for i in chosen for s, n in sizes[i].items())

    minimum = sum(
        costs[i].cost(s, 1 if (s in SIZED and explicit[s] is None) or s == "bitfit" else sizes[i][s])
        for i in chosen
        for s in config.group_strategies[groups[i]]
    )
    if share and target < minimum * (1 - TOLERANCE):
        fixed = [f"`{FIELDS[s]}={n}`" for s, n in explicit.items() if n is not None]
        raise InfeasibleBudgetError(
            f"`budget={config.budget!r}` ({target:,} parameters) is infeasible for this design: the smallest feasible "
            f"budget is {minimum:,} parameters ({minimum / base_params:.4%} of the {base_params:,}-parameter base "
            f"model). Raise `budget`, tune fewer groups, {'lower ' + ', '.join(fixed) + ', ' if fixed else ''}or drop "
            "strategies."
        )
    _fill_to_target(sizes, costs, share, target, total)
    realised = total()
    if realised >= base_params:  # only fixed sizes get here (a budget is below the base): refused before allocating
        given = ", ".join(f"`{FIELDS[s]}={n}`" for s, n in explicit.items() if n is not None) or "the fixed sizes"
        raise ValueError(
            f"{given} would tune {realised:,} parameters, not fewer than the base model's {base_params:,}: that is "
            "not parameter-efficient (and would be allocated in full). Use a smaller size, or leave it out so the "
            "budget decides."
        )
    _warn_not_low_rank(config, costs, sizes, target, base_params)
    if abs(realised - target) > TOLERANCE * target:
        reason = "sizes are fixed or BitFit-only" if not share else "the size steps are too coarse for this budget"
        warnings.warn(
            f"The realised count {realised:,} is {realised / target - 1:+.1%} off the budget {target:,} ({reason}).",
            DesignSpaceWarning,
            stacklevel=3,
        )
    return _to_plan(config, arch, groups, chosen, costs, sizes, target, base_params, realised)


def _fill_to_target(sizes, costs, share, target: int, total) -> None:
    current = total()
    candidates = list(share)

    def ratio(k):  # how far a strategy is above (>1) or below (<1) its share
        return costs[k[0]].cost(k[1], sizes[k[0]][k[1]]) / max(share[k], 1e-9)

    while current > target:  # the minimum size of 1 can overshoot: shrink what is most above its share
        shrinkable = [k for k in candidates if sizes[k[0]][k[1]] > 1]
        if not shrinkable:
            break
        i, s = max(shrinkable, key=lambda k: (ratio(k), k))
        sizes[i][s] -= 1
        current -= costs[i].unit[s]
    while True:  # grow what is furthest below its share while the next unit still fits
        fitting = [k for k in candidates if current + costs[k[0]].unit[k[1]] <= target]
        if not fitting:
            break
        i, s = min(fitting, key=lambda k: (ratio(k), k))
        sizes[i][s] += 1
        current += costs[i].unit[s]
    if candidates:  # one more unit for the strategy furthest below its share, if that lands closer to the target
        i, s = min(candidates, key=lambda k: (ratio(k), k))
        if abs(current + costs[i].unit[s] - target) < abs(current - target):
            sizes[i][s] += 1


def _to_plan(config, arch, groups, chosen, costs, sizes, target, base_params, realised) -> dict:
    layers = []
    for i in chosen:
        c, n = costs[i], sizes[i]
        modules: dict[str, dict] = {}
        if n["lora"]:
            for path in c.lora_modules:
                modules.setdefault(path, {"kind": "linear"})["lora"] = n["lora"]
        if n["adapter"]:
            for path in c.adapter_sites:
                modules.setdefault(path, {"kind": "linear"})["adapter"] = n["adapter"]
        if n["bitfit"]:
            for path in c.bitfit_modules:
                kind = "linear" if path in c.layer.linears else "norm"
                modules.setdefault(path, {"kind": kind})["bias"] = 1
        if n["prefix"]:
            kv_heads, head_dim = c.layer.attention_heads
            path = c.layer.modules_for("attention")[0]
            modules[path] = {"kind": "attention", "prefix": n["prefix"], "kv_heads": kv_heads, "head_dim": head_dim}
        layers.append(
            {
                "path": c.layer.path,
                "index": i,
                "group": groups[i],
                "sizes": {s: v for s, v in n.items() if v},
                "params": {s: c.cost(s, v) for s, v in n.items() if v},
                "modules": modules,
            }
        )
    return {
        "base_params": base_params,
        "target": target,
        "realised": realised,
        "num_layers": len(arch.layers),
        "stacks": arch.stacks,
        "groups": [[i for i, g in enumerate(groups) if g == k] for k in range(config.num_groups)],
        "layers": layers,
    }


def plan_targets(plan: dict) -> dict[str, dict]:
    """Module path -> parts to attach (`lora` rank, `adapter` width, `bias`, `prefix` length), from a plan."""
    return {path: spec for layer in plan["layers"] for path, spec in layer["modules"].items()}
