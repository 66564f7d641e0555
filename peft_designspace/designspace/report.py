"""Budget report of a design-space adapter: what each group and strategy really costs, against the target."""

from dataclasses import dataclass, field

from torch import nn

from .config import DesignSpaceConfig

STRATEGY_OF = {
    "designspace_lora": "lora",
    "designspace_bias": "bitfit",
    "designspace_adapter": "adapter",
    "designspace_prefix_kv": "prefix",
}


@dataclass
class BudgetReport:
    """Trainable parameter counts of one adapter.

    Attributes:
        adapter_name (`str`): the adapter.
        target (`int`): the budget in parameters.
        realised (`int`): the method's trainable parameters (the sum of `rows`).
        base_params (`int`): parameters of the base model.
        rows (`list[dict]`): one row per (group, strategy): `group`, `layers` (indices), `strategy`, `params`.
        per_strategy (`dict[str, int]`): totals per strategy.
        head_params (`int`): parameters of `modules_to_save` (e.g. the classifier), outside the budget.
        training_only_params (`int`): prefix reparameterisation parameters, outside the budget.
    """

    adapter_name: str
    target: int
    realised: int
    base_params: int
    rows: list[dict] = field(default_factory=list)
    per_strategy: dict[str, int] = field(default_factory=dict)
    head_params: int = 0
    training_only_params: int = 0

    @property
    def relative_error(self) -> float:
        """`realised / target - 1`."""
        return self.realised / self.target - 1 if self.target else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "relative_error": self.relative_error}

    def __str__(self) -> str:
        lines = [
            f"Design-space budget report, adapter {self.adapter_name!r}",
            f"{'group':<6} {'layers':<16} {'strategy':<9} {'params':>12}",
        ]
        for row in self.rows:
            layers = row["layers"]
            span = f"{layers[0]}-{layers[-1]} ({len(layers)})" if len(layers) > 1 else f"{layers[0]} (1)"
            lines.append(f"G{row['group'] + 1:<5} {span:<16} {row['strategy']:<9} {row['params']:>12,}")
        lines.append("-" * 46)
        for strategy, params in sorted(self.per_strategy.items()):
            lines.append(f"{'all':<6} {'':<16} {strategy:<9} {params:>12,}")
        lines.append(
            f"total {self.realised:,} realised / {self.target:,} target ({self.relative_error:+.2%}); "
            f"{self.realised / self.base_params:.4%} of {self.base_params:,} base parameters"
        )
        lines.append(
            f"outside the budget: head (modules_to_save) {self.head_params:,}, "
            f"prefix reparameterisation {self.training_only_params:,}"
        )
        return "\n".join(lines)


def build_report(model: nn.Module, config: DesignSpaceConfig, adapter_name: str) -> BudgetReport:
    """Count the live parameters of `adapter_name` in `model` (the tuner's wrapped model) by group and strategy."""
    plan = config.plan
    layer_of = {layer["path"]: layer for layer in plan["layers"]}
    counts: dict[tuple[int, str], int] = {}
    layers_in: dict[tuple[int, str], set[int]] = {}
    extra = 0
    for path, module in model.named_modules():
        for attr, strategy in STRATEGY_OF.items():
            container = getattr(module, attr, None)
            if not isinstance(container, (nn.ModuleDict, nn.ParameterDict)) or adapter_name not in container:
                continue
            layer = next((layer_of[p] for p in layer_of if path.startswith(p + ".")), None)
            if layer is None:
                continue
            part = container[adapter_name]
            if strategy == "prefix":
                params = part.effective_parameters()
                extra += part.training_only_parameters()
            else:
                params = part.numel() if isinstance(part, nn.Parameter) else sum(p.numel() for p in part.parameters())
            key = (layer["group"], strategy)
            counts[key] = counts.get(key, 0) + params
            layers_in.setdefault(key, set()).add(layer["index"])
    head = sum(p.numel() for n, p in model.named_parameters() if f".modules_to_save.{adapter_name}." in n)
    return report_from_counts(adapter_name, plan, counts, layers_in, head, extra)


def report_from_counts(
    adapter_name: str,
    plan: dict,
    counts: dict[tuple[int, str], int],
    layers_in: dict[tuple[int, str], set[int]],
    head_params: int,
    training_only_params: int,
) -> BudgetReport:
    """A `BudgetReport` from parameter counts per `(group, strategy)` and the layer indices that hold them."""
    rows = [
        {"group": g, "strategy": s, "layers": sorted(layers_in[(g, s)]), "params": n}
        for (g, s), n in sorted(counts.items())
    ]
    per_strategy: dict[str, int] = {}
    for (_, s), n in counts.items():
        per_strategy[s] = per_strategy.get(s, 0) + n
    return BudgetReport(
        adapter_name=adapter_name,
        target=plan["target"],
        realised=sum(counts.values()),
        base_params=plan["base_params"],
        rows=rows,
        per_strategy=per_strategy,
        head_params=head_params,
        training_only_params=training_only_params,
    )
