"""Load a saved adapter of the pack (local folder or Hub repository) with errors that say what to do.

`PeftModel.from_pretrained` needs three things the user may not know about: the pack imported first (otherwise a
bare `KeyError: 'DESIGNSPACE'`), the right base model built with the right Auto class, and intact files. This module
checks them in that order, before the base model is touched:

```
adapter_config.json ──► peft_type registered? ──► pack_version not newer? ──► safetensors complete?
        │                                                                          │
        └──► base model (given, or built from base_model_name_or_path + task_type) ─┴─► shapes agree? ──► load
```

The shape check builds the adapter on a copy of the base model's *config* on the meta device (no memory, no
weights), compares every saved tensor's shape with the shape the freshly built adapter expects, and names the first
one that disagrees. A failed load therefore leaves a user-supplied base model untouched.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_designspace._registry import PACK_TYPES

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"  # refused: pickle
PACK_NAME = "peft-designspace"
# PEFT types defined by this pack, also the ones whose code is not installed yet (e.g. an older pack version).
AUTO_CLASS_BY_TASK = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
    None: "AutoModel",
}
HUB_KWARGS = ("revision", "token", "cache_dir", "force_download", "local_files_only", "subfolder")
# Keyword arguments of `PeftModel.from_pretrained` / `PeftModel.load_adapter` taken through their `**kwargs` (the
# named ones are read from their signatures).
PEFT_EXTRA_KWARGS = (
    "torch_device",
    "ignore_mismatched_sizes",
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_dir",
    "offload_index",
    "use_safetensors",  # True only: `False` would let PEFT unpickle an `adapter_model.bin` (refused below)
    "adapters",
    "use_auth_token",  # the older name of `token`
)
# `load_adapter`'s own arguments and those that `PeftModel.from_pretrained` gets from it (not to be given twice).
OWN_KWARGS = ("base_model", "adapter_name", "is_trainable", "base_model_kwargs")
NOT_PASSED_KWARGS = ("self", "model", "model_id", "config", "kwargs", "repo_id", "filename")


class AdapterLoadError(RuntimeError):
    """A saved adapter cannot be loaded; the message says why and what to do."""


class AdapterVersionError(AdapterLoadError):
    """The adapter needs a newer peft-designspace (or PEFT) than the installed one."""


class BaseModelMismatchError(AdapterLoadError):
    """The adapter was trained on a different base model than the one it is being loaded onto."""


class CorruptedAdapterError(AdapterLoadError):
    """The adapter's weights file is truncated or not a valid safetensors file."""


