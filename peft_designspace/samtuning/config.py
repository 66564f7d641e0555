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

SCHEMA_VERSION = 1
SCORES = ("sam", "fisher", "magnitude", "random")
CURVATURES = ("constant", "fisher", "hutchinson")
SCOPES = ("global", "per_tensor")
SAVE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class SAMTuningConfig(PackConfigMixin, PeftConfig):
    """Configuration of SAM sparse tuning: train only the few entries chosen by a second-order approximation.

    Paper: *On the Effectiveness of Parameter-Efficient Fine-Tuning*, Fu et al., AAAI 2023,
    https://arxiv.org/abs/2211.15583.

    The entries are chosen once, by [`calibrate_sam`] on a few batches of the user's data at the pre-trained weights
    (no optimizer step), and stay fixed. Only the chosen entries exist as trainable values (one vector per tensor,
    plus int32 indices), so the rest of the model cannot drift and the saved adapter holds only indices and values.

    Args:
        budget (`float` or `int`, *optional*, defaults to `0.005`):
            Entries to tune: a fraction of the *targeted* parameters when < 1 (the paper's p = 0.5%), an absolute
            count when >= 1. The classification head (`modules_to_save`) is trained in full and is not part of it.
        scope (`str`, *optional*, defaults to `"global"`):
            `"global"`: one top-k over all targeted tensors (the paper's Theorem 3); `"per_tensor"`: the budget is
            split over the tensors in proportion to their sizes and each tensor takes its own top-k (as the reference
            code does, except that it floors per tensor, so small tensors got nothing there).
        score (`str`, *optional*, defaults to `"sam"`):
            `"sam"`: g²/h, with g the gradient accumulated over the calibration batches and h the curvature below;
            `"fisher"`: Σ_b g_b² (FISH mask); `"magnitude"`: |θ|; `"random"`: uniform (seeded by `seed`).
        curvature (`str`, *optional*, defaults to `"constant"`):
            h of the `"sam"` score. `"constant"`: the paper's final bound (H ≈ |λ_max|·I), so the score is g²;
            `"fisher"`: h = mean_b g_b², the second moment of the per-batch gradients g_b (an empirical Fisher
            diagonal over mini-batch gradients, not per-example ones): the score is then (mean g)² / mean g_b², a
            ratio in [0, 1] of how consistent an entry's gradient is across batches, blind to its size; it needs
            at least 2 calibration batches (with one every entry scores 1) and is informative only with many;
            `"hutchinson"`: |mean z ⊙ Hz| over Rademacher probes z (`hutchinson_probes` per batch), an unbiased
            estimate of the Hessian diagonal (needs second derivatives: full-precision weights, eager attention).
        hutchinson_probes (`int`, *optional*, defaults to `1`):
            Rademacher probes per calibration batch for `curvature="hutchinson"`.
        target_modules (`list[str]` or `str`, *optional*):
            Modules whose weights are targeted, with PEFT's matching rules (suffixes or a regex). Default: every
            linear layer inside the transformer blocks.
        exclude_modules (`list[str]` or `str`, *optional*):
            Modules to leave out, with PEFT's matching rules.
        include_biases (`bool`, *optional*, defaults to `False`):
            Also target the biases of the targeted linear layers.
        include_norms (`bool`, *optional*, defaults to `False`):
            Also target the weights and biases of the norms inside the transformer blocks (default targets only).
        include_embeddings (`bool`, *optional*, defaults to `False`):
            Also target the input embedding matrix.
        layer_stacks (`list[str]`, *optional*):
            Module paths of the layer lists, for models whose transformer blocks are not found automatically.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the `"random"` score (and of the test-only `init_weights=False` selection).
        save_dtype (`str`, *optional*):
            Store the values in the saved adapter as `"float16"` or `"bfloat16"` (smaller files); default: as trained.
        init_weights (`bool`, *optional*, defaults to `True`):
            `False` draws a random selection with non-zero values at creation, without calibration (for tests).
        modules_to_save (`list[str]`, *optional*):
            Extra modules trained and saved in full (the classification head for `SEQ_CLS` is added by PEFT).
        target_parameters (`None`): unused; must stay `None`.
        nnz_pattern (`dict[str, int]`, *optional*):
            Selected entries per targeted tensor (`"<module path>.weight"` -> count), written by calibration so that
            a saved adapter reloads with the right shapes. Do not set it by hand.
        transposed_indices (`list[str]`, *optional*):
            The weights (`"<module path>.weight"`) whose saved indices count in (in, out) storage order (GPT-2's
            `Conv1D`), so that an adapter moves between a GPT-2 and its quantized form, whose layers are stored
            (out, in). Written automatically; do not set it by hand.
        schema_version (`int`): version of this config's JSON layout, for forward compatibility checks.
        pack_version (`str`): the peft-designspace version that wrote the config (filled in automatically).

    Example:

    ```py
    >>> import peft_designspace
    >>> import torch
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> base = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                                 intermediate_size=64, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.SAMTuningConfig(budget=0.01, task_type="SEQ_CLS"))
    >>> batches = [{"input_ids": torch.randint(0, 100, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}] * 2
    >>> peft_designspace.calibrate_sam(model, batches)  # doctest: +SKIP
    ```
    """

    budget: float = field(default=0.005, metadata={"help": "Fraction (<1) or count (>=1) of targeted entries."})
    scope: Literal["global", "per_tensor"] = field(default="global", metadata={"help": "global or per_tensor top-k."})
    score: str = field(default="sam", metadata={"help": "sam, fisher, magnitude or random."})
    curvature: str = field(default="constant", metadata={"help": "h of the sam score: constant/fisher/hutchinson."})
    hutchinson_probes: int = field(default=1, metadata={"help": "Rademacher probes per batch (hutchinson)."})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "Targeted modules (PEFT rules)."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules to leave out."})
    include_biases: bool = field(default=False, metadata={"help": "Also target linear biases."})
    include_norms: bool = field(default=False, metadata={"help": "Also target the norms of the blocks."})
    include_embeddings: bool = field(default=False, metadata={"help": "Also target the input embeddings."})
    layer_stacks: list[str] | None = field(default=None, metadata={"help": "Explicit layer-list module paths."})
    seed: int = field(default=0, metadata={"help": "Seed of the random score."})
    save_dtype: str | None = field(default=None, metadata={"help": "Saved values dtype: float16 or bfloat16."})
    init_weights: bool = field(default=True, metadata={"help": "False: random selection and values (tests)."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra modules trained and saved."})
    target_parameters: list[str] | None = field(default=None, metadata={"help": "Unused."})
    nnz_pattern: dict[str, int] | None = field(default=None, metadata={"help": "Selected count per tensor."})
    transposed_indices: list[str] | None = field(
        default=None, metadata={"help": "Weights whose saved indices are in (in, out) order (Conv1D)."}
    )
    schema_version: int = field(default=SCHEMA_VERSION, metadata={"help": "JSON layout version of this config."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SAMTUNING
        self._validate()

    def _validate(self) -> None:
        self.budget = check_budget(self.budget, "the targeted parameters")
        check_module_names("modules_to_save", self.modules_to_save)
        for name, allowed in (("scope", SCOPES), ("score", SCORES), ("curvature", CURVATURES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                _fail(name, value, f"one of {list(allowed)}")
        if self.save_dtype is not None and self.save_dtype not in SAVE_DTYPES:
            _fail("save_dtype", self.save_dtype, f"None or one of {list(SAVE_DTYPES)}")
        for name in ("include_biases", "include_norms", "include_embeddings", "init_weights"):
            _check_type(name, getattr(self, name), bool, "True or False")
        for name in ("target_modules", "exclude_modules"):
            check_module_names(name, getattr(self, name), regex=True)
        if self.target_modules == "all-linear":
            _fail(
                "target_modules",
                self.target_modules,
                "module names or a regex; PEFT's 'all-linear' shortcut is not supported: leave `target_modules=None`, "
                "which targets every linear layer of the transformer blocks",
            )
        _check_type("seed", self.seed, int, "an int")
        if not -(2**63) <= self.seed < 2**64:
            _fail("seed", self.seed, "an int in [-2**63, 2**64) (a torch generator seed)")
        _check_positive_int("hutchinson_probes", self.hutchinson_probes, optional=False)
        if self.target_parameters is not None:
            _fail("target_parameters", self.target_parameters, "None: SAM targets module weights")
        if self.layer_stacks is not None and (
            not isinstance(self.layer_stacks, (list, tuple)) or not all(isinstance(s, str) for s in self.layer_stacks)
        ):
            _fail("layer_stacks", self.layer_stacks, "a list of module paths or None", TypeError)
        if self.nnz_pattern is not None:
            ok = isinstance(self.nnz_pattern, dict) and all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in self.nnz_pattern.items()
            )
            if not ok:
                _fail("nnz_pattern", self.nnz_pattern, "a dict of tensor name -> count >= 0 written by calibration")
        if self.transposed_indices is not None and not (
            isinstance(self.transposed_indices, list) and all(isinstance(k, str) for k in self.transposed_indices)
        ):
            _fail("transposed_indices", self.transposed_indices, "a list of weight names written by the tuner")
        check_schema_version(self.schema_version, SCHEMA_VERSION)

    @property
    def calibrated(self) -> bool:
        """Whether the selection's counts are known (`nnz_pattern`: written by calibration, loading or a random draw).

        A config read from a saved adapter (`PeftConfig.from_pretrained`) or reused for another adapter carries the
        counts too, but a model built from it holds placeholder indices until the adapter's weights are loaded or
        `calibrate_sam` runs: whether a model's adapter holds its selection is `has_selection(model, adapter_name)`.
        """
        return self.nnz_pattern is not None
