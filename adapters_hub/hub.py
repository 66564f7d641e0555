"""Push an adapter to the Hub with the pack's model card.

`PeftModel.push_to_hub` (transformers' `PushToHubMixin`) saves into a temporary folder and then *replaces* README.md
with the card already on the Hub or with transformers' generic template (`library_name: transformers`), so no card
written during `save_pretrained` reaches the Hub that way. `push_adapter` saves, writes the card with the live
budget report and uploads the folder in one commit.

Like transformers' `push_to_hub`, both functions keep the card already on the Hub: when the repository has a README.md
at the target branch, that card (its metadata and its text, e.g. a license or notes added in the web editor) is the
one updated, with only the pack's tags and section refreshed; the local folder's README.md is used only for a
repository (or branch) that has no card yet, and a warning names that file when it holds edits (text or metadata
outside the pack's section) that are therefore not uploaded. The commit names the commit the card was read from as its
parent, so an edit made on the Hub in between makes the push fail instead of being overwritten.

A push goes to a branch: a `revision` that is a commit sha or a tag is refused. `private=True` creates a private
repository; for an existing public one the push is refused before anything is uploaded (the files would be public),
since changing the visibility of an existing repository is the owner's decision, made in its settings.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_designspace._io import is_temporary_name, write_text_atomic

from ._files import EXPORT_INFO, MARKER
from ._repo_ids import is_hub_id
from .card import BEGIN, END, _is_unedited_template, load_card, saved_record, write_model_card
from .loading import CONFIG_NAME, WEIGHTS_NAME

README = "README.md"
FULL_SHA_RE = re.compile(r"[0-9a-fA-F]{40}")
HEX_RE = re.compile(r"[0-9a-fA-F]{7,40}")
# metadata the card writer or PEFT sets on its own (PEFT adds `pipeline_tag` to a CAUSAL_LM card): not user edits
MANAGED_METADATA = ("tags", "library_name", "base_model", "pipeline_tag")

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
        private (`bool`, *optional*): `True` creates the repository as private; an existing public repository is
            refused then (nothing is uploaded).
        revision (`str`, *optional*): branch to commit to (created from `main` if missing); defaults to `main`. The
            card's snippets name it (`revision=`) unless it is `main`.
        commit_message (`str`, *optional*): the commit title.
        adapter_name (`str`, *optional*): the adapter to upload, with its config, weights and budget report at the
            repository root (default: the active one); the model's other adapters are not uploaded.

    The README.md already in the repository at `revision` is kept and updated (see the module docstring).

    Raises:
        ValueError: if `adapter_name` is not an adapter of the model (checked before the repository is created), if
            the README.md on the Hub has invalid YAML metadata, if `private=True` and the repository exists and is
            public, or if `revision` is a commit sha or a tag rather than a branch (nothing is created or uploaded).

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

    _check_push_options(repo_id, private, revision, commit_message, token)
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
            if item.is_file() and item.name != README:
                shutil.copy2(item, folder)
        api = HfApi(token=token)
        _check_target(api, repo_id, private, revision)
        parent, _ = _use_hub_card(api, repo_id, revision, Path(folder))
        write_model_card(
            folder,
            report=report,
            repo_id=repo_id,
            adapter_name=name,
            subfolder="",
            revision=revision,
            source_dir=source,
        )
        return _upload(api, repo_id, folder, private, revision, commit_message, parent)


def _hub_head(api: Any, repo_id: str, revision: str | None) -> tuple[str | None, str]:
    """The commit a push to `revision` builds on, and the branch it was read from: `main`'s head for a branch that
    does not exist yet (the push creates it from there); `None` for a repository that does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    branch = revision or "main"
    try:
        return api.model_info(repo_id, revision=branch).sha, branch
    except RepositoryNotFoundError:
        return None, branch
    except RevisionNotFoundError:
        if branch == "main":
            return None, branch
    try:  # a new branch starts from main's head
        return api.model_info(repo_id, revision="main").sha, "main"
    except RevisionNotFoundError:
        return None, "main"


