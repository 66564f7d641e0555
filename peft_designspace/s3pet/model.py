"""The S3PET tuner: inserts the search space (gated) or a structure (ungated), computes gates, derives structures."""

import contextlib
import random
from collections.abc import Iterator

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .._config import check_budget, floor_of_fraction
from .._tuner import WrapperTunerMixin
from ..architecture import is_linear, is_norm, linear_features
from ..designspace.model import count_base_parameters
from ..modules import lra_parameters
from .config import S3PETConfig
from .gates import NonFiniteAlphaError, keep_probabilities, sample_gates
from .layer import Linear, Norm, S3PETLayer
from .space import Candidate, enumerate_candidates
from .structure import build_structure, diverged_error, load_structure, module_rank


def _structure_size(module: nn.Module, kind: str, rank: int, reduction: int) -> int:
    if kind in ("lora", "lra", "bitfit") and is_linear(module):
        in_features, out_features = linear_features(module)
        return {"lora": rank * (in_features + out_features), "lra": lra_parameters(out_features, reduction)}.get(
            kind, out_features
        )
    if kind in ("lnfit", "bitfit") and is_norm(module):
        return module.weight.numel()
    return -1  # the type cannot sit on this module


def _saved_in_full(path: str, modules_to_save: list[str] | set[str] | None) -> str | None:
    """The module of `modules_to_save` that holds the module at `path` (PEFT matches their names at the end of a
    module's path), or `None`."""
    parts = path.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if any(prefix == name or prefix.endswith("." + name) for name in modules_to_save or ()):
            return prefix
    return None


def resolve_search_budget(budget: float | int, base_params: int, candidates: list[Candidate]) -> int:
    """The parameter count a search budget stands for, checked against the search space.

    `budget` is validated as `S3PETConfig.budget` is (`check_budget`): a fraction of the base model's `base_params`
    parameters when < 1, an absolute count when >= 1.

    Raises:
        TypeError, ValueError: for a budget `check_budget` refuses.
        ValueError: when the count is smaller than the smallest candidate or covers the whole search space (nothing
            to search).
    """
    budget = check_budget(budget, "the base model")
    count = floor_of_fraction(budget, base_params) if budget < 1 else budget
    sizes = [c.size for c in candidates]
    if count < min(sizes):
        smallest = candidates[sizes.index(min(sizes))]
        raise ValueError(
            f"`budget` {budget!r} ({count:,} parameters) is smaller than the smallest candidate "
            f"({smallest.size:,} parameters, {smallest.key}); raise it to at least {smallest.size:,}."
        )
    if count >= sum(sizes):
        raise ValueError(
            f"`budget` {budget!r} ({count:,} parameters) covers the whole search space "
            f"({sum(sizes):,} parameters): there is nothing to search. Lower the budget or widen the space."
        )
    return count


def _check_alpha(alpha: list[torch.Tensor], live: list[nn.Parameter]) -> None:
    """Raise unless `alpha` has one tensor per wrapped module, each of the size of the live one."""
    expected = [a.numel() for a in live]
    if not isinstance(alpha, (list, tuple)) or not all(isinstance(a, torch.Tensor) for a in alpha):
        raise ValueError(
            f"`alpha` must be a list of {len(expected)} tensors like `architecture_parameters()`, got "
            f"{type(alpha).__name__}."
        )
    got = [a.numel() for a in alpha]
    if len(got) != len(expected):
        raise ValueError(
            f"`alpha` must hold {len(expected)} tensors ({sum(expected)} values), one per wrapped module as "
            f"`architecture_parameters()`, got {len(got)} ({sum(got)} values)."
        )
    for i, (n, m) in enumerate(zip(got, expected)):
        if n != m:
            raise ValueError(
                f"`alpha[{i}]` must have {m} values (the candidates of its module, as `architecture_parameters()`), "
                f"got {n}."
            )