# safetensors -------------------------------------------------------------------------------------------------------
def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read and check the header of a safetensors file without loading tensors.

    Args:
        path (`str` or `os.PathLike`): the `.safetensors` file.

    Returns:
        `dict[str, dict]`: tensor name → `{"dtype", "shape", "data_offsets"}` (the `__metadata__` entry left out).

    Raises:
        CorruptedAdapterError: if the file is shorter than its header says (truncated download or copy), or the
            header is not valid safetensors JSON.

    Example:

    ```py
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mkdtemp() + "/t.safetensors"
    >>> save_file({"w": torch.zeros(2, 3)}, path)
    >>> read_safetensors_header(path)["w"]["shape"]
    [2, 3]
    ```
    """
    path = Path(path)
    size = path.stat().st_size
    advice = "Delete it and save the adapter again, or download it again (`force_download=True` for a Hub repository)."
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptedAdapterError(f"{path} is truncated: {size} bytes, not even a safetensors header. {advice}")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise CorruptedAdapterError(
                f"{path} is truncated or not a safetensors file: its header announces {header_len:,} bytes but the "
                f"file has {size:,}. {advice}"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptedAdapterError(f"{path} has a corrupted safetensors header ({exc}). {advice}") from exc
    if not isinstance(header, dict):
        raise CorruptedAdapterError(f"{path} has a corrupted safetensors header (not a JSON object). {advice}")
    header.pop("__metadata__", None)
    try:
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise CorruptedAdapterError(f"{path} has a corrupted safetensors header ({exc!r}). {advice}") from exc
    expected = 8 + header_len + end
    if size < expected:
        raise CorruptedAdapterError(
            f"{path} is truncated: {size:,} bytes, but its header describes {expected:,} bytes of tensors. {advice}"
        )
    return header


# fetching ----------------------------------------------------------------------------------------------------------
def _hub_error(exc: Exception, repo_id: str, filename: str, revision: str | None) -> AdapterLoadError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    if isinstance(exc, RevisionNotFoundError):
        return AdapterLoadError(
            f"The Hub repository {repo_id!r} has no revision {revision!r} (a branch, tag or commit sha). "
            "List its branches with `huggingface_hub.list_repo_refs`."
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return AdapterLoadError(
            f"The Hub repository {where} has no {filename!r}. Is it a PEFT adapter? If the adapter is in a "
            "subfolder, pass `subfolder=`; `huggingface_hub.list_repo_files` lists the files."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return AdapterLoadError(
            f"{repo_id!r} is neither a local folder nor a Hub repository that can be read at {constants.ENDPOINT}. "
            "Check the name; if the repository is private, pass `token=` or log in with `hf auth login`."
        )
    if isinstance(exc, LocalEntryNotFoundError):
        return AdapterLoadError(
            f"Could not reach the Hub at {constants.ENDPOINT} to download {filename!r} of {where}, and it is not in "
            "the local cache. Check the network (and HF_ENDPOINT / HF_HUB_OFFLINE), or pass a local folder."
        )
    return AdapterLoadError(f"Downloading {filename!r} of {where} failed: {type(exc).__name__}: {exc}")


def fetch_adapter_files(path_or_repo: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """Return a local folder holding the adapter's config and weights, downloading them from the Hub if needed.

    Both files come from the same commit: the config is downloaded first, then the weights at the commit the config
    resolved to (a branch that moves in between cannot mix two versions).

    Args:
        path_or_repo (`str` or `os.PathLike`): a local adapter folder or a Hub repository id.
        **hub_kwargs: `revision`, `token`, `cache_dir`, `force_download`, `local_files_only`, `subfolder`.

    Raises:
        AdapterLoadError: with the reason (repository or revision not found, file missing, Hub unreachable).

    Example:

    ```py
    >>> fetch_adapter_files("/path/to/saved/adapter")  # doctest: +SKIP
    PosixPath('/path/to/saved/adapter')
    ```
    """
    subfolder = hub_kwargs.get("subfolder")
    local = Path(path_or_repo) / subfolder if subfolder else Path(path_or_repo)
    if local.is_dir():
        if hub_kwargs.get("revision") is not None:
            warnings.warn(
                f"`revision={hub_kwargs['revision']!r}` is ignored: {str(local)!r} is a local folder, which has no "
                "revisions (its files are loaded as they are). Leave `revision` out, or pass a Hub repository id.",
                UserWarning,
                stacklevel=3,
            )
        if not (local / CONFIG_NAME).is_file():
            raise AdapterLoadError(f"The folder {str(local)!r} has no {CONFIG_NAME}: it is not a saved PEFT adapter.")
        if not (local / WEIGHTS_NAME).is_file():
            raise _missing_weights_error(str(local), has_pickle=(local / PICKLE_WEIGHTS_NAME).is_file())
        return local
    if subfolder and Path(path_or_repo).is_dir():
        raise AdapterLoadError(
            f"The local folder {str(path_or_repo)!r} has no subfolder {str(subfolder)!r} ({str(local)!r} is not a "
            "folder). Check `subfolder=`; it is a path inside the folder."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError, RemoteEntryNotFoundError

    repo_id = str(path_or_repo)
    revision = hub_kwargs.get("revision")
    kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS}
    try:
        config_file = Path(hf_hub_download(repo_id, CONFIG_NAME, **kwargs))
    except HFValidationError as exc:
        raise AdapterLoadError(
            f"{repo_id!r} is not an existing local folder, nor a valid Hub repository id ({exc})."
        ) from exc
    except Exception as exc:
        raise _hub_error(exc, repo_id, CONFIG_NAME, revision) from exc
    # .../snapshots/<commit sha>/<subfolder parts...>/adapter_config.json
    depth = len(Path(subfolder).parts) if subfolder else 0
    snapshot = config_file.parents[depth]
    kwargs["revision"] = snapshot.name
    try:
        hf_hub_download(repo_id, WEIGHTS_NAME, **kwargs)
    except RemoteEntryNotFoundError as exc:
        where = f"The Hub repository {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
        where += f" (subfolder {subfolder!r})" if subfolder else ""
        raise _missing_weights_error(where, has_pickle=_hub_has_file(repo_id, PICKLE_WEIGHTS_NAME, kwargs)) from exc
    except Exception as exc:
        raise _hub_error(exc, repo_id, WEIGHTS_NAME, revision) from exc
    return config_file.parent


def _hub_has_file(repo_id: str, filename: str, kwargs: dict[str, Any]) -> bool:
    """Whether `filename` exists in the repository at the resolved commit (best effort: `False` on any failure)."""
    from huggingface_hub import file_exists

    if kwargs.get("local_files_only"):
        return False
    path = f"{Path(kwargs['subfolder']).as_posix()}/{filename}" if kwargs.get("subfolder") else filename
    try:
        return bool(file_exists(repo_id, path, revision=kwargs.get("revision"), token=kwargs.get("token")))
    except Exception:
        return False


def _missing_weights_error(where: str, *, has_pickle: bool) -> AdapterLoadError:
    if not has_pickle:
        return AdapterLoadError(f"{where} has no {WEIGHTS_NAME}: the adapter's weights are missing.")
    return AdapterLoadError(
        f"{where} has only the pickle weights file {PICKLE_WEIGHTS_NAME!r}, no {WEIGHTS_NAME!r}. Only safetensors "
        "weights are loaded (a pickle file can run arbitrary code). Convert it once, from a source you trust: "
        "`from safetensors.torch import save_file; save_file(torch.load('adapter_model.bin', weights_only=True), "
        "'adapter_model.safetensors')`, or load it with PEFT and `save_pretrained` again (safetensors by default)."
    )


# checks ------------------------------------------------------------------------------------------------------------
def _installed_pack_version() -> str:
    import peft_designspace

    return peft_designspace.__version__


def _is_newer(saved: object, installed: str) -> bool:
    """Whether `saved` is a readable version above `installed` (unreadable versions count as not newer)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(saved)) > Version(installed)
    except InvalidVersion:
        return False


