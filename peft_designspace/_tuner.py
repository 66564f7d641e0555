"""Pieces shared by the pack's tuners (`BaseTuner` subclasses)."""

import copy
import warnings

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ._config import ADAPTER_NAME_ATTRIBUTE
from ._layers import check_finite_deltas, guard_cpu_packing, keeping_requires_grad, on_meta
from ._warnings import DesignSpaceWarning


class WrapperTunerMixin:
    """For tuners whose layers keep the original module as `base_layer` (put back unchanged on unload), and whose
    adapter containers may hold nested modules (state-dict keys with the adapter name in the middle).

    PEFT's generic `_replace_module` copies `.weight` from the old module, which fails for modules without one (e.g.
    RoBERTa's classification head in `modules_to_save`); there is nothing to copy here. New adapter parts go to the
    base weight's device.
    """

    prefix: str
    tuner_layer_cls: type

    def _wrap_or_update(
        self, wrapper_cls: type, target: nn.Module, adapter_name: str, parent: nn.Module, target_name: str, **options
    ) -> nn.Module:
        """Add `adapter_name` to `target` when it already is a tuner layer, else wrap it in `wrapper_cls` in place."""
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, **options)
            target.train(target.training)  # the new parts in the layer's mode
            return target
        new_module = wrapper_cls(target, adapter_name, **options)
        # in the mode of the module it wraps: new modules start in train mode, so a model loaded with
        # `from_pretrained` (eval mode) had its new adapter parts (their dropout, S3PET's sampled gates) in train mode
        new_module.train(target.training)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
        return new_module

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        setattr(parent, child_name, new_module)
        if isinstance(new_module, self.tuner_layer_cls):
            weight = next(new_module.get_base_layer().parameters(), None)
            if weight is not None and weight.device.type != "meta":
                for name, module in new_module.named_children():
                    # parts created on the meta device (`low_cpu_mem_usage=True`) stay there: PEFT materialises
                    # them when it loads the adapter's weights (`assign=True`)
                    if name.startswith(self.prefix) and not on_meta(module):
                        module.to(weight.device)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # PEFT re-wraps the cast tensors of parameter dicts as trainable parameters; frozen ones stay frozen
        with keeping_requires_grad(self.model, adapter_name):
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # Our containers hold nested modules (e.g. `designspace_lora.<name>.A.weight`), so the adapter name is not
        # always second to last. Remove the segment right after the first `<prefix>*` container: transformers'
        # `load_adapter` re-inserts the adapter name exactly there.
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.startswith(cls.prefix) and parts[i + 1] == adapter_name:
                return ".".join(parts[: i + 1] + parts[i + 2 :])
        return super()._remove_adapter_name_from_key(key, adapter_name)

    # planning: every tuner of the pack resolves its placement in `_plan`, also for adapters added later -----------
    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        # The model gets its own copy of the config: planning (S4's plan) and later steps (SAM's calibration) write
        # into it, and written into the caller's object they would carry over to the next model it is used for
        # (a larger model silently took the first model's plan and budget).
        self.peft_config[adapter_name] = copy.deepcopy(self.peft_config[adapter_name])
        # the config learns its adapter's name, for the model card written when it is saved (`PackConfigMixin`)
        setattr(self.peft_config[adapter_name], ADAPTER_NAME_ATTRIBUTE, adapter_name)
        _add_late_task_heads(self.peft_config[adapter_name])
        self._refuse_foreign_layers(model)
        # planned here rather than in `_pre_injection_hook`, which `PeftModel.add_adapter` does not call
        self._plan(model, self.peft_config[adapter_name], adapter_name)
        # The plan names every module to wrap. PEFT's `state_dict=` targeting (for checkpoints whose config cannot
        # say where the adapters go) reads module paths off the keys, which misses modules the tuner creates (S4's
        # prefix holders: its prefixes were silently dropped); the keys' values are not used there anyway.
        kwargs.pop("state_dict", None)
        super().inject_adapter(model, adapter_name, **kwargs)
        guard_cpu_packing(model)  # bitsandbytes' CPU packing of 4-bit weights breaks training and saving otherwise

    def _plan(self, model: nn.Module, config, adapter_name: str) -> None:
        raise NotImplementedError

    def _refuse_foreign_layers(self, model: nn.Module) -> None:
        """Raise when `model` already holds another PEFT method's adapter layers (e.g. through
        `inject_adapter_in_model` twice): the pack's layers do not stack on them (planning, merging and unloading
        read the plain base modules), and classifying a wrapped module gave contradictory errors before."""
        foreign = [
            (path, f"{type(module).__module__}.{type(module).__qualname__}")
            for path, module in model.named_modules()
            if isinstance(module, BaseTunerLayer) and not isinstance(module, self.tuner_layer_cls)
        ]
        if foreign:
            path, kind = foreign[0]
            raise ValueError(
                f"The model already holds {len(foreign)} adapter layers of another method (e.g. {path!r}, a {kind}); "
                f"{type(self).__name__} adapters cannot be stacked on them. Merge or unload them first "
                "(`merge_and_unload()` or `unload()`), or start from a model without them."
            )

    # merging ----------------------------------------------------------------------------------------------------
    def unmergeable_parts(self, adapter_names: list[str] | None = None) -> list[str]:
        """`"module path: part"` for every part of the given (default: active) adapters that cannot be merged."""
        names = adapter_names or self.active_adapters
        found = []
        for path, module in self.model.named_modules():
            if isinstance(module, self.tuner_layer_cls):
                found.extend(f"{path}: {part}" for part in module.unmergeable_parts(names))
        return found

    def _check_mergeable(self, adapter_names: list[str]) -> None:
        """Raise when the adapters cannot be merged at all (default: they can)."""

    def _check_finite_deltas(self, adapter_names: list[str] | None) -> None:
        """For `safe_merge=True`: every layer's deltas are checked before any layer merges, so that a refusal
        leaves the whole model unmerged (each layer's own check would leave the layers before it merged)."""
        names = adapter_names or self.active_adapters
        for module in self.model.modules():
            if isinstance(module, self.tuner_layer_cls) and hasattr(module, "_safe_merge_parts"):
                pending = [n for n in names if n not in module.merged_adapters]
                check_finite_deltas(module._safe_merge_parts(pending))

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        if safe_merge:  # checked here for every layer at once; the layers need not check again
            self._check_finite_deltas(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=False)

    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
        partial: bool = False,
    ) -> nn.Module:
        """Merge the mergeable parts into the base weights and return the plain base model.

        Parts that are not linear in the weights (see `unmergeable_parts()`) cannot be merged: with such parts this
        raises, unless `partial=True`, which merges the rest and *drops* them (the outputs then differ from the
        adapted model's). To merge while keeping them active, use `merge_adapter()` instead.

        Args:
            progressbar (`bool`): show a progress bar.
            safe_merge (`bool`): check the merged deltas for NaNs first.
            adapter_names (`list[str]`, *optional*): adapters to merge; defaults to the active ones.
            partial (`bool`, *optional*, defaults to `False`): allow dropping the non-mergeable parts.
        """
        self._check_mergeable(adapter_names or self.active_adapters)
        parts = self.unmergeable_parts(adapter_names)
        if parts and not partial:
            raise ValueError(
                f"This adapter has {len(parts)} parts that cannot be merged into the base weights, e.g. "
                f"{parts[:3]}. Call `merge_and_unload(partial=True)` to merge the rest and drop them, or "
                "`merge_adapter()` to merge the rest while they stay active."
            )
        if parts:
            warnings.warn(
                f"Dropping {len(parts)} non-mergeable parts (e.g. {parts[:3]}); the merged model's outputs differ "
                "from the adapted model's.",
                DesignSpaceWarning,
                stacklevel=2,
            )
        if safe_merge:  # checked here for every layer at once; the layers need not check again
            self._check_finite_deltas(adapter_names)
        return self._unload_and_optionally_merge(
            merge=True, progressbar=progressbar, safe_merge=False, adapter_names=adapter_names
        )


# Heads that PEFT's task models add to `modules_to_save` only after the tuner is built, on the caller's config object
# (`PeftModelForTokenClassification`, `PeftModelForQuestionAnswering`); our tuner holds a copy made before, so it adds
# them itself (else PEFT iterates the copy's `modules_to_save=None` and fails). Sequence classification adds its heads
# before the tuner is built.
_LATE_TASK_HEADS = {"TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}


def _add_late_task_heads(config) -> None:
    heads = _LATE_TASK_HEADS.get(getattr(config, "task_type", None) or "", ())
    if heads and hasattr(config, "modules_to_save"):
        names = list(config.modules_to_save or [])
        config.modules_to_save = names + [h for h in heads if h not in names]
