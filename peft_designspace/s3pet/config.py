from dataclasses import dataclass, field

from peft import PeftConfig
from peft.utils import PeftType

from .._config import (
    PackConfigMixin,
    _check_positive_number,
    _check_type,
    _fail,
    check_budget,
    check_layer_stacks,
    check_module_names,
    check_schema_version,
)
from .space import normalize_space
from .structure import load_structure

SCHEMA_VERSION = 1


@dataclass
class S3PETConfig(PackConfigMixin, PeftConfig):
    """Configuration of S3PET: differentiable search of where to put which delta module under a parameter budget.

    Paper: *Sparse Structure Search for Delta Tuning*, Hu et al., NeurIPS 2022 (S3Delta).

    Two modes. **Search** (`structure=None`): every candidate of `search_space` is inserted with a gate whose keep
    probability is `σ((α − b)/β)`, the shift `b` keeping the expected size at `budget`; train it with
    `trainer_ext.S3PETSearchTrainer`, then `derive_structure()`. **Apply** (`structure=` a dict or the JSON file
    written by the search): exactly the kept modules are inserted, ungated, and trained from scratch with the
    ordinary `Trainer`.

    Args:
        budget (`float` or `int`, *optional*, defaults to `1.389e-4`):
            Trainable parameters of the structure: a fraction of the base model's parameters when < 1 (the paper's
            1.39‱), an absolute count when >= 1. Ignored in apply mode (the structure has its size).
        search_space (`str` or `list[dict]`, *optional*, defaults to `"m"`):
            `"m"` (S3PET-M: LoRA, BitFit, LNFit, low-rank adapters), `"l"` (S3PET-L: LoRA on every projection) or a
            list of `{"type", "roles", "rank"}` entries (see `peft_designspace.s3pet.space`).
        structure (`dict` or `str`, *optional*):
            Apply mode: the structure (or path of its JSON file) written by the search.
        beta (`float`, *optional*, defaults to `1.0`): temperature of the keep-probability sigmoid.
        lora_alpha (`float`, *optional*, defaults to `16`):
            LoRA scaling numerator (scale `lora_alpha / rank`; 16 with rank 1 as in the reference code).
        lra_reduction (`int`, *optional*, defaults to `32`): bottleneck reduction of the low-rank adapters.
        layer_stacks (`list[str]`, *optional*): module paths of the layer lists, when not found automatically.
        init_weights (`bool`, *optional*, defaults to `True`):
            Zero-initialised deltas (the model is unchanged at first); `False` draws non-zero ones (for tests).
        modules_to_save (`list[str]`, *optional*): extra modules trained and saved in full (heads).
        target_modules, target_parameters, exclude_modules (`None`): unused (placement comes from the space).
        schema_version (`int`): version of this config's JSON layout.
        pack_version (`str`): the peft-designspace version that wrote the config (filled in automatically).

    Example:

    ```py
    >>> import peft_designspace
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> base = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                                 intermediate_size=64, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.S3PETConfig(budget=500, task_type="SEQ_CLS"))
    >>> structure = model.base_model.derive_structure()
    >>> structure["total"] <= 500
    True
    ```
    """

    budget: float = field(default=1.389e-4, metadata={"help": "Fraction (<1) of the base model or count (>=1)."})
    search_space: str | list = field(default="m", metadata={"help": "m, l, or a list of candidate entries."})
    structure: dict | str | None = field(default=None, metadata={"help": "Apply mode: the searched structure."})
    beta: float = field(default=1.0, metadata={"help": "Temperature of the keep-probability sigmoid."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator."})
    lra_reduction: int = field(default=32, metadata={"help": "Low-rank adapter reduction factor."})
    layer_stacks: list[str] | None = field(default=None, metadata={"help": "Explicit layer-list module paths."})
    init_weights: bool = field(default=True, metadata={"help": "Zero-initialised deltas."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra modules trained and saved."})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "Unused."})
    target_parameters: list[str] | None = field(default=None, metadata={"help": "Unused."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Unused."})
    schema_version: int = field(default=SCHEMA_VERSION, metadata={"help": "JSON layout version of this config."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.S3PET
        self.budget = check_budget(self.budget, "the base model")
        normalize_space(self.search_space)
        if self.structure is not None:
            self.structure = load_structure(self.structure)
        self.beta = _check_positive_number("beta", self.beta)
        self.lora_alpha = _check_positive_number("lora_alpha", self.lora_alpha)
        if isinstance(self.lra_reduction, bool) or not isinstance(self.lra_reduction, int) or self.lra_reduction < 1:
            _fail("lra_reduction", self.lra_reduction, "a positive int")
        if self.layer_stacks is not None:  # kept as given when valid (a tuple stays a tuple)
            check_layer_stacks(self.layer_stacks)
        _check_type("init_weights", self.init_weights, bool, "True or False")
        check_module_names("modules_to_save", self.modules_to_save)
        for name in ("target_modules", "target_parameters", "exclude_modules"):
            if getattr(self, name) is not None:
                _fail(name, getattr(self, name), "None: S3PET places modules by its search space and structure")
        check_schema_version(self.schema_version, SCHEMA_VERSION)

    @property
    def searching(self) -> bool:
        """True in search mode (no `structure` given)."""
        return self.structure is None
