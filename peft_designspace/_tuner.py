"""Pieces shared by the pack's tuners (`BaseTuner` subclasses)."""

from torch import nn


class WrapperTunerMixin:
    """For tuners whose layers keep the original module as `base_layer` (put back unchanged on unload).

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