def check_registered(config: dict) -> type:
    """Return the config class registered for the adapter's `peft_type`, or raise with what to install.

    Args:
        config (`dict`): the content of `adapter_config.json`.

    Raises:
        AdapterLoadError: if the file has no `peft_type`.
        AdapterVersionError: if the type is unknown to the installed PEFT and pack, naming the package to install.

    Example:

    ```py
    >>> check_registered({"peft_type": "DESIGNSPACE"}).__name__
    'DesignSpaceConfig'
    ```
    """
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    import peft_designspace  # noqa: F401  (registers the pack's methods)

    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise AdapterLoadError(f"{CONFIG_NAME} has no `peft_type`; it is not a PEFT adapter config.")
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    needed = config.get("pack_version")
    newer_pack = needed is not None and _is_newer(needed, _installed_pack_version())
    if peft_type in PACK_TYPES or newer_pack:
        pin = f">={needed}" if needed else ""
        raise AdapterVersionError(
            f"The adapter's method {peft_type!r} is part of {PACK_NAME}"
            + (f" {needed}" if needed else "")
            + f", but the installed {PACK_NAME} {_installed_pack_version()} does not provide it. "
            f"Install it with `pip install -U '{PACK_NAME}{pin}'`."
        )
    raise AdapterVersionError(
        f"The adapter's PEFT method {peft_type!r} is neither built into peft {peft.__version__} nor provided by "
        f"{PACK_NAME}. If it comes from a plugin package, install it and `import` it before loading (the adapter's "
        "README usually names it); if it is a newer built-in method, upgrade with `pip install -U peft`."
    )