def _hub_text(api: Any, repo_id: str, commit: str, path_in_repo: str) -> str | None:
    """The text of `path_in_repo` at `commit`, or `None` when the commit has no such file."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with tempfile.TemporaryDirectory() as cache:  # not the user's cache: this copy is only read once
        try:
            downloaded = api.hf_hub_download(repo_id, path_in_repo, revision=commit, cache_dir=cache)
        except RemoteEntryNotFoundError:
            return None
        return Path(downloaded).read_text(encoding="utf-8")


def _hub_source(repo_id: str, path_in_repo: str, branch: str, commit: str) -> str:
    """How an error names a card read from the Hub."""
    return f"The {path_in_repo} of the Hub repository {repo_id!r} (branch {branch!r}, commit {commit})"


def _use_hub_card(api: Any, repo_id: str, revision: str | None, folder: Path) -> tuple[str | None, bool]:
    """Put the README.md that `repo_id` has at `revision` into `folder` (replacing a local one), if there is one.

    A repository that does not exist yet, or has no README.md there, is not an error. A branch that does not exist
    yet is created from `main` by the push, so `main`'s card is used for it.

    Returns:
        `tuple[str | None, bool]`: the commit the card was read from (the new commit's parent; `None` for a new
        repository), and whether the Hub had a card (now in `folder`).

    Raises:
        ValueError: if the Hub's README.md has invalid YAML metadata.
    """
    commit, branch = _hub_head(api, repo_id, revision)
    text = None if commit is None else _hub_text(api, repo_id, commit, README)
    if text is None:
        return commit, False
    load_card(text, _hub_source(repo_id, README, branch, commit))
    write_text_atomic(folder / README, text)
    return commit, True


class PushOptionError(ValueError):
    """A bad push option (an empty `revision`, `token` or `commit_message`), or one that does not fit the repository
    (`private` onto a public one, a `revision` that is not a branch); `option` names it, for the command line to
    report as `--<option>`. Raised before anything is created or uploaded."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


def _check_target(api: Any, repo_id: str, private: bool | None, revision: str | None) -> None:
    """Refuse, before anything is uploaded, a push that would not do what was asked.

    - `private=True` and the repository exists and is public: the files would be public (`create_repo` does not
      change the visibility of an existing repository).
    - `revision` names a tag or a commit (a full or abbreviated sha) of the repository rather than a branch: a
      push creates a branch of that name instead.
    """
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if private is not True and revision in (None, "main"):
        return
    try:
        info = api.model_info(repo_id)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return  # a new repository (or one without `main` yet): created as asked
    if private is True and info.private is False:
        raise PushOptionError(
            f"`private=True`, but the repository {repo_id!r} already exists and is public, so the upload would be "
            "public; nothing was uploaded. Make it private first (its settings on the Hub, or "
            f"`HfApi().update_repo_settings({repo_id!r}, private=True)`), or push without `private`.",
            "private",
        )
    if revision in (None, "main"):
        return
    refs = api.list_repo_refs(repo_id)
    if revision in {branch.name for branch in refs.branches}:
        return
    if revision in {tag.name for tag in refs.tags}:
        raise PushOptionError(
            f"`revision` {revision!r} is a tag of {repo_id!r}, not a branch; a push commits to a branch. Pass a "
            "branch name (a new one is created from `main`).",
            "revision",
        )
    if HEX_RE.fullmatch(revision):
        try:
            sha = api.model_info(repo_id, revision=revision).sha
        except RevisionNotFoundError:
            return
        if sha and sha.lower().startswith(revision.lower()):
            raise PushOptionError(
                f"`revision` {revision!r} is a commit of {repo_id!r}, not a branch; a push commits to a branch. "
                "Pass a branch name (a new one is created from `main`).",
                "revision",
            )


def _upload(
    api: Any,
    repo_id: str,
    folder: str,
    private: bool | None,
    revision: str | None,
    commit_message: str,
    parent: str | None,
) -> Any:
    """Create the repository and branch if needed, then upload `folder` in one commit on top of `parent`."""
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, revision=parent, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message, parent_commit=parent
    )


