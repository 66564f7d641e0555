"""Adapter export and Hugging Face Hub sharing for the pack's methods.

- `write_model_card(dir)`: README.md with PEFT metadata, the install-and-import snippet, the method's settings and
  the budget report (see `adapters_hub.card`).
- `load_adapter(path_or_repo, base_model=None, ...)`: load a saved adapter from a folder or the Hub, with
  actionable errors for an uninstalled method, a newer pack, a corrupted file or the wrong base model
  (see `adapters_hub.loading`).

Saving and pushing go through PEFT itself: `model.save_pretrained(dir)` / `model.push_to_hub(repo_id)`.
"""

from .card import report_from_saved, write_model_card
from .loading import (
    AdapterLoadError,
    AdapterVersionError,
    BaseModelMismatchError,
    CorruptedAdapterError,
    load_adapter,
    read_safetensors_header,
)

__all__ = [
    "AdapterLoadError",
    "AdapterVersionError",
    "BaseModelMismatchError",
    "CorruptedAdapterError",
    "load_adapter",
    "read_safetensors_header",
    "report_from_saved",
    "write_model_card",
]
