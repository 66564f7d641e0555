"""Pieces shared by the pack's tuners (`BaseTuner` subclasses)."""

from torch import nn


class WrapperTunerMixin:
    """For tuners whose layers keep the original module as `base_layer` (put back unchanged on unload), and whose
    adapter containers may hold nested modules (state-dict keys with the adapter name in the middle).

    PEFT's generic `_replace_module` copies `.weight` from the old module, which fails for modules without one (e.g.
    RoBERTa's classification head in `modules_to_save`); there is nothing to copy here. New adapter parts go to the
    base weight's device.
    """

    prefix: str
    tuner_layer_cls: type

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        setattr(parent, child_name, new_module)
        if isinstance(new_module, self.tuner_layer_cls):
            weight = next(new_module.get_base_layer().parameters(), None)
            if weight is not None and weight.device.type != "meta":
                for name, module in new_module.named_children():
                    if name.startswith(self.prefix):
                        module.to(weight.device)

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