def _check_push_options(
    repo_id: object, private: object, revision: object, commit_message: object, token: object = None
) -> None:
    """Refuse bad push options by name before anything is created on the Hub (an empty repository was left)."""
    if not is_hub_id(repo_id, namespace_required=True):
        raise ValueError(
            f"`repo_id` must be a string 'namespace/name', got {repo_id!r} (each part of letters, digits, '-', '_' "
            "and '.', starting and ending with a letter, digit or '_', no '--' or '..', not ending in '.git')."
        )
    if token is not None and not isinstance(token, bool) and not (isinstance(token, str) and token.strip()):
        raise PushOptionError(
            "`token` must be None, a bool (as huggingface_hub takes it) or a non-empty string.", "token"
        )
    if private is not None and not isinstance(private, bool):
        raise TypeError(f"`private` must be None, True or False, got {private!r}.")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise PushOptionError(f"`revision` must be None or a non-empty branch name, got {revision!r}.", "revision")
    if isinstance(revision, str) and FULL_SHA_RE.fullmatch(revision):
        raise PushOptionError(
            f"`revision` must be a branch name, got {revision!r}, which is a commit sha; a push commits to a branch "
            "(a new one is created from `main`).",
            "revision",
        )
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise PushOptionError(
            f"`commit_message` must be a non-empty string, got {commit_message!r}.", "commit_message"
        )


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


# never uploaded from a folder: pickle files (only safetensors weights are shared; a pickle can run code on load) and
# what a Trainer checkpoint holds besides the adapter (its `training_args.bin` pickles `hub_token` when one was given)
NOT_UPLOADED = (
    "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt",
    "trainer_state.json", "training_args.*", "optimizer.*", "scheduler.*", "rng_state*", "scaler.*",
)  # fmt: skip


def _not_uploaded(name: str) -> bool:
    # also the hidden temporary of a write that was killed (`.arch_optimizer.pt.part-<pid>-...` is a pickle too)
    return is_temporary_name(name) or any(fnmatch.fnmatch(name, pattern) for pattern in NOT_UPLOADED)


def _is_output_folder(path: Path) -> bool:
    # an export or run of the pack written inside the adapter folder (e.g. `export --output_dir adapter/merged`, a
    # whole merged model): another output, not part of this adapter
    return path.is_dir() and ((path / MARKER).is_file() or (path / EXPORT_INFO).is_file())


def _ignore_not_uploaded(directory: str, names: list[str]) -> set[str]:
    # the pack's output marker (an export folder holds one) is local bookkeeping too, left out without a word
    files = {n for n in names if not os.path.isdir(os.path.join(directory, n))}
    folders = {n for n in names if n not in files and (is_temporary_name(n) or _is_output_folder(Path(directory, n)))}
    return folders | {n for n in files if n == MARKER or _not_uploaded(n)}


