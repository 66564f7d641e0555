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
from typing import TYPE_CHECKING, Any

from .card import write_model_card

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
        adapter_name (`str`, *optional*): adapter whose budget report goes into the card (default: the active one).

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

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    tuner = getattr(model, "base_model", None)
    report = None
    if hasattr(tuner, "budget_report"):
        report = tuner.budget_report(adapter_name)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        write_model_card(folder, report=report, repo_id=repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)


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

    Returns:
        `huggingface_hub.CommitInfo`

    Example:

    ```py
    >>> push_folder("outputs/designspace-SST-2/adapter", "my-org/minilm-s4-sst2")  # doctest: +SKIP
    ```
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(adapter_dir, folder, dirs_exist_ok=True)
        write_model_card(folder, repo_id=repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
