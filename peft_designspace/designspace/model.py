"""The design-space tuner: plans the layout, injects the tuner layers, merges what can be merged, reports budgets."""

import math

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .._tuner import WrapperTunerMixin
from ..architecture import resolve_architecture
from . import attention as prefix_attention
from .budget import build_plan, plan_targets
from .config import DesignSpaceConfig
from .layer import DesignSpaceLayer, Linear, Norm, PrefixHolder
from .report import BudgetReport, build_report

ADAPTER_PREFIXES = ("designspace_", "samtuning_", "s3pet_")  # parameters of the pack's methods, not of the base


def count_base_parameters(model: nn.Module) -> int:
    """Parameters of the base model, leaving out adapter parts and `modules_to_save` copies.

    bitsandbytes 4-bit weights pack two values per byte, in elements of `bnb_4bit_quant_storage` (uint8 by default,
    bfloat16 for QLoRA with FSDP: four values per element); they are counted as the values they hold.
    """
    total = 0
    for name, param in model.named_parameters():
        if any(prefix in name for prefix in ADAPTER_PREFIXES) or ".modules_to_save." in name:
            continue
        total += _values_held(param)
    return total


def _values_held(param: torch.Tensor) -> int:
    if type(param).__name__ != "Params4bit" or not getattr(param, "bnb_quantized", True):
        return param.numel()  # a 4-bit weight not quantized yet still holds its values as they are
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:  # the weight's own shape, whatever the storage and packing
        return math.prod(shape)
    return param.numel() * param.element_size() * 2  # two 4-bit values per byte of storage


class DesignSpaceModel(WrapperTunerMixin, BaseTuner):
    """Creates design-space (S4) mixed-strategy adapters on a transformers model.

    Use it through `peft.get_peft_model(model, DesignSpaceConfig(...))` after `import peft_designspace`.

    Example:

    ```py
    >>> import peft_designspace
    >>> from peft import get_peft_model
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> base = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=8,
    ...                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.DesignSpaceConfig(budget=0.05, task_type="CAUSAL_LM"))
    >>> report = model.base_model.budget_report()
    >>> abs(report.realised / report.target - 1) <= 0.05
    True
    ```
    """

    prefix: str = "designspace_"
    tuner_layer_cls = DesignSpaceLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: DesignSpaceConfig, model_config: dict) -> DesignSpaceConfig:
        return peft_config  # placement comes from the plan, not from `target_modules`

    def _plan(self, model: nn.Module, config: DesignSpaceConfig, adapter_name: str) -> None:
        if config.plan is None:
            arch = resolve_architecture(model, config.layer_stacks)
            config.plan = build_plan(config, arch, count_base_parameters(model))
        targets = plan_targets(config.plan)
        modules = dict(model.named_modules())
        missing = [path for path in targets if path not in modules]
        if missing:
            raise ValueError(
                f"The adapter's plan names modules that {type(model).__name__} lacks, e.g. {missing[:3]} "
                f"({len(missing)} missing). The adapter was made for a different base model."
            )
        for path, spec in targets.items():  # refused here, before any module of the model is replaced
            if spec["kind"] == "attention":
                prefix_attention.check_prefix_support(modules[path])
        self._designspace_targets = targets

    def _check_target_module_exists(self, peft_config: DesignSpaceConfig, key: str) -> bool:
        return key in self._designspace_targets

    def _create_and_replace(
        self,
        peft_config: DesignSpaceConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        spec = dict(self._designspace_targets[current_key])
        kind = spec.pop("kind")
        options = {
            "lora_alpha": peft_config.lora_alpha,
            "lora_dropout": peft_config.lora_dropout,
            "adapter_mode": peft_config.adapter_mode,
            "adapter_activation": peft_config.adapter_activation,
            "init_weights": peft_config.init_weights,
            **spec,
        }
        if kind == "attention":
            self._add_prefix(peft_config, adapter_name, target, options)
            return
        self._wrap_or_update(
            Linear if kind == "linear" else Norm, target, adapter_name, parent, target_name, **options
        )

    def _add_prefix(self, config: DesignSpaceConfig, adapter_name: str, attention: nn.Module, options: dict) -> None:
        model_config = getattr(self.model, "config", None)
        hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "d_model", None)
        weight = next(attention.parameters())
        options.update(
            hidden_size=hidden,
            prefix_projection_hidden=config.prefix_projection_hidden if config.prefix_projection else None,
            device=weight.device if weight.device.type != "meta" else None,
            dtype=weight.dtype if weight.dtype.is_floating_point else None,
        )
        holder = attention._modules.get(prefix_attention.HOLDER_NAME)
        if holder is None:
            fallback = prefix_attention.check_prefix_support(attention)
            holder = PrefixHolder(adapter_name, fallback, **options)
            attention.add_module(prefix_attention.HOLDER_NAME, holder)
            prefix_attention.install(attention)
        else:
            holder.update_layer(adapter_name, **options)
        holder.train(attention.training)  # in the attention module's mode, as the wrappers (`_wrap_or_update`)

    # merging and unloading (`merge_and_unload(partial=...)` and `unmergeable_parts` come from the mixin) --------
    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        for attention in self._prefixed_attention_modules():
            del attention._modules[prefix_attention.HOLDER_NAME]
            prefix_attention.uninstall(attention)
        return super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )

    def _prefixed_attention_modules(self) -> list[nn.Module]:
        return [
            m for m in self.model.modules() if isinstance(m._modules.get(prefix_attention.HOLDER_NAME), PrefixHolder)
        ]

    # reporting ----------------------------------------------------------------------------------------------------
    def budget_report(self, adapter_name: str | None = None) -> BudgetReport:
        """Per-group, per-strategy and total trainable counts of one adapter, realised against the target.

        Counts are read off the live parameters, so they are exact. Printing the report gives a table.

        Args:
            adapter_name (`str`, *optional*): defaults to the first active adapter.
        """
        name = adapter_name or self.active_adapters[0]
        if name not in self.peft_config:
            raise ValueError(f"`adapter_name` must be one of {sorted(self.peft_config)}, got {name!r}.")
        return build_report(self.model, self.peft_config[name], name)
