"""The base model of a saved adapter, built as `load_adapter` builds it: safetensors only, at the revision the
adapter recorded, with the number of labels of its saved head.

`peft-designspace export` builds its base here too, so that the merged model and the adapter meet the same base.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .loading import AUTO_CLASS_BY_TASK, WEIGHTS_NAME, AdapterLoadError, _hub_has_file, read_safetensors_header

# Hub arguments of the adapter also used for the base model built from `base_model_name_or_path`.
BASE_FORWARDED_KWARGS = ("token", "cache_dir", "local_files_only")
# Task types with a classification head whose size is `num_labels` (saved through `modules_to_save`).
LABEL_TASKS = ("SEQ_CLS", "TOKEN_CLS")
# `from_pretrained` arguments that also apply to reading the base model's config.
CONFIG_KWARGS = (
    "revision",
    "token",
    "cache_dir",
    "local_files_only",
    "force_download",
    "subfolder",
    "trust_remote_code",
)


PICKLE_BASE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SAFE_BASE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _base_pickle_weights(name: str, extra: dict[str, Any]) -> str | None:
    """The pickle weights file of a base model that has no safetensors weights, else `None`.

    A local folder is looked at directly; a Hub repository is asked at the same revision with the same token (best
    effort: when the Hub cannot be asked, e.g. offline, `None`, and transformers' own error applies).
    """
    subfolder = extra.get("subfolder") or ""
    local = Path(name) / subfolder
    if Path(name).is_dir():
        if any((local / safe).is_file() for safe in SAFE_BASE_WEIGHTS):
            return None
        return next((str(local / f) for f in PICKLE_BASE_WEIGHTS if (local / f).is_file()), None)
    kwargs = {"revision": extra.get("revision"), "token": extra.get("token"), "subfolder": subfolder or None}
    kwargs["local_files_only"] = extra.get("local_files_only")
    if any(_hub_has_file(name, safe, kwargs) for safe in SAFE_BASE_WEIGHTS):
        return None
    return next((f for f in PICKLE_BASE_WEIGHTS if _hub_has_file(name, f, kwargs)), None)


def _auto_class(task_type: str | None, auto_mapping: dict | None) -> type:
    import transformers

    if task_type is None and auto_mapping and auto_mapping.get("base_model_class"):
        cls = getattr(transformers, auto_mapping["base_model_class"], None)
        if cls is not None:
            return cls
    name = AUTO_CLASS_BY_TASK.get(task_type)
    if name is None:
        raise AdapterLoadError(
            f"Cannot choose a transformers Auto class for task_type {task_type!r}; build the base model yourself and "
            "pass it as `base_model=`."
        )
    return getattr(transformers, name)


def base_model_source(
    config: dict[str, Any],
    model: str | None = None,
    *,
    base_model_kwargs: dict[str, Any] | None = None,
    hub_kwargs: dict[str, Any] | None = None,
    adapter: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Where the base model of an adapter comes from: its name and the arguments for `from_pretrained`.

    The name is `model`, or else the adapter's `base_model_name_or_path`. The arguments are `base_model_kwargs` with
    `use_safetensors=True` (pickle weights are never loaded), the adapter's recorded `revision` when the base is the
    recorded one (`model` not given), and the adapter's `token`, `cache_dir` and `local_files_only` from `hub_kwargs`
    unless `base_model_kwargs` sets them. A tokenizer loaded from the same name and `revision` matches the base.

    Args:
        config (`dict`): the content of `adapter_config.json`.
        model (`str`, *optional*): a base model folder or Hub id chosen by the user instead of the recorded one.
        base_model_kwargs (`dict`, *optional*): arguments for `from_pretrained`; they win over the others.
        hub_kwargs (`dict`, *optional*): the Hub arguments given for the adapter.
        adapter (`str`, *optional*): the adapter's folder or repository, for messages.

    Raises:
        AdapterLoadError: if no `model` is given and the config does not record its base model.
        ValueError: if `base_model_kwargs` sets `use_safetensors` to anything but True.

    Example:

    ```py
    >>> base_model_source({"base_model_name_or_path": "org/base", "revision": "v1"})
    ('org/base', {'use_safetensors': True, 'revision': 'v1'})
    >>> base_model_source({"base_model_name_or_path": "org/base", "revision": "v1"}, "./my-base")
    ('./my-base', {'use_safetensors': True})
    ```
    """
    name = model if model is not None else config.get("base_model_name_or_path")
    if not name:
        raise AdapterLoadError(
            f"The adapter {adapter or ''!r} does not record its base model (`base_model_name_or_path` is empty); "
            "pass the base model as `base_model=` (command line: `--model`)."
        )
    extra = dict(base_model_kwargs or {})
    if extra.get("use_safetensors", True) is not True:
        raise ValueError(
            f"base_model_kwargs['use_safetensors']={extra['use_safetensors']!r} is not allowed: the base model is "
            "loaded from safetensors weights only (a pickle file can run arbitrary code). Leave it out, or build "
            "the base model yourself and pass it as `base_model=`."
        )
    extra["use_safetensors"] = True  # never unpickle a pytorch_model.bin
    if model is None and config.get("revision") and "revision" not in extra:
        extra["revision"] = config["revision"]  # the commit the adapter was trained on, not today's `main`
    for key in BASE_FORWARDED_KWARGS:  # a private or cached base needs the same credentials / cache
        if key in (hub_kwargs or {}) and key not in extra:
            extra[key] = hub_kwargs[key]
    return str(name), extra


def _meta_shapes(auto_cls: type, base_config: Any) -> dict[str, list[int]]:
    """Parameter name → shape of the model `auto_cls` builds from `base_config`, on the meta device (no weights)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = auto_cls.from_config(base_config) if hasattr(auto_cls, "from_config") else auto_cls(base_config)
    return {k: list(v.shape) for k, v in built.state_dict().items()}


def head_shapes(config: dict[str, Any], saved_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """The saved tensors of the modules in `modules_to_save` (the classification head), by base-model name."""
    heads = set(config.get("modules_to_save") or [])
    found = {}
    for key, shape in saved_shapes.items():
        name = key.removeprefix("base_model.model.")
        if heads & set(name.split(".")[:-1]):
            found[name] = list(shape)
    return found


def saved_num_labels(
    config: dict[str, Any], name: str, auto_cls: type, extra: dict[str, Any], saved_shapes: dict[str, list[int]]
) -> int | None:
    """The `num_labels` of the adapter's saved classification head when it differs from the base model config's.

    The head (the `modules_to_save` tensors, e.g. `classifier.weight` of shape `(3, hidden)`) is compared with the
    model that the base config builds on the meta device (only `config.json` is read). When the head's tensors differ
    from it in their first dimension only, all by the same size, and a model built with that `num_labels` fits them,
    that size is returned; else `None` (nothing to change, or a mismatch that the shape check reports).

    Args:
        config (`dict`): the content of `adapter_config.json`.
        name (`str`): the base model's folder or Hub id.
        auto_cls (`type`): the class the base model is built with.
        extra (`dict`): the `from_pretrained` arguments (`revision`, `token`, ... are used to read the config).
        saved_shapes (`dict[str, list[int]]`): saved tensor name → shape (from the safetensors header).

    Example:

    ```py
    >>> saved_num_labels(config, "org/encoder", AutoModelForSequenceClassification, {}, shapes)  # doctest: +SKIP
    3
    ```
    """
    heads = head_shapes(config, saved_shapes)
    if config.get("task_type") not in LABEL_TASKS or not heads:
        return None
    import transformers

    try:
        base_config = transformers.AutoConfig.from_pretrained(
            name, **{k: extra[k] for k in CONFIG_KWARGS if k in extra}
        )
        built = _meta_shapes(auto_cls, base_config)
    except Exception:  # noqa: BLE001 - best effort: the real load reports an unreadable config
        return None
    differ = {k: s for k, s in heads.items() if k in built and s != built[k]}
    sizes = {s[0] for s in differ.values()}
    same_rest = all(len(s) == len(built[k]) and s[1:] == built[k][1:] for k, s in differ.items())
    if len(sizes) != 1 or not same_rest or any(built[k][0] != base_config.num_labels for k in differ):
        return None
    num_labels = sizes.pop()
    base_config.num_labels = num_labels
    rebuilt = _meta_shapes(auto_cls, base_config)
    return num_labels if all(rebuilt.get(k) == s for k, s in heads.items() if k in rebuilt) else None


def build_base_model(
    config: dict[str, Any],
    model: str | None = None,
    *,
    base_model_kwargs: dict[str, Any] | None = None,
    hub_kwargs: dict[str, Any] | None = None,
    saved_shapes: dict[str, list[int]] | None = None,
    adapter: str | None = None,
) -> nn.Module:
    """Build the base model of an adapter as `load_adapter` does: safetensors only, at the recorded revision.

    The name and arguments come from `base_model_source`; the class from `task_type` (see `AUTO_CLASS_BY_TASK`). A
    base with only pickle weights (`pytorch_model.bin`, local or on the Hub) is refused before `from_pretrained`,
    so transformers never sends it to its outside safetensors conversion service. For a `SEQ_CLS` or `TOKEN_CLS`
    adapter whose saved head has another number of labels than the base config (a 3-label adapter on an encoder
    saved with the default 2), the base is built with the head's `num_labels` (see `saved_num_labels`), unless
    `base_model_kwargs` sets `num_labels`, `id2label`, `label2id` or `config`.

    Args:
        config (`dict`): the content of `adapter_config.json`.
        model (`str`, *optional*): a base model folder or Hub id instead of the recorded one (then the recorded
            `revision` does not apply).
        base_model_kwargs (`dict`, *optional*): arguments for `from_pretrained` (e.g. `dtype`).
        hub_kwargs (`dict`, *optional*): the Hub arguments given for the adapter (`token`, `cache_dir`,
            `local_files_only` are used for the base too).
        saved_shapes (`dict[str, list[int]]`, *optional*): the adapter's saved tensor shapes, to recover
            `num_labels`.
        adapter (`str`, *optional*): the adapter's folder or repository, for messages.

    Returns:
        `nn.Module`: the base model.

    Raises:
        AdapterLoadError: no base model recorded, pickle-only weights, or `from_pretrained` failed.
        ValueError: `base_model_kwargs` sets `use_safetensors` to anything but True.

    Example:

    ```py
    >>> from adapters_hub.base_model import build_base_model
    >>> from adapters_hub.loading import read_safetensors_header
    >>> shapes = {k: v["shape"] for k, v in read_safetensors_header("adapter/adapter_model.safetensors").items()}
    >>> base = build_base_model(json.load(open("adapter/adapter_config.json")), saved_shapes=shapes)  # doctest: +SKIP
    ```
    """
    name, extra = base_model_source(
        config, model, base_model_kwargs=base_model_kwargs, hub_kwargs=hub_kwargs, adapter=adapter
    )
    auto_cls = _auto_class(config.get("task_type"), config.get("auto_mapping"))
    where = "recorded in the adapter" if model is None else "given"
    # checked first: for a Hub repository without safetensors weights, transformers would otherwise ask an
    # outside conversion service (with the token) to convert it
    pickle_only = _base_pickle_weights(name, extra)
    if pickle_only is not None:
        raise AdapterLoadError(
            f"The base model {name!r} {where} has only pickle weights ({pickle_only!r}), no safetensors file; only "
            "safetensors weights are loaded (a pickle file can run arbitrary code). Convert it once, from a source "
            "you trust (load it with transformers and `save_pretrained` it again, which writes safetensors by "
            "default), then load the converted model yourself and pass it as `base_model=` (command line: "
            "`--model <converted folder>`)."
        )
    if saved_shapes and not {"num_labels", "id2label", "label2id", "config"} & set(extra):
        num_labels = saved_num_labels(config, name, auto_cls, extra, saved_shapes)
        if num_labels is not None:  # the base checkpoint's own head (if any) is replaced by the saved one
            extra.update(num_labels=num_labels, ignore_mismatched_sizes=extra.get("ignore_mismatched_sizes", True))
    try:
        return auto_cls.from_pretrained(name, **extra)
    except Exception as exc:
        raise AdapterLoadError(
            f"Could not load the base model {name!r} {where} with {auto_cls.__name__} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Build it yourself and "
            "pass it as `base_model=`."
        ) from exc


def export_base(adapter: str | os.PathLike, config: dict[str, Any], model: str | None) -> nn.Module:
    """The base model of the adapter folder `adapter` for an export, built as `load_adapter` builds it
    (`build_base_model`, with the saved head's shapes): the recorded revision unless `model` (`--model`) is given."""
    header = read_safetensors_header(os.path.join(adapter, WEIGHTS_NAME))
    shapes = {name: entry["shape"] for name, entry in header.items()}
    return build_base_model(config, model, saved_shapes=shapes, adapter=str(adapter))


def base_tokenizer(config: dict[str, Any], model: str | None) -> tuple[Any, dict | None]:
    """The base model's tokenizer (same name and revision as `export_base`) and a sample input, or `(None, None)`
    when the base has no usable tokenizer (the export then skips its output check)."""
    from transformers import AutoTokenizer

    name, kwargs = base_model_source(config, model)
    source = {key: kwargs[key] for key in ("revision",) if key in kwargs}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **source)
        return tokenizer, dict(tokenizer(["A check sentence for the export."], return_tensors="pt"))
    except (OSError, ValueError):
        return None, None
