"""Push an adapter to the Hub with the pack's model card.

`PeftModel.push_to_hub` (transformers' `PushToHubMixin`) saves into a temporary folder and then *replaces* README.md
with the card already on the Hub or with transformers' generic template (`library_name: transformers`), so no card
written during `save_pretrained` reaches the Hub that way. `push_adapter` saves, writes the card with the live
budget report and uploads the folder in one commit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .card import write_model_card
from .loading import CONFIG_NAME, WEIGHTS_NAME

if TYPE_CHECKING:
    from torch import nn


def push_adapter(
    model: nn.Module,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload adapter",
    adapter_name: str | None = None,
) -> Any:
    """Save `model`'s adapter, write its model card and upload both to `repo_id` (created if needed).

    Args:
        model (`peft.PeftModel`): the adapted model.
        repo_id (`str`): the target repository, `namespace/name`.
        token (`str`, *optional*): a token with write access (default: the logged-in one).
        private (`bool`, *optional*): visibility of a newly created repository.
        revision (`str`, *optional*): branch to commit to (created from `main` if missing); defaults to `main`.
        commit_message (`str`, *optional*): the commit title.
        adapter_name (`str`, *optional*): the adapter to upload, with its config, weights and budget report at the
            repository root (default: the active one); the model's other adapters are not uploaded.

    Raises:
        ValueError: if `adapter_name` is not an adapter of the model (checked before the repository is created).

    Returns:
        `huggingface_hub.CommitInfo`: the commit (its `oid` pins this exact version).

    Example:

    ```py
    >>> from adapters_hub import push_adapter
    >>> push_adapter(model, "my-org/bert-s4-sst2", private=True)  # doctest: +SKIP
    CommitInfo(commit_url=..., oid='...')
    ```
    """
    from huggingface_hub import HfApi

    configs = getattr(model, "peft_config", None) or {}
    name = adapter_name if adapter_name is not None else getattr(model, "active_adapter", None)
    if not isinstance(name, str) or name not in configs:
        raise ValueError(
            f"push_adapter: adapter_name={name!r} is not an adapter of the model; choose one of {sorted(configs)}."
        )
    tuner = getattr(model, "base_model", None)
    report = tuner.budget_report(name) if hasattr(tuner, "budget_report") else None
    with tempfile.TemporaryDirectory() as saved, tempfile.TemporaryDirectory() as folder:
        # only the selected adapter, at the repository root (PEFT nests every adapter but "default" in a subfolder)
        model.save_pretrained(saved, selected_adapters=[name])
        source = Path(saved) if name == "default" else Path(saved) / name
        _check_adapter_folder(source)
        for item in source.iterdir():
            if item.is_file() and item.name != "README.md":
                shutil.copy2(item, folder)
        write_model_card(folder, report=report, repo_id=repo_id, adapter_name=name)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)


def _check_adapter_folder(folder: Path) -> None:
    """Refuse a folder that is not a saved adapter with safetensors weights (before anything is created on the Hub)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"The adapter folder {str(folder)!r} does not exist.")
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"The folder {str(folder)!r} has no {CONFIG_NAME}; pass a folder written by `save_pretrained`."
        )
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"The folder {str(folder)!r} has no {WEIGHTS_NAME}; only safetensors weights are uploaded (save the "
            "adapter again with `save_pretrained`, which writes safetensors by default)."
        )


def push_folder(
    adapter_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload adapter",
) -> Any:
    """Upload a saved adapter folder to `repo_id` with the pack's model card (written on a copy; the folder is kept).

    Args:
        adapter_dir (`str` or `os.PathLike`): a folder written by `save_pretrained`.
        repo_id (`str`): the target repository, `namespace/name`.
        token, private, revision, commit_message: as in [`push_adapter`].

    Raises:
        FileNotFoundError: if the folder, its `adapter_config.json` or its `adapter_model.safetensors` is missing
            (checked before the repository is created).

    Returns:
        `huggingface_hub.CommitInfo`

    Example:

    ```py
    >>> push_folder("outputs/designspace-SST-2/adapter", "my-org/minilm-s4-sst2")  # doctest: +SKIP
    ```
    """
    from huggingface_hub import HfApi

    _check_adapter_folder(Path(adapter_dir))
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(adapter_dir, folder, dirs_exist_ok=True)
        write_model_card(folder, repo_id=repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
