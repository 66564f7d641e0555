import math
from dataclasses import dataclass, field
from typing import Literal

from peft import PeftConfig
from peft.utils import PeftType

from .._config import (
    PackConfigMixin,
    _check_positive_int,
    _check_type,
    _fail,
    check_budget,
    check_module_names,
    check_schema_version,
)
from .grouping import ALLOCATIONS, GROUPING_PATTERNS, pattern_weights
from .presets import PRESETS, STRATEGIES

LORA_ROLES = ("attn_out", "ffn_in", "ffn_out", "key", "query", "value")
ADAPTER_SITES = ("attn_out", "ffn_out")  # Houlsby's two sites, in layer order
SCHEMA_VERSION = 1


@dataclass
class DesignSpaceConfig(PackConfigMixin, PeftConfig):
    """Configuration of design-space mixed-strategy tuning (S4).

    Paper: *Parameter-Efficient Fine-Tuning Design Spaces*, Chen et al., ICLR 2023, https://arxiv.org/abs/2301.01821.

    The transformer layers are cut into `num_groups` consecutive groups (`grouping`); the trainable budget is spread
    over the layers (`allocation`) of the tuned groups (`tunable_groups`); every layer of a group gets the group's set
    of strategies (`group_strategies`): bottleneck `adapter`, key/value `prefix`, `bitfit` bias deltas and `lora`.
    Sizes (adapter width, prefix length, LoRA rank) are derived from `budget` unless given explicitly. The resolved
    plan (layers of each group, sizes per layer) is written into `plan` when the adapter is created, so a saved
    adapter describes itself and reloads without recomputing.

    Args:
        preset (`str`, *optional*, defaults to `"s4"`):
            Starting point: `"s4"` (the paper's final model) or a single strategy `"adapter"`, `"prefix"`,
            `"bitfit"`, `"lora"` on every group. Explicit `grouping`, `allocation` or `group_strategies` override it.
            `None` starts from no preset (then `group_strategies` is required).
        budget (`float`, *optional*, defaults to `0.005`):
            Trainable parameters of the method: a fraction of the base model's parameter count when < 1, an
            absolute count when >= 1. The classification head (`modules_to_save`) is not part of it.
        num_groups (`int`, *optional*, defaults to `4`):
            Number of consecutive layer groups.
        grouping (`str` or `list[int]`, *optional*):
            `"spindle"`, `"uniform"`, `"increasing"`, `"decreasing"`, `"bottleneck"`, or explicit group sizes
            (bottom group first). Defaults to the preset's (`"spindle"`).
        stack_grouping (`str`, *optional*, defaults to `"joint"`):
            Encoder-decoder models: `"joint"` treats encoder then decoder as one stack; `"per_stack"` groups each
            stack on its own (group g then holds layers of both stacks).
        allocation (`str`, *optional*):
            Budget over layers: `"uniform"`, `"increasing"` or `"decreasing"` with depth. Defaults to the preset's.
        tunable_groups (`list[int]`, *optional*):
            0-based indices of the groups that get parameters (group 0 is the paper's G1). Defaults to all.
        group_strategies (`list[list[str]]`, *optional*):
            One non-empty list of strategies per group, out of `adapter`, `bitfit`, `lora`, `prefix`.
        adapter_size (`int`, *optional*):
            Explicit bottleneck width of every adapter (otherwise derived from the budget).
        adapter_mode (`str`, *optional*, defaults to `"sequential"`):
            `"sequential"`: after the adapter sites' projections; `"parallel"`: beside them.
        adapter_sites (`list[str]`, *optional*, defaults to `["attn_out", "ffn_out"]`):
            Where a layer's adapters go: after the attention-output projection (`attn_out`) and/or the FFN-output
            projection (`ffn_out`). The default is Houlsby's two sites; `["ffn_out"]` is the single site after the
            FFN of `methods.md` §1.4 (Pfeiffer's site and size, with Houlsby's placement before the residual add and
            LayerNorm; see `docs/designspace.md`).
        adapter_activation (`str`, *optional*, defaults to `"relu"`):
            Activation inside the bottleneck: `relu`, `gelu`, `tanh` or `silu`.
        prefix_length (`int`, *optional*):
            Explicit number of prefix positions per layer (otherwise derived from the budget).
        prefix_projection (`bool`, *optional*, defaults to `False`):
            Train prefixes through the MLP reparameterisation of the original prefix tuning. Its extra parameters
            are reported apart from the budget.
        prefix_projection_hidden (`int`, *optional*, defaults to `512`):
            Width of that MLP.
        lora_rank (`int`, *optional*):
            Explicit LoRA rank (otherwise derived from the budget).
        lora_alpha (`float`, *optional*):
            LoRA scaling numerator; the update is scaled by `lora_alpha / rank` (scale 1 when `None`).
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input.
        lora_targets (`list[str]`, *optional*, defaults to `["query", "value"]`):
            Roles that get LoRA: `query`, `key`, `value`, `attn_out`, `ffn_in`, `ffn_out`.
        bitfit_norms (`bool`, *optional*):
            Norm modules in BitFit. `None`: norms that have a bias of their own (LayerNorm), and every norm of a
            layer where some projection has no bias (T5, Llama, Qwen2; `methods.md` §1.4); `True`: every norm;
            `False`: none. Deltas on bias-free norms or projections cannot be merged.
        layer_stacks (`list[str]`, *optional*):
            Module paths of the layer lists, bottom first, for models whose layers are not found automatically.
        init_weights (`bool`, *optional*, defaults to `True`):
            Identity initialisation for LoRA, adapters and bias deltas (prefixes are never an identity).
        modules_to_save (`list[str]`, *optional*):
            Extra modules trained and saved in full (the classification head for `SEQ_CLS` is added by PEFT).
        target_modules (`None`):
            Unused: placement is decided by the plan. Present because PEFT's injection reads it; must stay `None`.
        target_parameters (`None`):
            Unused (no `nn.Parameter` targeting); must stay `None`.
        exclude_modules (`None`):
            Unused (restrict placement with `tunable_groups`, `group_strategies` and `lora_targets`); must stay `None`.
        plan (`dict`, *optional*):
            The resolved plan, filled when the adapter is created. Do not set it by hand.
        schema_version (`int`): version of this config's JSON layout, for forward compatibility checks.
        pack_version (`str`): the peft-designspace version that wrote the config (filled in automatically).

    Example:

    ```py
    >>> import peft_designspace
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> base = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=8, num_attention_heads=2,
    ...                                                 intermediate_size=64, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.DesignSpaceConfig(preset="s4", budget=0.05, task_type="SEQ_CLS"))
    >>> print(model.base_model.budget_report())  # doctest: +SKIP
    ```
    """

    preset: str | None = field(default="s4", metadata={"help": "Starting point: s4, adapter, prefix, bitfit, lora."})
    budget: float = field(default=0.005, metadata={"help": "Fraction (<1) or count (>=1) of trainable parameters."})
    num_groups: int = field(default=4, metadata={"help": "Number of consecutive layer groups."})
    grouping: str | list[int] | None = field(default=None, metadata={"help": "Grouping pattern or explicit sizes."})
    stack_grouping: Literal["joint", "per_stack"] = field(
        default="joint", metadata={"help": "Encoder-decoder: one joint stack or each stack grouped on its own."}
    )
    allocation: str | None = field(
        default=None, metadata={"help": "Budget over layers: uniform/increasing/decreasing."}
    )
    tunable_groups: list[int] | None = field(default=None, metadata={"help": "0-based groups that get parameters."})
    group_strategies: list[list[str]] | None = field(default=None, metadata={"help": "Strategies of each group."})
    adapter_size: int | None = field(default=None, metadata={"help": "Explicit bottleneck width."})
    adapter_mode: Literal["sequential", "parallel"] = field(
        default="sequential", metadata={"help": "Adapter after (sequential) or beside (parallel) the projections."}
    )
    adapter_sites: list[str] = field(
        default_factory=lambda: list(ADAPTER_SITES), metadata={"help": "Adapter sites: attn_out and/or ffn_out."}
    )
    adapter_activation: str = field(default="relu", metadata={"help": "Bottleneck activation."})
    prefix_length: int | None = field(default=None, metadata={"help": "Explicit prefix length per layer."})
    prefix_projection: bool = field(default=False, metadata={"help": "MLP reparameterisation of the prefixes."})
    prefix_projection_hidden: int = field(default=512, metadata={"help": "Width of the reparameterisation MLP."})
    lora_rank: int | None = field(default=None, metadata={"help": "Explicit LoRA rank."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scale numerator (scale = alpha / rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"], metadata={"help": "LoRA roles."})
    bitfit_norms: bool | None = field(
        default=None, metadata={"help": "Norms in BitFit: None=with bias (all on bias-free layers), True, False."}
    )
    layer_stacks: list[str] | None = field(default=None, metadata={"help": "Explicit layer-list module paths."})
    init_weights: bool = field(default=True, metadata={"help": "Identity initialisation of the adapter parts."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra modules trained and saved."})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "Unused (placement is planned)."})
    target_parameters: list[str] | None = field(default=None, metadata={"help": "Unused."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Unused."})
    plan: dict | None = field(default=None, metadata={"help": "Resolved plan, filled on injection."})
    schema_version: int = field(default=SCHEMA_VERSION, metadata={"help": "JSON layout version of this config."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.DESIGNSPACE
        if self.preset is not None:
            _check_type("preset", self.preset, str, f"one of {sorted(PRESETS)} or None")
        _check_positive_int("num_groups", self.num_groups, optional=False)
        self._apply_preset()
        self._validate()

    def _apply_preset(self) -> None:
        if self.preset is None:
            self.grouping = "spindle" if self.grouping is None else self.grouping
            self.allocation = "uniform" if self.allocation is None else self.allocation
            return
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            _fail("preset", self.preset, f"one of {sorted(PRESETS)} or None")
        preset = PRESETS[self.preset]
        if self.grouping is None:
            self.grouping = preset["grouping"]
        if self.allocation is None:
            self.allocation = preset["allocation"]
        if self.group_strategies is None:
            strategies = preset["group_strategies"]
            if self.preset in STRATEGIES:
                strategies = [[self.preset]] * self.num_groups if isinstance(self.num_groups, int) else strategies
            elif self.num_groups != len(strategies):
                raise ValueError(
                    f"`preset={self.preset!r}` defines {len(strategies)} groups but `num_groups` is "
                    f"{self.num_groups!r}; use num_groups={len(strategies)} or pass `group_strategies`."
                )
            self.group_strategies = [list(s) for s in strategies]

    def _validate(self) -> None:
        self.budget = check_budget(self.budget, "the base model")  # numpy numbers become JSON-able Python ones
        check_module_names("modules_to_save", self.modules_to_save)
        _check_positive_int("num_groups", self.num_groups, optional=False)
        if isinstance(self.grouping, str):
            if self.grouping not in GROUPING_PATTERNS:
                _fail("grouping", self.grouping, f"one of {list(GROUPING_PATTERNS)} or a list of group sizes")
        elif isinstance(self.grouping, (list, tuple)):
            if len(self.grouping) != self.num_groups:
                raise ValueError(
                    f"`grouping` has {len(self.grouping)} sizes but `num_groups` is {self.num_groups}; "
                    "they must agree."
                )
            for size in self.grouping:
                _check_positive_int("grouping", size, optional=False)
            self.grouping = list(self.grouping)
        else:
            _fail("grouping", self.grouping, "a pattern name or a list of positive ints", TypeError)
        if isinstance(self.grouping, str):
            pattern_weights(self.num_groups, self.grouping)  # e.g. spindle needs 3+ groups
        _check_type("stack_grouping", self.stack_grouping, str, "one of ['joint', 'per_stack']")
        _check_type("allocation", self.allocation, str, f"one of {list(ALLOCATIONS)}")
        if self.stack_grouping not in ("joint", "per_stack"):
            _fail("stack_grouping", self.stack_grouping, "one of ['joint', 'per_stack']")
        if self.allocation not in ALLOCATIONS:
            _fail("allocation", self.allocation, f"one of {list(ALLOCATIONS)}")
        if self.tunable_groups is not None:
            _check_type(
                "tunable_groups", self.tunable_groups, (list, tuple), "a non-empty list of group indices or None"
            )
            if not self.tunable_groups:
                _fail("tunable_groups", self.tunable_groups, "a non-empty list of group indices or None")
            for g in self.tunable_groups:
                if isinstance(g, bool) or not isinstance(g, int):
                    _fail("tunable_groups", self.tunable_groups, "a list of int group indices", TypeError)
                if not 0 <= g < self.num_groups:
                    _fail("tunable_groups", self.tunable_groups, f"indices in range(0, {self.num_groups})")
            if len(set(self.tunable_groups)) != len(self.tunable_groups):
                _fail("tunable_groups", self.tunable_groups, "a list without duplicates")
            self.tunable_groups = sorted(self.tunable_groups)
        self._validate_strategies()
        for name in ("adapter_size", "prefix_length", "lora_rank"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("prefix_projection_hidden", self.prefix_projection_hidden, optional=False)
        for name in ("prefix_projection", "init_weights"):
            _check_type(name, getattr(self, name), bool, "True or False")
        if self.adapter_mode not in ("sequential", "parallel"):
            _fail("adapter_mode", self.adapter_mode, "one of ['parallel', 'sequential']")
        if isinstance(self.adapter_sites, str):
            self.adapter_sites = [self.adapter_sites]
        allowed = f"a non-empty list out of {list(ADAPTER_SITES)}"
        _check_type("adapter_sites", self.adapter_sites, (list, tuple, set), allowed)
        if not all(isinstance(site, str) for site in self.adapter_sites):
            _fail("adapter_sites", self.adapter_sites, allowed, TypeError)
        if not self.adapter_sites or not set(self.adapter_sites) <= set(ADAPTER_SITES):
            _fail("adapter_sites", self.adapter_sites, allowed)
        self.adapter_sites = [site for site in ADAPTER_SITES if site in self.adapter_sites]
        if self.adapter_activation not in ("gelu", "relu", "silu", "tanh"):
            _fail("adapter_activation", self.adapter_activation, "one of ['gelu', 'relu', 'silu', 'tanh']")
        _check_type("lora_dropout", self.lora_dropout, (int, float), "a float in [0, 1)")
        if not 0 <= self.lora_dropout < 1:
            _fail("lora_dropout", self.lora_dropout, "a float in [0, 1)")
        if self.lora_alpha is not None:
            _check_type("lora_alpha", self.lora_alpha, (int, float), "a positive number or None")
            if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
                _fail("lora_alpha", self.lora_alpha, "a positive number or None")
        if isinstance(self.lora_targets, str):
            self.lora_targets = [self.lora_targets]
        _check_type(
            "lora_targets", self.lora_targets, (list, tuple, set), f"a non-empty list out of {list(LORA_ROLES)}"
        )
        if not all(isinstance(r, str) for r in self.lora_targets):
            _fail("lora_targets", self.lora_targets, f"a list of role names out of {list(LORA_ROLES)}", TypeError)
        if not self.lora_targets:
            _fail("lora_targets", self.lora_targets, f"a non-empty list out of {list(LORA_ROLES)}")
        unknown = sorted(set(self.lora_targets) - set(LORA_ROLES))
        if unknown:
            _fail("lora_targets", self.lora_targets, f"roles out of {list(LORA_ROLES)} (unknown: {unknown})")
        self.lora_targets = sorted(set(self.lora_targets))
        if not (self.bitfit_norms is None or isinstance(self.bitfit_norms, bool)):
            _fail("bitfit_norms", self.bitfit_norms, "None, True or False", TypeError)
        if self.layer_stacks is not None and (
            not isinstance(self.layer_stacks, (list, tuple)) or not all(isinstance(s, str) for s in self.layer_stacks)
        ):
            _fail("layer_stacks", self.layer_stacks, "a list of module paths or None", TypeError)
        for name in ("target_parameters", "exclude_modules"):
            if getattr(self, name) is not None:
                _fail(
                    name,
                    getattr(self, name),
                    "None: the design space does not use it; restrict placement with "
                    "`tunable_groups`, `group_strategies` and `lora_targets`",
                )
        if self.target_modules is not None:
            _fail(
                "target_modules",
                self.target_modules,
                "None: the design space places modules by layer group and "
                "role; use `lora_targets`, `group_strategies` and `layer_stacks` instead",
            )
        check_schema_version(self.schema_version, SCHEMA_VERSION)
        if self.plan is not None and not (isinstance(self.plan, dict) and isinstance(self.plan.get("layers"), list)):
            _fail("plan", type(self.plan).__name__, "a plan dict written by the method (leave it None)", TypeError)

    def _validate_strategies(self) -> None:
        if self.group_strategies is None:
            raise ValueError("`group_strategies` is required when `preset=None`: one list of strategies per group.")
        _check_type("group_strategies", self.group_strategies, (list, tuple), "a list of lists of strategy names")
        if len(self.group_strategies) != self.num_groups:
            raise ValueError(
                f"`group_strategies` must have one entry per group ({self.num_groups}), got {self.group_strategies!r}."
            )
        cleaned = []
        for g, strategies in enumerate(self.group_strategies):
            if isinstance(strategies, str) or not isinstance(strategies, (list, tuple)):
                raise TypeError(
                    f"`group_strategies[{g}]` must be a list out of {list(STRATEGIES)}, got {strategies!r}."
                )
            if not all(isinstance(s, str) for s in strategies):
                raise TypeError(f"`group_strategies[{g}]` must hold strategy names (str), got {strategies!r}.")
            if not strategies:
                raise ValueError(
                    f"`group_strategies[{g}]` must be a non-empty list out of {list(STRATEGIES)}, got {strategies!r}."
                )
            unknown = sorted(set(strategies) - set(STRATEGIES))
            if unknown:
                raise ValueError(
                    f"`group_strategies[{g}]` has unknown strategies {unknown}; allowed: {list(STRATEGIES)}."
                )
            if len(set(strategies)) != len(strategies):
                raise ValueError(f"`group_strategies[{g}]` lists a strategy twice: {list(strategies)}.")
            cleaned.append(sorted(strategies))
        self.group_strategies = cleaned

    @property
    def tuned_groups(self) -> list[int]:
        """The tuned group indices (all groups when `tunable_groups` is None)."""
        return list(range(self.num_groups)) if self.tunable_groups is None else list(self.tunable_groups)