def check_pack_version(config: dict, config_cls: type) -> None:
    """Refuse configs written by a newer pack that use fields the installed one would silently drop; else warn.

    Args:
        config (`dict`): the content of `adapter_config.json` (`pack_version` is optional).
        config_cls (`type`): the registered config class.

    Raises:
        AdapterVersionError: if `pack_version` is newer than the installed pack and the config has fields the
            installed config class does not know.

    Example:

    ```py
    >>> from peft_designspace import DesignSpaceConfig
    >>> check_pack_version({"peft_type": "DESIGNSPACE"}, DesignSpaceConfig)  # no pack_version: nothing to check
    ```
    """
    from packaging.version import InvalidVersion, Version

    saved = config.get("pack_version")
    if saved is None or not getattr(config_cls, "__module__", "").startswith("peft_designspace"):
        return
    installed = _installed_pack_version()
    try:
        newer = Version(str(saved)) > Version(installed)
    except InvalidVersion:
        warnings.warn(f"Ignoring the unreadable `pack_version` {saved!r} in {CONFIG_NAME}.", stacklevel=3)
        return
    if not newer:
        return
    known = {f.name for f in fields(config_cls)} | {"pack_version", "auto_mapping"}
    unknown = sorted(set(config) - known)
    upgrade = f"pip install -U '{PACK_NAME}>={saved}'"
    if unknown:
        raise AdapterVersionError(
            f"This adapter was saved by {PACK_NAME} {saved} and uses settings {unknown} that the installed "
            f"{installed} does not know (loading would silently ignore them). Upgrade with `{upgrade}`."
        )
    warnings.warn(
        f"This adapter was saved by {PACK_NAME} {saved}, newer than the installed {installed}. It uses no setting "
        f"unknown to {installed}, so it is loaded; `{upgrade}` to be safe.",
        UserWarning,
        stacklevel=3,
    )


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return f"{type(model).__name__} ({name!r})" if name else type(model).__name__


def check_base_model(base: nn.Module, config: Any, saved_shapes: dict[str, list[int]], adapter: str) -> None:
    """Build the adapter on a meta-device twin of `base` and compare every saved tensor's shape with it.

    Args:
        base (`nn.Module`): the base model (not modified).
        config (`PeftConfig`): the adapter's config (a copy is used).
        saved_shapes (`dict[str, list[int]]`): saved tensor name → shape (from the safetensors header).
        adapter (`str`): description of the adapter for messages (path or repo id).

    Raises:
        BaseModelMismatchError: naming both models and the first tensor whose shape disagrees, or the modules the
            adapter needs and the base lacks.

    Example:

    ```py
    >>> check_base_model(base, config, read_safetensors_header(path), path)  # doctest: +SKIP
    ```
    """
    import copy

    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict

    base_config = getattr(base, "config", None)
    if base_config is None:
        return  # not a transformers model: nothing to rebuild from; PEFT's own checks apply
    trained_on = getattr(config, "base_model_name_or_path", None)
    names = f"The adapter {adapter!r} was trained on {trained_on!r} but is being loaded onto {_model_name(base)}"
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin = type(base)(copy.deepcopy(base_config))
            twin_config = copy.deepcopy(config)
            twin_config.inference_mode = True
            expected = get_peft_model(twin, twin_config)
    except ValueError as exc:
        if "lacks" in str(exc) or "different base model" in str(exc):
            raise BaseModelMismatchError(f"{names}: {exc}") from exc
        return  # the real load reports anything else
    except Exception:
        return  # best effort: e.g. a quantized or custom model that cannot be rebuilt on meta
    for module in expected.modules():  # the twin is read for its shapes only: a SAM twin holds placeholder indices,
        if isinstance(getattr(module, "placeholders", None), set):  # and its state dict would be refused as such
            module.placeholders.clear()
    expected_shapes = {k: list(v.shape) for k, v in get_peft_model_state_dict(expected).items()}
    for key, shape in saved_shapes.items():
        want = expected_shapes.get(key)
        if want is not None and list(shape) != want:
            raise BaseModelMismatchError(
                f"{names}: the saved parameter {key!r} has shape {tuple(shape)}, the base model needs {tuple(want)}. "
                "Load the adapter onto the base model it was trained on (or, for a classification head, with the "
                "same `num_labels`)."
            )