class S3PETModel(WrapperTunerMixin, BaseTuner):
    """Creates S3PET adapters: the gated search space (search mode) or a searched structure (apply mode).

    Use it through `peft.get_peft_model(model, S3PETConfig(...))` after `import peft_designspace`; search with
    `trainer_ext.S3PETSearchTrainer`, then `derive_structure()`.

    Example:

    ```py
    >>> import peft_designspace
    >>> from peft import get_peft_model
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> base = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.S3PETConfig(budget=400, task_type="CAUSAL_LM"))
    >>> len(model.base_model.candidates())
    40
    ```
    """

    prefix: str = "s3pet_"
    tuner_layer_cls = S3PETLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: S3PETConfig, model_config: dict) -> S3PETConfig:
        return peft_config

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        super().inject_adapter(model, adapter_name, **kwargs)
        if self.peft_config[adapter_name].searching and not getattr(self, "_gate_hooks", None):
            self._gate_hooks = self._register_gate_hooks()

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter with its S3PET state; the gate hooks go with the last search-mode adapter."""
        super().delete_adapter(adapter_name)
        getattr(self, "_s3pet", {}).pop(adapter_name, None)
        if not any(isinstance(c, S3PETConfig) and c.searching for c in self.peft_config.values()):
            self._remove_gate_hooks()

    # planning -----------------------------------------------------------------------------------------------------
    def _plan(self, model: nn.Module, config: S3PETConfig, adapter_name: str) -> None:
        if not hasattr(self, "_s3pet"):
            self._s3pet: dict[str, dict] = {}
        self._planned_adapter = adapter_name  # `_check_target_module_exists` is not told which adapter is injected
        if config.searching:
            candidates = enumerate_candidates(model, config.search_space, config.layer_stacks, config.lra_reduction)
            base_params = count_base_parameters(model)
            budget = resolve_search_budget(config.budget, base_params, candidates)
            sizes = [c.size for c in candidates]
            parts: dict[str, list[str]] = {}
            ranks: dict[str, int] = {}
            for c in candidates:
                parts.setdefault(c.path, []).append(c.type)
                if c.type == "lora":
                    ranks[c.path] = c.rank
            self._s3pet[adapter_name] = {
                "candidates": candidates,
                "sizes": torch.tensor(sizes, dtype=torch.float64),
                "budget": budget,
                "base_params": base_params,
                "parts": parts,
                "ranks": ranks,
            }
            return
        modules = dict(model.named_modules())
        parts, ranks = {}, {}
        for i, entry in enumerate(load_structure(config.structure)["modules"]):  # checked again: it may be edited
            path, kind = entry["path"], entry["type"]
            module = modules.get(path)
            if isinstance(module, S3PETLayer):
                module = module.get_base_layer()
            if module is None:
                raise ValueError(
                    f"The structure's module {i} names {path!r}, which {type(model).__name__} lacks: it was "
                    "searched on another model."
                )
            head = _saved_in_full(path, config.modules_to_save)
            if head is not None:
                raise ValueError(
                    f"The structure's module {i} puts a {kind!r} module on {path!r}, inside {head!r}, which "
                    "`modules_to_save` trains and saves in full (the task head of a SEQ_CLS, TOKEN_CLS or QA model "
                    "always is): remove the module from the structure."
                )
            rank = module_rank(entry, i)
            size = _structure_size(module, kind, rank, config.lra_reduction)
            if size < 0:
                raise ValueError(f"The structure puts a {kind!r} module on {path!r}, a {type(module).__name__}.")
            if size != entry["size"]:
                raise ValueError(
                    f"The structure's {kind!r} module on {path!r} has size {entry['size']:,}, but on this model it "
                    f"would have {size:,}: the structure was searched on another model (or with other settings)."
                )
            parts.setdefault(path, []).append(kind)
            if kind == "lora":
                ranks[path] = rank
        self._s3pet[adapter_name] = {"parts": parts, "ranks": ranks}

    def _check_target_module_exists(self, peft_config: S3PETConfig, key: str) -> bool:
        return key in self._s3pet[self._planned_adapter]["parts"]

    def _create_and_replace(
        self,
        peft_config: S3PETConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        plan = self._s3pet[adapter_name]
        options = {
            "types": plan["parts"][current_key],
            "rank": plan["ranks"].get(current_key, 1),
            "lora_alpha": peft_config.lora_alpha,
            "lra_reduction": peft_config.lra_reduction,
            "searching": peft_config.searching,
            "init_weights": peft_config.init_weights,
        }
        wrapper_cls = Linear if is_linear(target) else Norm  # (a wrapped target is updated, whatever its class)
        self._wrap_or_update(wrapper_cls, target, adapter_name, parent, target_name, **options)

    # gates --------------------------------------------------------------------------------------------------------
    def candidates(self, adapter_name: str | None = None) -> list[Candidate]:
        """The candidates of a search-mode adapter, in search-space order."""
        return list(self._search_plan(adapter_name)["candidates"])

    def _search_plan(self, adapter_name: str | None) -> dict:
        name = adapter_name or self.active_adapters[0]
        plan = getattr(self, "_s3pet", {}).get(name)
        if plan is None or "candidates" not in plan:
            raise ValueError(f"Adapter {name!r} is not an S3PET adapter in search mode.")
        return plan

    def _layers_in_order(self, adapter_name: str) -> list[S3PETLayer]:
        # looked up once per adapter (gates are refreshed on every forward, so no module walk on the hot path)
        plan = self._search_plan(adapter_name)
        if "layers" not in plan:
            paths = dict.fromkeys(c.path for c in plan["candidates"])
            plan["layers"] = [self._s3pet_layer_at(p) for p in paths]
        return plan["layers"]

    def _s3pet_layer_at(self, path: str) -> S3PETLayer:
        # another method's adapter injected later (`inject_adapter_in_model` with a LoRA config) wraps the S3PET
        # layer: its `base_layer` chain leads back to it
        module = self.model.get_submodule(path)
        while not isinstance(module, S3PETLayer) and isinstance(getattr(module, "base_layer", None), nn.Module):
            module = module.base_layer
        if not isinstance(module, S3PETLayer):
            raise ValueError(f"The S3PET search module {path!r} is gone: {type(module).__name__} is there now.")
        return module

    def architecture_parameters(self, adapter_name: str | None = None) -> list[nn.Parameter]:
        """The α parameters (one vector per wrapped module) of a search-mode adapter, in search-space order."""
        name = adapter_name or self.active_adapters[0]
        return [layer.s3pet_alpha[name] for layer in self._layers_in_order(name)]

    def keep_probabilities(
        self, adapter_name: str | None = None, alpha: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, float, float]:
        """`(p, b, residual)` of a search-mode adapter: budget-shifted keep probabilities in search-space order.

        `alpha` replaces the live architecture parameters: one tensor per wrapped module, in the order and with the
        sizes of `architecture_parameters()` (checked).

        Raises:
            ValueError: when α holds inf or nan (the search diverged; the error names the candidates affected).
        """
        name = adapter_name or self.active_adapters[0]
        plan, config = self._search_plan(name), self.peft_config[name]
        live = self.architecture_parameters(name)
        if alpha is None:
            vector = torch.cat([a.reshape(-1) for a in live])
        else:
            _check_alpha(alpha, live)
            vector = torch.cat([a.detach().reshape(-1).float().cpu() for a in alpha])
        try:
            return keep_probabilities(vector, plan["sizes"], plan["budget"], config.beta)
        except NonFiniteAlphaError as err:  # checked on the CPU copy the shift solve makes anyway (no extra sync)
            raise diverged_error(plan["candidates"], err.indices, "architecture parameters α") from None

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: object, **kwargs: object) -> Iterator[None]:
        """Entered by every `PeftModel` around its forward and its `generate()`: one gate draw for the whole call.

        A plain `PeftModel` (no `task_type`) calls the base model's `generate()` directly, where the hooks below
        fired once per decoding step: in train mode each step drew new gates, so the cache held keys and values of
        earlier draws. PEFT's per-sample `adapter_names` (and `alora_offsets`), which it strips from the call after
        this context, are refused rather than silently ignored.
        """
        given = [k for k in ("adapter_names", "alora_offsets") if kwargs.get(k) is not None]
        if given:
            raise ValueError(f"S3PET does not support {given} (per-sample adapters); call set_adapter() instead.")
        with self.gated_call():
            yield

    @contextlib.contextmanager
    def gated_call(self) -> Iterator[None]:
        """One call that draws the search gates once, for the model's mode: samples in train mode, `z = p` in eval.

        Calls of the whole model inside it keep its gates. Needed only to call a submodule directly (the forward of
        the whole model, its encoder and `generate()` draw their own); outside it, a submodule reads the gates of the
        last forward, and refuses them when they were drawn for the other mode.

        Example:

        ```py
        >>> model.eval()  # doctest: +SKIP
        >>> with model.base_model.gated_call():  # doctest: +SKIP
        ...     features = model.base_model.model.bert(**inputs).last_hidden_state
        ```
        """
        try:  # entered inside the `try`: a refresh that raises (e.g. refused checkpointing) still leaves the call
            self._enter_gated_call()
            yield
        finally:
            self._leave_gated_call()

    def generate(self, *args: object, **kwargs: object) -> object:
        """The base model's `generate()` with fresh gates: `z = p` in eval mode, one sample for the whole call in
        train mode (encoder-decoder models call their encoder directly, not through the hooked top-level forward).

        `PeftModelForCausalLM` and `PeftModelForSeq2SeqLM` call it, within `_enable_peft_forward_hooks` (so the
        gates drawn there are kept); a plain `PeftModel` (no `task_type`) calls the base model's `generate()` within
        that context.
        """
        with self.gated_call():
            return self.model.generate(*args, **kwargs)

    def _register_gate_hooks(self) -> list:
        """Hooks that refresh the gates on entry to the model and, for encoder-decoder models, to its encoder.

        The encoder is hooked too because `generate()` (and users) call it directly. Calls are counted: a call inside
        another (the encoder inside the model's forward, or anything inside `generate()`) keeps the outer call's
        gates, so a forward draws its gates once.
        """
        modules = [self.model]
        if getattr(getattr(self.model, "config", None), "is_encoder_decoder", False):
            encoder = self.model.get_encoder() if hasattr(self.model, "get_encoder") else None
            if isinstance(encoder, nn.Module) and encoder is not self.model:
                modules.append(encoder)
        handles = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(self._enter_gated_call))
            handles.append(module.register_forward_hook(self._leave_gated_call, always_call=True))
        return handles

    def _remove_gate_hooks(self) -> None:
        for handle in getattr(self, "_gate_hooks", None) or []:
            handle.remove()
        self._gate_hooks = []
        self._gate_depth = 0

    def _enter_gated_call(self, *_: object) -> None:
        # counted before the refresh: the exit hook also runs when the refresh raises
        self._gate_depth = getattr(self, "_gate_depth", 0) + 1
        if self._gate_depth == 1:
            self._refresh_gates()

    def _leave_gated_call(self, *_: object) -> None:
        self._gate_depth = max(getattr(self, "_gate_depth", 1) - 1, 0)

    @torch.compiler.disable  # solved with Python floats: traced, it would recompile on every new shift
    def _refresh_gates(self) -> None:
        checked = False
        for name in self.active_adapters:
            config = self.peft_config.get(name)
            if not isinstance(config, S3PETConfig) or not config.searching:
                continue
            if not checked and self.model.training and torch.is_grad_enabled():
                self._check_checkpointing(name)  # else torch's own error is all one gets, in backward
                checked = True
            p, b, residual = self.keep_probabilities(name)
            z = sample_gates(p) if self.model.training else p
            self._s3pet[name]["last"] = {"shift": b, "residual": residual}
            parts = z.unbind()  # one view per candidate in one op (and one backward node), not a `select` each
            start = 0
            for layer in self._layers_in_order(name):
                types = layer.part_types[name]
                layer.gates[name] = dict(zip(types, parts[start : start + len(types)]))
                # the layer's own mode (it may differ from the model's: an encoder kept in eval mode for its dropout)
                layer.gates_drawn_training[name] = layer.training
                start += len(types)

    def _check_checkpointing(self, adapter_name: str) -> None:
        """`check_reentrant_checkpointing` for a training forward whose α is trained (a frozen α trains fine)."""
        if not any(a.requires_grad for a in self.architecture_parameters(adapter_name)):
            return
        # the modules that can checkpoint are found once (a walk of the whole model costs ms per forward); whether
        # they checkpoint, and how, is read at every training forward
        if getattr(self, "_checkpointable", None) is None:
            self._checkpointable = [
                (p, m) for p, m in self.model.named_modules() if hasattr(m, "gradient_checkpointing")
            ]
        check_reentrant_checkpointing(self.model, self._checkpointable)

    def derive_structure(
        self, adapter_name: str | None = None, strategy: str = "greedy", alpha: list[torch.Tensor] | None = None
    ) -> dict:
        """Discretise a search-mode adapter: keep candidates under the budget by their keep probability.

        Args:
            adapter_name (`str`, *optional*): defaults to the active adapter.
            strategy (`str`, *optional*, defaults to `"greedy"`): `"greedy"` (by p, the paper's rule) or
                `"knapsack"` (exact: maximum Σp under the budget).
            alpha (`list[torch.Tensor]`, *optional*): α vectors to use instead of the live ones (e.g. from the best
                checkpoint), in the order of `architecture_parameters()`.

        Returns:
            `dict`: the structure (JSON-able), for `S3PETConfig(structure=...)`.
        """
        name = adapter_name or self.active_adapters[0]
        plan, config = self._search_plan(name), self.peft_config[name]
        p, _, _ = self.keep_probabilities(name, alpha if alpha is not None else self.architecture_parameters(name))
        space = config.search_space
        return build_structure(plan["candidates"], p.tolist(), plan["budget"], plan["base_params"], strategy, space)

    def random_structure(
        self, seed: int = 0, budget: float | int | None = None, adapter_name: str | None = None
    ) -> dict:
        """A random structure of a search-mode adapter's space: the baseline a searched structure must beat.

        Every candidate gets a keep score drawn uniformly from [0, 1) by Python's `random.Random(seed)`
        (independent of torch's global generator), in search-space order; then candidates are kept greedily by that
        score until `budget` is filled, the rule `derive_structure()` applies to keep probabilities. The result is
        recorded with `"space": "random"` and each kept module's score as `p`.

        Args:
            seed (`int`, *optional*, defaults to 0): seed of the scores; the same seed gives the same structure.
            budget (`float` or `int`, *optional*): parameter budget, read as `S3PETConfig.budget` is: a fraction of
                the base model's parameters when < 1, an absolute count when >= 1; it must fit the smallest candidate
                and stay below the whole search space. Defaults to the adapter's own (resolved) budget.
            adapter_name (`str`, *optional*): defaults to the active adapter.

        Returns:
            `dict`: the structure (JSON-able), for `S3PETConfig(structure=...)`.

        Example:

        ```py
        >>> import peft_designspace
        >>> from peft import get_peft_model
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> base = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                                                 intermediate_size=64, vocab_size=100))
        >>> model = get_peft_model(base, peft_designspace.S3PETConfig(budget=500, task_type="SEQ_CLS"))
        >>> structure = model.base_model.random_structure(seed=0)
        >>> structure["budget"], structure["total"] <= structure["budget"]
        (500, True)
        >>> model.base_model.random_structure(seed=0, budget=0.005)["budget"]  # a fraction of the base model
        189
        ```
        """
        plan = self._search_plan(adapter_name)
        candidates = plan["candidates"]
        rng = random.Random(int(seed))
        scores = [rng.random() for _ in candidates]
        target = plan["budget"] if budget is None else resolve_search_budget(budget, plan["base_params"], candidates)
        return build_structure(candidates, scores, target, plan["base_params"], "greedy", "random")

    def search_budget(self, adapter_name: str | None = None) -> int:
        """The resolved parameter budget (a count) of a search-mode adapter."""
        return int(self._search_plan(adapter_name)["budget"])

    # merging (`merge_and_unload(partial=...)` comes from the mixin) ----------------------------------------------
    def unmergeable_parts(self, adapter_names: list[str] | None = None) -> list[str]:
        """The mixin's list, led by every given adapter in search mode (none of a gated adapter merges)."""
        names = adapter_names or self.active_adapters
        searching = [
            f"{n}: S3PET adapter in search mode (gated candidates; derive its structure with `derive_structure()` "
            "and train it in apply mode)"
            for n in names
            if self.peft_config[n].searching
        ]
        return searching + super().unmergeable_parts(adapter_names)

    def _check_mergeable(self, adapter_names: list[str]) -> None:
        searching = [n for n in adapter_names if self.peft_config[n].searching]
        if searching:
            raise ValueError(
                f"Adapter(s) {searching} are in S3PET search mode (gated candidates): derive the structure with "
                "`derive_structure()`, then train it in apply mode, which can be merged."
            )

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        self._remove_gate_hooks()
        return super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )


def checkpointed_modules(model: nn.Module, modules: list | None = None) -> tuple[list[str], list[str]]:
    """`(checkpointed, reentrant)`: paths of the modules of `model` (or of the `(path, module)` pairs `modules`) that
    checkpoint their activations, and those of them that use the reentrant `torch.utils.checkpoint` (a
    `use_reentrant` left unset counts: torch takes it as True)."""
    checkpointed, reentrant = [], []
    for path, module in model.named_modules() if modules is None else modules:
        function = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) is True and callable(function):
            checkpointed.append(path)
            # a `functools.partial(checkpoint, ...)`
            if (getattr(function, "keywords", None) or {}).get("use_reentrant", True) is not False:
                reentrant.append(path)
    return checkpointed, reentrant


def check_reentrant_checkpointing(model: nn.Module, modules: list | None = None) -> None:
    """Raise if `model` checkpoints activations reentrantly, which an S3PET search cannot train under.

    Every layer reads its gates from one graph built per forward from α. The reentrant `torch.utils.checkpoint`
    replays each layer inside the backward pass and backpropagates the replay on its own, so it would walk that shared
    graph once per layer (torch: "Trying to backward through the graph a second time"), and `torch.autograd.grad` in
    α sees none of the replayed layers (α's gradient is silently zero). The non-reentrant variant (transformers'
    default) records the replay in the outer graph and gives exact gradients.
    """
    _, reentrant = checkpointed_modules(model, modules)
    if reentrant:
        raise ValueError(
            f"S3PET search cannot run under reentrant activation checkpointing (`use_reentrant=True`, or no "
            f"`use_reentrant`, which torch {torch.__version__} treats as True), used by {reentrant[0]!r} and "
            f"{len(reentrant) - 1} more modules: the gates are shared by every layer, so α's gradient would be lost. "
            "Use `TrainingArguments(gradient_checkpointing=True, gradient_checkpointing_kwargs={'use_reentrant': "
            "False})` (transformers' default) or `model.gradient_checkpointing_enable(gradient_checkpointing_kwargs="
            "{'use_reentrant': False})`; `peft.prepare_model_for_kbit_training` takes the same "
            "`gradient_checkpointing_kwargs`."
        )
