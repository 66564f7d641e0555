"""The SAM tuner: finds the targeted tensors, splits the budget, wraps the modules, saves and reloads selections."""

import warnings
import zlib
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import nn

from .._config import floor_of_fraction
from .._tuner import WrapperTunerMixin
from .._warnings import DesignSpaceWarning
from ..architecture import linear_features, resolve_architecture
from .config import SAMTuningConfig
from .layer import SAMTuningLayer, module_kind
from .selection import split_budget

MAX_ENTRIES = 2**31  # flat indices are int32: 0 ... 2**31 - 1
CONTAINERS = {
    "samtuning_weight_values": "weight",
    "samtuning_bias_values": "bias",
    "samtuning_weight_indices": "weight",
    "samtuning_bias_indices": "bias",
}


@dataclass
class SAMTarget:
    """One targeted module: its path, kind and the numel of each targeted part (`weight`, `bias`)."""

    path: str
    kind: str
    parts: dict[str, int]
    transposed: bool = False  # a GPT-2 `Conv1D`: its weight is stored (in, out)


def _unwrapped(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if isinstance(module, SAMTuningLayer) else module


def find_targets(model: nn.Module, config: SAMTuningConfig) -> list[SAMTarget]:
    """The modules and tensors `config` targets in `model`, in module order (already wrapped modules included)."""
    modules = {name: m for name, m in model.named_modules() if ".base_layer" not in f".{name}."}
    if config.target_modules is None:
        arch = resolve_architecture(model, config.layer_stacks)
        strip = lambda p: p[: -len(".base_layer")] if p.endswith(".base_layer") else p  # noqa: E731
        wanted = {strip(p) for layer in arch.layers for p in layer.linears}
        if config.include_norms:
            wanted |= {strip(p) for layer in arch.layers for p in layer.norms}
        rules = SimpleNamespace(
            target_modules=sorted(wanted),
            exclude_modules=config.exclude_modules,
            modules_to_save=config.modules_to_save,
            target_parameters=None,
        )
        names = [n for n in modules if n in wanted and check_target_module_exists(rules, n)]
    else:
        if config.include_norms:
            warnings.warn(
                "`include_norms=True` only widens the default targets; with `target_modules` given it has no effect: "
                "name the norms in `target_modules` to tune them.",
                DesignSpaceWarning,
                stacklevel=4,
            )
        names = [
            n for n in modules if n and module_kind(_unwrapped(modules[n])) and check_target_module_exists(config, n)
        ]
    if config.include_embeddings:
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        found = (n for n, m in modules.items() if embedding is not None and embedding in (m, _unwrapped(m)))
        path = next(found, None)
        if path is None:
            raise ValueError(f"`include_embeddings=True` but {type(model).__name__} has no input embedding module.")
        names.append(path)
    targets = []
    for name in dict.fromkeys(n for n in modules if n in set(names)):
        base = _unwrapped(modules[name])
        kind = module_kind(base)
        if kind == "linear":
            in_features, out_features = linear_features(base)
            parts = {"weight": in_features * out_features}  # not weight.numel(): 4-bit weights are packed
        else:
            parts = {"weight": base.weight.numel()}
        has_bias = getattr(base, "bias", None) is not None
        if has_bias and (kind == "norm" or (kind == "linear" and config.include_biases)):
            parts["bias"] = base.bias.numel()
        targets.append(SAMTarget(name, kind, parts, transposed=type(base).__name__ == "Conv1D"))
    return targets


def budget_count(config: SAMTuningConfig, total: int) -> int:
    """The number of entries `config.budget` selects out of `total` targeted entries (with clear errors)."""
    if config.budget < 1:
        count = floor_of_fraction(config.budget, total)  # ⌊p·m⌋ of the budget as written (0.29 of 100 is 29)
        if count < 1:
            raise ValueError(
                f"`budget` {config.budget!r} selects no entry out of the {total:,} targeted parameters; use at least "
                f"{1 / total:.3g} (or an absolute count >= 1)."
            )
        return count
    if config.budget > total:
        raise ValueError(
            f"`budget` {config.budget!r} is larger than the {total:,} targeted parameters; use a count <= {total:,} "
            "or a fraction < 1."
        )
    return int(config.budget)


class SAMTuningModel(WrapperTunerMixin, BaseTuner):
    """Creates SAM sparse-tuning adapters on a transformers model.

    Use it through `peft.get_peft_model(model, SAMTuningConfig(...))` after `import peft_designspace`, then choose the
    entries with [`calibrate_sam`] before training.

    Example:

    ```py
    >>> import peft_designspace
    >>> from peft import get_peft_model
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> base = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.SAMTuningConfig(budget=100, task_type="CAUSAL_LM"))
    >>> model.get_nb_trainable_parameters()[0]
    100
    ```
    """

    prefix: str = "samtuning_"
    tuner_layer_cls = SAMTuningLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: SAMTuningConfig, model_config: dict) -> SAMTuningConfig:
        return peft_config

    def _plan(self, model: nn.Module, config: SAMTuningConfig, adapter_name: str) -> None:
        targets = find_targets(model, config)
        if not targets:
            raise ValueError(
                f"No module of {type(model).__name__} matched `target_modules`={config.target_modules!r} "
                f"(exclude_modules={config.exclude_modules!r}); SAM targets linear, embedding and norm modules"
                + (
                    f", never those of `modules_to_save`={list(config.modules_to_save)} (such as the task head, which "
                    "is trained in full outside the budget)."
                    if config.modules_to_save
                    else "."
                )
            )
        keys = [f"{t.path}.{part}" for t in targets for part in t.parts]
        sizes = [n for t in targets for n in t.parts.values()]
        too_large = [(k, n) for k, n in zip(keys, sizes) if n > MAX_ENTRIES]
        if too_large:  # flat indices are int32: a larger tensor's would wrap to negative ones
            raise ValueError(
                f"SAM stores int32 flat indices, so a tensor may have at most {MAX_ENTRIES:,} entries; "
                f"{too_large[0][0]!r} has {too_large[0][1]:,}. Leave its module out with `exclude_modules` or "
                "`target_modules`."
            )
        if config.nnz_pattern is not None:
            missing = sorted(set(keys) - set(config.nnz_pattern))
            unknown = sorted(set(config.nnz_pattern) - set(keys))
            if missing or unknown:
                raise ValueError(
                    f"The adapter's `nnz_pattern` does not fit {type(model).__name__}: tensors missing from it "
                    f"{missing[:3]}, tensors the model lacks {unknown[:3]}. The adapter was made for another model."
                )
            counts = [config.nnz_pattern[k] for k in keys]
            too_big = [(k, c, n) for k, c, n in zip(keys, counts, sizes) if c > n]
            if too_big:
                raise ValueError(f"`nnz_pattern` asks for more entries than a tensor has: {too_big[:3]}.")
        else:
            counts = split_budget(sizes, budget_count(config, sum(sizes)))
        self._sam_counts = dict(zip(keys, counts))
        self._sam_paths = {t.path for t in targets}
        if config.transposed_indices is None:  # a new adapter (or one saved before the field): the live layout
            config.transposed_indices = sorted(f"{t.path}.weight" for t in targets if t.transposed)
        if not config.init_weights and config.nnz_pattern is None:
            config.nnz_pattern = dict(self._sam_counts)  # a random selection is drawn right away
            # seeded by `seed` and the adapter name, so two test adapters differ
            # (modulo 2**64: a torch seed's range, which `seed` near its top would leave)
            seed = (config.seed + zlib.crc32(adapter_name.encode())) % 2**64
            self._sam_generator = torch.Generator().manual_seed(seed)
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._sam_tied = embedding is not None and getattr(output, "weight", None) is getattr(embedding, "weight", 0)

    def _check_target_module_exists(self, peft_config: SAMTuningConfig, key: str) -> bool:
        return key in self._sam_paths

    def _create_and_replace(
        self,
        peft_config: SAMTuningConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        options = {
            "weight_nnz": self._sam_counts[f"{current_key}.weight"],
            "bias_nnz": self._sam_counts.get(f"{current_key}.bias"),
            "init_weights": peft_config.init_weights,
            "generator": getattr(self, "_sam_generator", None),
        }
        layer = self._wrap_or_update(SAMTuningLayer, target, adapter_name, parent, target_name, **options)
        layer.tied = layer.kind == "embedding" and self._sam_tied

    # selections ---------------------------------------------------------------------------------------------------
    def sam_layers(self, adapter_name: str) -> list[tuple[str, SAMTuningLayer]]:
        """`(module path, layer)` of every layer holding `adapter_name`, in module order."""
        return sam_layers_of(self.model, adapter_name)

    def selection(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """`"<module path>.<part>"` -> sorted int64 flat indices of the selected entries of one adapter."""
        name = adapter_name or self.active_adapters[0]
        found = {}
        for path, layer in self.sam_layers(name):
            for part in ("weight", "bias"):
                indices = getattr(layer, f"samtuning_{part}_indices")
                if name in indices:
                    found[f"{path}.{part}"] = indices[name].long()
        return found

    def unmergeable_parts(self, adapter_names: list[str] | None = None) -> list[str]:
        """`"module path: reason"` for every SAM delta of the given (default: active) adapters that cannot merge.

        A delta on a tied embedding (the output projection shares the weight) or on a forward-only quantized layer.
        """
        found = []
        for name in adapter_names or self.active_adapters:
            for path, layer in self.sam_layers(name):
                if layer.tied:
                    found.append(f"{path}: SAM delta on a tied embedding (the output projection shares the weight)")
                backend = layer.quantization_backend
                if backend is not None and not backend.supports_merge:
                    found.append(f"{path}: SAM delta on a forward-only quantized layer")
        return found

    # saving and loading -------------------------------------------------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        if not has_selection(model, adapter_name):
            raise ValueError(
                f"The SAM adapter {adapter_name!r} was never calibrated, so it would save an adapter that trains "
                "nothing. Call `peft_designspace.calibrate_sam(model, batches)` before training (or pass "
                "`trainer_ext.SAMCalibrationCallback()` to the Trainer), then train and save."
            )
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        if config.save_dtype is not None:
            dtype = getattr(torch, config.save_dtype)
            selected = {k: v.to(dtype) if "_values." in k else v for k, v in selected.items()}
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        # Values and indices are resized to the checkpoint's shapes first (a global selection is only known after
        # calibration, e.g. when Trainer resumes into a freshly built model), so that loading never sees a mismatch.
        mapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        modules = dict(model.named_modules())
        pattern = dict(config.nnz_pattern or {})
        for key, tensor in mapped.items():
            module_path, _, rest = key.rpartition(".samtuning_")
            container, _, name = f"samtuning_{rest}".partition(".")
            layer = modules.get(module_path)
            if name != adapter_name or container not in CONTAINERS or not isinstance(layer, SAMTuningLayer):
                continue
            live = getattr(layer, container)
            if name in live and live[name].shape != tensor.shape:
                with torch.no_grad():
                    if container.endswith("_values"):
                        live[name].data = torch.zeros(tensor.shape, dtype=live[name].dtype, device=live[name].device)
                    else:
                        live[name] = torch.zeros(tensor.shape, dtype=torch.int32, device=live[name].device)
            part = CONTAINERS[container]
            base_path = module_path.removeprefix("base_model.model.")
            pattern[f"{base_path}.{part}"] = tensor.numel()
        if pattern:
            config.nnz_pattern = pattern
        _match_index_layout(modules, config, adapter_name, mapped)
        return mapped


def has_selection(model: nn.Module, adapter_name: str = "default") -> bool:
    """Whether SAM adapter `adapter_name` of `model` holds its selection in every layer: calibrated, loaded with its
    weights (by PEFT, transformers' `load_adapter` or `load_state_dict`), or drawn at random (`init_weights=False`).

    A new adapter holds placeholder indices until then, also one built from a config that carries the counts
    (`nnz_pattern`) of a saved or another adapter; saving it is refused, and `calibrate_sam` calibrates it.

    Example:

    ```py
    >>> import peft_designspace
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> base = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                                 intermediate_size=64, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.SAMTuningConfig(budget=50, task_type="SEQ_CLS"))
    >>> has_selection(model)
    False
    ```
    """
    layers = [layer for _, layer in sam_layers_of(model, adapter_name)]
    return bool(layers) and not any(layer.holds_placeholder(adapter_name) for layer in layers)


def sam_layers_of(model: nn.Module, adapter_name: str) -> list[tuple[str, SAMTuningLayer]]:
    """`(module path, layer)` of every SAM layer of `model` (a PeftModel or a model with an injected adapter) that
    holds `adapter_name`, in module order."""
    return [
        (path, m)
        for path, m in model.named_modules()
        if isinstance(m, SAMTuningLayer) and adapter_name in m.samtuning_weight_values
    ]


def _match_index_layout(modules: dict, config: SAMTuningConfig, adapter_name: str, state_dict: dict) -> None:
    """Re-express saved weight indices in the live layers' storage order, in place.

    Flat indices count in storage order: (in, out) for GPT-2's `Conv1D`, (out, in) for `nn.Linear` and for the
    bitsandbytes layers transformers puts in a `Conv1D`'s place when it quantizes GPT-2. Both have the same number of
    entries, so an adapter moved between the two forms would load without error with every value on the transposed
    entry (logits 0.51 off on a tiny GPT-2). `config.transposed_indices` says which weights were saved (in, out);
    those whose live layout differs are transposed here (the values follow their entries), and the config then
    describes the live layout, which the next save writes.
    """
    saved = set(config.transposed_indices or [])
    live = set()
    for path, module in modules.items():
        if isinstance(module, SAMTuningLayer) and module.kind == "linear" and module.transposed:
            live.add(f"{path.removeprefix('base_model.model.')}.weight")
    for key in [k for k in state_dict if ".samtuning_weight_indices." in k]:
        module_path, _, name = key.partition(".samtuning_weight_indices.")
        weight = f"{module_path.removeprefix('base_model.model.')}.weight"
        layer = modules.get(module_path)
        if name != adapter_name or not isinstance(layer, SAMTuningLayer) or (weight in saved) == (weight in live):
            continue
        rows, cols = layer.stored_shape("weight")  # live; the saved layout is (cols, rows)
        flat = state_dict[key].long()
        moved = (flat % rows) * cols + flat // rows
        order = torch.argsort(moved)
        state_dict[key] = moved[order].to(torch.int32)
        values_key = f"{module_path}.samtuning_weight_values.{name}"
        if values_key in state_dict:
            state_dict[values_key] = state_dict[values_key][order.to(state_dict[values_key].device)]
    config.transposed_indices = sorted(live)
