"""Adapter export, Hugging Face Hub sharing and the `peft-designspace` command line for the pack's methods.

- `write_model_card(dir)`: README.md with PEFT metadata, the install-and-import snippet, the method's settings and
  the budget report (see `adapters_hub.card`).
- `load_adapter(path_or_repo, base_model=None, ...)`: load a saved adapter from a folder or the Hub, with
  actionable errors for an uninstalled method, a newer pack, a corrupted file or the wrong base model
  (see `adapters_hub.loading`).
- `push_adapter(model, repo_id, ...)`: save, write the card and upload in one commit. `model.push_to_hub` works
  too, but transformers replaces README.md by its generic card on the way (see `adapters_hub.hub`).
  `push_folder(dir, repo_id, ...)` does the same for an adapter already saved.
- `export_merged(model, dir)` / `export_to_peft(model, dir)`: formats that load without the pack (merged full model;
  plain-PEFT LoRA or SHiRA adapter), see `adapters_hub.export`.

Names are imported lazily, so `import adapters_hub` (and the command line's `--help`) does not import torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "report_from_saved": "card",
    "write_model_card": "card",
    "push_adapter": "hub",
    "push_folder": "hub",
    "AdapterLoadError": "loading",
    "AdapterVersionError": "loading",
    "BaseModelMismatchError": "loading",
    "CorruptedAdapterError": "loading",
    "load_adapter": "loading",
    "read_safetensors_header": "loading",
    "ExportError": "export",
    "ExportInfo": "export",
    "export_merged": "export",
    "export_to_peft": "export",
}

__all__ = [
    "AdapterLoadError",
    "AdapterVersionError",
    "BaseModelMismatchError",
    "CorruptedAdapterError",
    "ExportError",
    "ExportInfo",
    "export_merged",
    "export_to_peft",
    "load_adapter",
    "push_adapter",
    "push_folder",
    "read_safetensors_header",
    "report_from_saved",
    "write_model_card",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adapters_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