def _left_out(adapter_dir: Path) -> list[str]:
    """What `push_folder` does not upload (relative paths): `_ignore_not_uploaded`'s files and folders, except the
    marker at the top (the folder's own bookkeeping)."""
    found = []
    for directory, dirs, files in os.walk(adapter_dir):
        ignored = _ignore_not_uploaded(directory, dirs + files)
        dirs[:] = [d for d in dirs if d not in ignored]
        found += [os.path.relpath(os.path.join(directory, n), adapter_dir) for n in sorted(ignored) if n != MARKER]
    return sorted(found)


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

    Everything in the folder is uploaded (tokenizer files included) except pickle files and a Trainer checkpoint's
    own state (`NOT_UPLOADED`: optimizer, scheduler, RNG state, `trainer_state.json`, `training_args.bin`, which can
    hold a Hub token), and the hidden temporary files of interrupted writes; a warning names what was left out.

    Args:
        adapter_dir (`str` or `os.PathLike`): a folder written by `save_pretrained`.
        repo_id (`str`): the target repository, `namespace/name`.
        token, private, revision, commit_message: as in [`push_adapter`].

    Each adapter's card is written for the repository: the one at the root, and one in each subfolder holding an
    adapter (PEFT saves a named adapter in a subfolder of that name), whose snippets say `subfolder=`. A card
    already in the repository at `revision` is kept and updated (see the module docstring); the folder's own
    README.md is used where the repository has none, and a warning names a local README.md whose edits are not
    uploaded because the Hub's card is kept.

    Raises:
        FileNotFoundError: if the folder, its `adapter_config.json` or its `adapter_model.safetensors` is missing
            (checked before the repository is created).
        ValueError: if a README.md used (the Hub's, else the folder's) has invalid YAML metadata, or for the
            `private` / `revision` cases of [`push_adapter`] (nothing is created or uploaded).

    Returns:
        `huggingface_hub.CommitInfo`

    Example:

    ```py
    >>> push_folder("outputs/designspace-SST-2/adapter", "my-org/minilm-s4-sst2")  # doctest: +SKIP
    ```
    """
    from huggingface_hub import HfApi

    _check_push_options(repo_id, private, revision, commit_message, token)
    _check_adapter_folder(Path(adapter_dir))
    left_out = _left_out(Path(adapter_dir))
    if left_out:
        warnings.warn(
            f"push_folder leaves out {len(left_out)} file(s) that are not part of a shareable adapter: {left_out[:6]} "
            "(pickle files, a Trainer checkpoint's optimizer, scheduler, RNG and arguments, since `training_args.bin` "
            "can hold a Hub token, temporary files, and other outputs of the pack written inside the folder).",
            stacklevel=2,
        )
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(adapter_dir, folder, dirs_exist_ok=True, ignore=_ignore_not_uploaded)
        api = HfApi(token=token)
        _check_target(api, repo_id, private, revision)
        parent, branch = _hub_head(api, repo_id, revision)
        for sub in _adapter_subfolders(Path(folder)):
            _prepare_card(api, repo_id, (parent, branch), Path(adapter_dir), Path(folder), sub, revision)
        return _upload(api, repo_id, folder, private, revision, commit_message, parent)


def _adapter_subfolders(folder: Path) -> list[str]:
    """The folders of `folder` that hold an adapter config, as repository paths: `""` (the root) first."""
    found = []
    for directory, dirs, files in os.walk(folder):
        dirs.sort()
        if CONFIG_NAME in files:
            found.append(Path(directory).relative_to(folder).as_posix())
    return ["" if sub == "." else sub for sub in found]


def _prepare_card(
    api: Any,
    repo_id: str,
    head: tuple[str | None, str],
    adapter_dir: Path,
    copy: Path,
    sub: str,
    revision: str | None,
) -> None:
    """Write the card of the adapter in `sub` (`""`: the root) into the upload `copy`, starting from the Hub's card
    at `head` (commit, branch) when there is one, else from the local folder's."""
    commit, branch = head
    path_in_repo = f"{sub}/{README}" if sub else README
    local = adapter_dir / sub / README
    local_text = local.read_text(encoding="utf-8") if local.is_file() else None
    hub_text = None if commit is None else _hub_text(api, repo_id, commit, path_in_repo)
    if hub_text is not None:
        load_card(hub_text, _hub_source(repo_id, path_in_repo, branch, commit))
        write_text_atomic(copy / sub / README, hub_text)
        if local_text is not None and _edits_dropped(local_text, hub_text):
            warnings.warn(
                f"{str(local)!r} holds text or metadata that the card on the Hub ({repo_id!r}, {path_in_repo} on "
                f"branch {branch!r}) does not have, and is not uploaded: the Hub's card is the one kept and updated. "
                f"Copy your edits into the card on the Hub, or delete {path_in_repo} there and push again to upload "
                "the local one.",
                stacklevel=3,
            )
    elif local_text is not None:  # checked here so that the error names the user's file, not the copy
        load_card(local_text, local)
    default_name = sub.rsplit("/", 1)[-1] if sub else "default"  # PEFT names a subfolder after its adapter
    write_model_card(
        copy / sub,
        repo_id=repo_id,
        adapter_name=saved_record(local_text or "").get("adapter_name", default_name),
        subfolder=sub,
        revision=revision,
        source_dir=adapter_dir / sub,
    )


def _user_part(text: str) -> tuple[dict, str]:
    """What a person wrote in a card: metadata the pack does not set, and the text outside the pack's section
    (empty for PEFT's untouched template)."""
    try:
        card = load_card(text, README)
    except ValueError:
        return {"<invalid metadata>": text}, ""
    data = {k: v for k, v in card.data.to_dict().items() if k not in MANAGED_METADATA and v is not None}
    body = card.text
    if BEGIN in body and END in body:
        body = body[: body.index(BEGIN)] + body[body.index(END) + len(END) :]
    body = body.strip()
    return data, "" if _is_unedited_template(body) else body


def _edits_dropped(local_text: str, hub_text: str) -> bool:
    """Whether the local card holds a person's edits that the Hub's card (the one kept) does not have: metadata
    with another value there, or a line of text that is not there."""
    local_data, local_body = _user_part(local_text)
    hub_data, hub_body = _user_part(hub_text)
    if any(hub_data.get(key) != value for key, value in local_data.items()):
        return True
    hub_lines = {line.strip() for line in hub_body.splitlines()}
    return any(line.strip() not in hub_lines for line in local_body.splitlines() if line.strip())
