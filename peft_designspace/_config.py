"""What every config of the pack shares: the pack version it was written with, and the model card on save."""

from dataclasses import dataclass, field

from ._version import __version__


@dataclass
class PackConfigMixin:
    """Mixed into the pack's `PeftConfig` subclasses.

    `pack_version` lands in `adapter_config.json`, so a loader can tell an adapter written by a newer pack (see
    `adapters_hub.load_adapter`). Saving a config also writes the pack's model card (`README.md`) next to it: PEFT
    writes its own card first and the config last, so ours replaces PEFT's template body and keeps any text a person
    wrote (`adapters_hub.card.write_model_card`).
    """

    pack_version: str = field(default=__version__, metadata={"help": "peft-designspace version that wrote this."})

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        from adapters_hub.card import write_model_card  # lazy: adapters_hub imports this package

        write_model_card(save_directory)
