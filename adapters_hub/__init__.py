"""Adapter export and Hugging Face Hub sharing for the pack's methods.

- `write_model_card(dir)`: README.md with PEFT metadata, the install-and-import snippet, the method's settings and
  the budget report (see `adapters_hub.card`).
- `load_adapter(path_or_repo, base_model=None, ...)`: load a saved adapter from a folder or the Hub, with
  actionable errors for an uninstalled method, a newer pack, a corrupted file or the wrong base model
  (see `adapters_hub.loading`).

- `push_adapter(model, repo_id, ...)`: save, write the card and upload in one commit. `model.push_to_hub` works
  too, but transformers replaces README.md by its generic card on the way (see `adapters_hub.hub`).
"""

from .card import report_from_saved, write_model_card
from .hub import push_adapter
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
    "push_adapter",
    "read_safetensors_header",
    "report_from_saved",
    "write_model_card",
]