# the entry point ---------------------------------------------------------------------------------------------------
def _check_load_options(path_or_repo, base_model, adapter_name, is_trainable, base_model_kwargs) -> None:
    """`load_adapter`'s own arguments, checked before any file is fetched."""
    if not isinstance(path_or_repo, (str, os.PathLike)) or not str(path_or_repo):
        raise ValueError(
            f"`path_or_repo` must be a folder or a Hub repository id (a non-empty str), got {path_or_repo!r}."
        )
    if base_model is not None and not isinstance(base_model, nn.Module):
        hint = " (a name or folder: load the model with transformers first)" if isinstance(base_model, str) else ""
        raise ValueError(f"`base_model` must be a torch `nn.Module` or None, got {type(base_model).__name__}{hint}.")
    if not isinstance(adapter_name, str) or not adapter_name:
        raise ValueError(f"`adapter_name` must be a non-empty str, got {adapter_name!r}.")
    if not isinstance(is_trainable, bool):
        raise ValueError(f"`is_trainable` must be True or False, got {is_trainable!r}.")
    if base_model_kwargs is not None and not isinstance(base_model_kwargs, dict):
        raise ValueError(f"`base_model_kwargs` must be a dict or None, got {type(base_model_kwargs).__name__}.")


def _peft_kwargs() -> tuple[str, ...]:
    """The keyword arguments `load_adapter` passes on to `PeftModel.from_pretrained` (read from its signature and
    from `PeftModel.load_adapter`'s, plus those both take through `**kwargs`)."""
    import inspect

    from huggingface_hub import hf_hub_download
    from peft import PeftModel

    named = set(PEFT_EXTRA_KWARGS)
    # PEFT passes every argument `hf_hub_download` takes (`proxies`, `etag_timeout`, ...) on to it
    for function in (PeftModel.from_pretrained, PeftModel.load_adapter, hf_hub_download):
        named.update(inspect.signature(function).parameters)
    return tuple(sorted(named - set(NOT_PASSED_KWARGS) - set(OWN_KWARGS)))


def _check_extra_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse a keyword argument that neither the Hub download nor `PeftModel.from_pretrained` takes (PEFT would
    silently ignore a misspelt `revison=`), and non-bool Hub switches (`local_files_only="yes"`)."""
    import difflib

    allowed = HUB_KWARGS + _peft_kwargs()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], allowed + OWN_KWARGS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"load_adapter() got an unexpected keyword argument {unknown[0]!r}{hint}. It takes the Hub arguments "
            f"{', '.join(HUB_KWARGS)} and the PeftModel.from_pretrained arguments {', '.join(_peft_kwargs())}; "
            "arguments for the base model's `from_pretrained` (e.g. `dtype`) go in `base_model_kwargs`."
        )
    for name in ("force_download", "local_files_only"):
        if name in kwargs and not isinstance(kwargs[name], bool):
            raise ValueError(f"`{name}` must be True or False, got {kwargs[name]!r}.")
    if kwargs.get("use_safetensors", True) is not True:
        raise ValueError(
            f"`use_safetensors` must be True (or left out), got {kwargs['use_safetensors']!r}: adapters are loaded "
            "from safetensors only (a pickle file can run arbitrary code)."
        )


def load_adapter(
    path_or_repo: str | os.PathLike,
    base_model: nn.Module | None = None,
    *,
    adapter_name: str = "default",
    is_trainable: bool = False,
    base_model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Load an adapter of the pack (or any PEFT adapter) from a folder or a Hub repository, checks first.

    Imports the pack (which registers its methods with PEFT), reads `adapter_config.json`, builds the base model
    from `base_model_name_or_path` with the Auto class of `task_type` when `base_model` is not given (see
    `build_base_model`: at the recorded `revision`, with the saved head's `num_labels`), checks that the
    method is installed, that the adapter was not written by a newer pack with settings this one would drop, that
    the weights file is complete and that its shapes fit the base model, then calls `PeftModel.from_pretrained`.

    Args:
        path_or_repo (`str` or `os.PathLike`): a saved adapter folder or a Hub repository id.
        base_model (`nn.Module`, *optional*): the base model; built from the adapter's config when omitted.
        adapter_name (`str`, *optional*, defaults to `"default"`): name of the loaded adapter.
        is_trainable (`bool`, *optional*, defaults to `False`): load for further training.
        base_model_kwargs (`dict`, *optional*): passed to the Auto class's `from_pretrained` (e.g. `dtype`); `token`,
            `cache_dir` and `local_files_only` given for the adapter are used too unless set here. The base model is
            loaded with `use_safetensors=True` (pickle weights are never loaded; `use_safetensors=False` is refused).
        **kwargs: Hub arguments for the adapter (`revision`, `token`, `cache_dir`, `force_download`,
            `local_files_only`, `subfolder`; `revision` with a local folder is ignored with a warning), and the
            arguments of `PeftModel.from_pretrained` (e.g. `low_cpu_mem_usage`, `torch_device`); any other name is
            a `TypeError`.

    Returns:
        `peft.PeftModel`: the base model with the adapter, in eval mode unless `is_trainable`.

    Raises:
        AdapterLoadError: files or repository missing, Hub unreachable, base model not loadable (also when it has
            only pickle `pytorch_model.bin` weights).
        TypeError: an unknown keyword argument (named, with the closest known one).
        ValueError: a bad argument (named), or `base_model_kwargs` sets `use_safetensors=False`.
        AdapterVersionError: method not installed, or written by a newer pack with unknown settings.
        CorruptedAdapterError: truncated or invalid weights file.
        BaseModelMismatchError: the adapter does not fit the base model (both named, with the first bad tensor).

    Example:

    ```py
    >>> from adapters_hub import load_adapter
    >>> model = load_adapter("my-org/bert-s4-sst2")  # doctest: +SKIP
    >>> model = load_adapter("my-org/bert-s4-sst2", base_model=my_base, revision="v1")  # doctest: +SKIP
    ```
    """
    from peft import PeftModel

    _check_load_options(path_or_repo, base_model, adapter_name, is_trainable, base_model_kwargs)
    _check_extra_kwargs(kwargs)
    hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    folder = fetch_adapter_files(path_or_repo, **hub_kwargs)
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptedAdapterError(f"{folder / CONFIG_NAME} is not readable JSON ({exc}).") from exc
    config_cls = check_registered(raw)
    check_pack_version(raw, config_cls)
    # fetch_adapter_files guarantees the safetensors file (a pickle-only adapter is refused there)
    saved_shapes = {k: v["shape"] for k, v in read_safetensors_header(folder / WEIGHTS_NAME).items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unexpected keyword arguments")  # `pack_version` on older packs
        config = config_cls.from_peft_type(**{k: v for k, v in raw.items() if k != "pack_version"})

    if base_model is None:
        from .base_model import build_base_model  # it imports this module

        base_model = build_base_model(
            raw,
            base_model_kwargs=base_model_kwargs,
            hub_kwargs=hub_kwargs,
            saved_shapes=saved_shapes,
            adapter=str(path_or_repo),
        )

    check_base_model(base_model, config, saved_shapes, str(path_or_repo))
    try:
        return PeftModel.from_pretrained(
            base_model, str(folder), adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
        )
    except Exception as exc:
        if "safetensors" in type(exc).__module__ or "deserializ" in str(exc).lower():
            raise CorruptedAdapterError(
                f"The weights of {str(path_or_repo)!r} cannot be read ({exc}). Save or download them again."
            ) from exc
        raise
