"""Export adapters of the pack for users who do not install it: merged full models and plain-PEFT adapters.

```
export_merged(model, dir)   ──► config.json + model.safetensors        (transformers only; every part must merge)
export_to_peft(model, dir)  ──► adapter_config.json + safetensors       (plain PEFT, no peft_designspace import)
    design space, LoRA (+ BitFit) only  ──► LoraConfig, rank_pattern / alpha_pattern per module, bias="all"
    SAM, plain nn.Linear weights only   ──► ShiraConfig (SHiRA: values + (row, col) indices per layer)
    anything else                       ──► ExportError naming the part, pointing to export_merged
```

Both functions work on a deep copy of the model (the caller's model is never changed; a copy of the weights is held
in memory meanwhile) and write through a temporary folder that is renamed into place when complete.

Exactness:

- LoRA parts map one to one: `lora_A`/`lora_B` are our `A`/`B`, and `lora_alpha` (per module through
  `alpha_pattern`) is chosen so that PEFT's `lora_alpha / r` is the very same float as our scaling. The forward pass
  then runs the same operations, and the outputs are bit-identical.
- BitFit bias deltas have no plain-PEFT module. They are folded into the base biases (`b + δ`), saved with LoRA's
  `bias="all"` (which stores every bias of the model, so loading sets them). The sum `x Wᵀ + (b + δ)` rounds
  differently from `(x Wᵀ + b) + δ`: outputs agree to float rounding (as with `merge_and_unload`), not bit for bit.
  A delta on a module without a bias (e.g. an RMSNorm) cannot be folded and is refused.
- SAM to SHiRA: SHiRA gives every layer exactly `r · (in + out)` entries for one global `r`. The smallest `r` that
  holds each layer's selection is used and the rest is padded with unselected entries whose value is 0, so the sum
  `W + ΔW` is the same and the outputs are bit-identical. SHiRA only wraps `nn.Linear`, so a selection on biases,
  norms, embeddings or GPT-2 `Conv1D` weights is refused (use `export_merged`). When some layer would need
  `r · (in + out) > in · out`, SHiRA cannot hold it either.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import EXPORT_INFO, atomic_output_dir, check_output_dir, replaced_non_export

INFO_NAME = EXPORT_INFO


class ExportError(ValueError):
    """The adapter cannot be exported in the requested format; the message names the part and the alternative."""


@dataclass
class ExportInfo:
    """What an export wrote.

    Attributes:
        path (`str`): the output folder.
        format (`str`): `"merged"`, `"lora"` or `"shira"`.
        source_peft_type (`str`): the pack's method (`"DESIGNSPACE"`, `"SAMTUNING"`, ...).
        exact (`bool`): True when the export runs the same operations as the adapter (outputs bit-identical in the
            tests; another kernel choice can still move the last bits); False when sums are regrouped (folded bias
            deltas, merged LoRA), so outputs agree to float rounding.
        notes (`list[str]`): what was folded or padded.
        max_abs_diff (`float`, *optional*): largest output difference on `check_inputs`, when given.
    """

    path: str
    format: str
    source_peft_type: str
    exact: bool
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None


# helpers -----------------------------------------------------------------------------------------------------------
def _output_rules(overwrite: bool, config: Any) -> dict:
    """The output-folder rules of the exports, as the command line has them: with `overwrite`, only an earlier
    output of the pack is replaced (a folder of the user's own is never deleted), and never the base model's
    local folder."""
    base = getattr(config, "base_model_name_or_path", None)
    protect = [base] if isinstance(base, str) and os.path.isdir(base) else []
    return {"overwrite": overwrite, "only_pack_outputs": True, "protect": protect}


def _check_export_dir(out_dir: str | os.PathLike, overwrite: bool, config: Any) -> None:
    """`check_output_dir` with the exports' rules; also, an export replaces only an earlier export: never another
    output of the pack (a training run's folder can hold the very adapter being exported)."""
    check_output_dir(out_dir, **_output_rules(overwrite, config))
    why = replaced_non_export(out_dir, overwrite)
    if why:
        raise FileExistsError(why)


def _check_inputs_given(check_inputs: Any) -> None:
    """`check_inputs` must be None or a non-empty dict of model keyword arguments (tensors), checked before any work
    (a list or a tensor failed inside the model's forward with its whole repr in the message)."""
    if check_inputs is None:
        return
    if (
        not isinstance(check_inputs, Mapping)
        or not check_inputs
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in check_inputs.items())
    ):
        raise TypeError(
            "`check_inputs` must be None or a non-empty dict of model inputs (str -> tensor, e.g. a tokenizer's "
            f"output with `return_tensors='pt'`), got {type(check_inputs).__name__}."
        )


def _half_precision_bases(model: nn.Module) -> list[str]:
    """The bfloat16/float16 dtypes among the base weights of the model's tuner layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = {
        str(weight.dtype).removeprefix("torch.")
        for module in model.modules()
        if isinstance(module, BaseTunerLayer)
        and isinstance(weight := getattr(module.get_base_layer(), "weight", None), torch.Tensor)
        and weight.dtype in (torch.bfloat16, torch.float16)
    }
    return sorted(found)


def _tuner_and_name(model: nn.Module, adapter_name: str | None) -> tuple[Any, str, Any]:
    tuner = getattr(model, "base_model", None)
    configs = getattr(model, "peft_config", None)
    if tuner is None or not isinstance(configs, dict):
        raise TypeError(f"Expected a `peft.PeftModel` with an adapter of the pack, got {type(model).__name__}.")
    name = model.active_adapter if adapter_name is None else adapter_name  # "" is a bad name, not the default
    if name not in configs:
        raise ValueError(f"`adapter_name` must be one of {sorted(configs)}, got {name!r}.")
    return tuner, name, configs[name]


def _peft_type(config: Any) -> str:
    value = getattr(config, "peft_type", None)
    return str(getattr(value, "value", value))


def _copy_with_active(model: nn.Module, name: str) -> nn.Module:
    """A deep copy of `model` with adapter `name` active (its trained heads too); `model` itself is not touched."""
    clone = copy.deepcopy(model)
    if clone.active_adapter != name:
        clone.set_adapter(name)
    return clone


def _reference(model: nn.Module, name: str) -> nn.Module:
    """The model to compare an export of adapter `name` with: `model` itself, or a copy with `name` active."""
    return model if model.active_adapter == name else _copy_with_active(model, name)


def _plain_copy(model: nn.Module, name: str) -> nn.Module:
    """The base model of a deep copy of `model`, with every tuner layer removed (unmerged) and the trained heads of
    adapter `name` kept."""
    return _copy_with_active(model, name).unload()


def _outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`model`'s logits (or first output) on `inputs` in eval mode; its own mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        model.train(was_training)
    return out.logits if hasattr(out, "logits") else out[0]


def _max_diff(expected: torch.Tensor, got: torch.Tensor) -> float:
    return (expected.float() - got.float()).abs().max().item()


def _compare(reference: nn.Module, exported: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    return _max_diff(_outputs(reference, inputs), _outputs(exported, inputs))


def _sam_layers(tuner: Any, name: str) -> list[tuple[str, Any]]:
    """SAM layers holding adapter `name` (empty for other tuners)."""
    return list(getattr(tuner, "sam_layers", lambda _: [])(name))


def _write_info(folder: Path, info: ExportInfo) -> None:
    data = {k: v for k, v in asdict(info).items() if k != "path"}
    (folder / INFO_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# merged ------------------------------------------------------------------------------------------------------------
def unmergeable_parts(model: nn.Module, adapter_name: str | None = None) -> list[str]:
    """`"module path: part"` for every part of the adapter that cannot be merged into the base weights.

    Design-space adapters ask the tuner (`unmergeable_parts`: adapters, prefixes, deltas on bias-free norms). SAM
    deltas on a tied embedding or a forward-only quantized layer cannot merge either. Other tuners that define
    `unmergeable_parts(adapter_names)` are asked too.
    """
    tuner, name, _ = _tuner_and_name(model, adapter_name)
    if hasattr(tuner, "unmergeable_parts"):
        return list(tuner.unmergeable_parts([name]))
    parts = []
    for path, layer in _sam_layers(tuner, name):
        if layer.tied:
            parts.append(f"{path}: SAM delta on a tied embedding (the output projection shares the weight)")
        backend = layer.quantization_backend
        if backend is not None and not backend.supports_merge:
            parts.append(f"{path}: SAM delta on a forward-only quantized layer")
    return parts


def export_merged(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    adapter_name: str | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    check_inputs: dict[str, torch.Tensor] | None = None,
    progressbar: bool = False,
) -> ExportInfo:
    """Write the merged full model (base weights with the adapter added in) as safetensors, loadable by transformers.

    Args:
        model (`peft.PeftModel`): the adapted model (left unchanged: a deep copy is merged).
        out_dir (`str` or `os.PathLike`): the output folder (`config.json`, `model.safetensors`, ...).
        adapter_name (`str`, *optional*): the adapter to merge; defaults to the active one.
        tokenizer (*optional*): saved into the folder too when given.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing non-empty `out_dir` that holds
            an earlier export (never another output of the pack such as a training run, a folder of your own, nor
            the base model's own folder).
        check_inputs (`dict`, *optional*): model inputs; the merged model's outputs are compared with the adapted
            model's and the largest difference is recorded.
        progressbar (`bool`, *optional*, defaults to `False`): show a progress bar while merging.

    Returns:
        `ExportInfo`

    Raises:
        ExportError: if a part cannot be merged (adapters, prefixes, ...); the message lists them. Also for an S3PET
            adapter in search mode (derive its structure and train it in apply mode first).

    Example:

    ```py
    >>> export_merged(model, "sst2-merged", tokenizer=tokenizer)  # doctest: +SKIP
    >>> AutoModelForSequenceClassification.from_pretrained("sst2-merged")  # doctest: +SKIP
    ```
    """
    tuner, name, config = _tuner_and_name(model, adapter_name)
    if not isinstance(progressbar, bool):  # "no" would count as True
        raise TypeError(f"`progressbar` must be True or False, got {progressbar!r}.")
    _check_inputs_given(check_inputs)
    _check_export_dir(out_dir, overwrite, config)  # before any work (checked again on write)
    if _peft_type(config) == "SAMTUNING":
        _check_sam_selected(model, name)
    parts = unmergeable_parts(model, name)  # an S3PET adapter in search mode lists itself
    if parts:
        raise ExportError(
            f"Adapter {name!r} has {len(parts)} parts that cannot be merged into the base weights, e.g. {parts[:3]}. "
            "Share the adapter itself (it needs `pip install peft-designspace` to load), or train a design whose "
            "parts all merge (LoRA and BitFit, e.g. preset 'lora' or 'bitfit')."
        )
    exact = _peft_type(config) == "SAMTUNING"
    quantized = [path for path, layer in _sam_layers(tuner, name) if layer.quantization_backend is not None]
    clone = _copy_with_active(model, name)
    expected = _outputs(clone, check_inputs) if check_inputs is not None else None  # before merging: no 2nd copy
    merged = clone.merge_and_unload(progressbar=progressbar, adapter_names=[name])
    info = ExportInfo(str(out_dir), "merged", _peft_type(config), exact=exact and not quantized)
    info.notes.append("every part merged into the base weights; load with transformers alone")
    if exact and quantized:
        info.notes.append(
            f"{len(quantized)} merged layers are quantized: W + ΔW is requantized, so outputs agree only to "
            "quantization rounding"
        )
    if expected is not None:
        info.max_abs_diff = _max_diff(expected, _outputs(merged, check_inputs))
    with atomic_output_dir(out_dir, **_output_rules(overwrite, config)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_info(tmp, info)
    return info


# plain PEFT --------------------------------------------------------------------------------------------------------
def export_to_peft(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    adapter_name: str | None = None,
    overwrite: bool = False,
    check_inputs: dict[str, torch.Tensor] | None = None,
) -> ExportInfo:
    """Write the adapter in a format plain PEFT loads without peft-designspace (LoRA or SHiRA), when it is expressible.

    Design-space adapters made of LoRA (and BitFit) parts become a `LoraConfig` adapter; SAM adapters on plain linear
    weights become a `ShiraConfig` adapter (see the module docstring for exactness). Load it with
    `PeftModel.from_pretrained(base, out_dir)` and nothing else imported.

    Args:
        model (`peft.PeftModel`): the adapted model (left unchanged).
        out_dir (`str` or `os.PathLike`): the output folder.
        adapter_name (`str`, *optional*): the adapter to export; defaults to the active one.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing non-empty `out_dir` that holds
            an earlier export (never another output of the pack such as a training run, a folder of your own, nor
            the base model's own folder).
        check_inputs (`dict`, *optional*): model inputs to compare the exported model's outputs with the adapted
            model's before anything is written; the largest difference is recorded.

    Returns:
        `ExportInfo`

    Raises:
        ExportError: if plain PEFT cannot express the adapter; the message names the first parts and suggests
            `export_merged`.

    Example:

    ```py
    >>> model = get_peft_model(base, DesignSpaceConfig(preset="lora", task_type="SEQ_CLS"))  # doctest: +SKIP
    >>> export_to_peft(model, "sst2-lora").format  # doctest: +SKIP
    'lora'
    ```
    """
    tuner, name, config = _tuner_and_name(model, adapter_name)
    _check_inputs_given(check_inputs)
    _check_export_dir(out_dir, overwrite, config)  # before any work (checked again on write)
    peft_type = _peft_type(config)
    if peft_type == "DESIGNSPACE":
        builder = _designspace_to_lora
    elif peft_type == "SAMTUNING":
        builder = _sam_to_shira
    elif peft_type == "S3PET":
        builder = _s3pet_to_lora
    elif hasattr(tuner, "export_lora_structure"):  # hook for tuners such as S3PET (see docs/hub.md)
        builder = _structure_to_lora
    else:
        raise ExportError(
            f"Export to plain PEFT is not implemented for {peft_type} adapters; use `export_merged` when every part "
            "merges."
        )
    exported, info = builder(model, tuner, name, config)
    info.path = str(out_dir)
    half = _half_precision_bases(model)
    if info.exact and half:
        info.exact = False
        info.notes.append(
            f"half-precision base weights ({', '.join(half)}): plain PEFT adds the adapter's output in float32 and "
            "rounds once, the pack rounds the delta (SAM) or the LoRA output (S4, S3PET) first, so outputs agree to "
            "that precision's rounding, not bit for bit"
        )
    if check_inputs is not None:
        info.max_abs_diff = _compare(_reference(model, name), exported, check_inputs)
    with atomic_output_dir(out_dir, **_output_rules(overwrite, config)) as tmp:
        exported.save_pretrained(tmp)
        _write_info(tmp, info)
    return info


@dataclass
class LoraPart:
    """One LoRA module to export: path in the base model, `A` ``(r, in)``, `B` ``(out, r)`` and the scaling."""

    path: str
    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    alpha: float | None = None
    fan_in_fan_out: bool = False


def _designspace_to_lora(model, tuner, name, config):
    from peft_designspace.designspace.layer import Linear, Norm, PrefixHolder

    lora_parts: list[LoraPart] = []
    biases: dict[str, torch.Tensor] = {}
    refused: list[str] = []
    for path, module in tuner.model.named_modules():
        if isinstance(module, PrefixHolder) and name in module.designspace_prefix_kv:
            refused.append(f"{path}: prefix")
        if isinstance(module, Linear):
            if name in module.designspace_adapter:
                refused.append(f"{path}: bottleneck adapter")
            if name in module.designspace_lora:
                low_rank = module.designspace_lora[name]
                alpha = config.lora_alpha if config.lora_alpha is not None else low_rank.A.weight.shape[0]
                lora_parts.append(
                    LoraPart(
                        path,
                        low_rank.A.weight.detach(),
                        low_rank.B.weight.detach(),
                        low_rank.scaling,
                        alpha,
                        module.fan_in_fan_out,
                    )
                )
        if isinstance(module, (Linear, Norm)) and name in module.designspace_bias:
            if getattr(module.get_base_layer(), "bias", None) is None:
                refused.append(f"{path}: bias delta on a module without a bias (nothing to fold it into)")
            else:
                biases[path] = module.designspace_bias[name].detach()
    if refused:
        raise ExportError(
            f"Plain PEFT cannot express {len(refused)} parts of design-space adapter {name!r}, e.g. {refused[:3]}: "
            "only LoRA and BitFit parts have a plain-PEFT form. Use `export_merged` when every part merges, or "
            "share the adapter itself (loading it needs `pip install peft-designspace`)."
        )
    if not lora_parts:
        raise ExportError(
            f"Design-space adapter {name!r} has no LoRA part (BitFit only), and plain PEFT has no bias-only method; "
            "`export_merged` writes it exactly as a full model."
        )
    notes = [f"{len(lora_parts)} LoRA modules as LoraConfig with rank_pattern/alpha_pattern"]
    if biases:
        notes.append(
            f"{len(biases)} BitFit bias deltas folded into the base biases (b + δ), saved with bias='all'; "
            "outputs equal to float rounding"
        )
    plain = _plain_copy(model, name)
    with torch.no_grad():
        for path, delta in biases.items():
            bias = plain.get_submodule(path).bias
            bias.add_(delta.to(bias.dtype))
    exported = _lora_model(plain, lora_parts, config, bias="all" if biases else "none", dropout=config.lora_dropout)
    return exported, ExportInfo("", "lora", "DESIGNSPACE", exact=not biases, notes=notes)


def _s3pet_to_lora(model, tuner, name, config):
    """An applied S3PET structure of LoRA parts (and BitFit parts on modules with a bias) as a plain LoraConfig."""
    from peft_designspace.s3pet.layer import Linear, Norm

    if config.searching:
        raise ExportError(
            f"S3PET adapter {name!r} is in search mode; derive its structure and train it in apply mode before "
            "exporting."
        )
    lora_parts: list[LoraPart] = []
    biases: dict[str, torch.Tensor] = {}
    refused: list[str] = []
    for path, module in tuner.model.named_modules():
        if isinstance(module, Linear):
            if name in module.s3pet_lra:
                refused.append(f"{path}: low-rank adapter")
            if name in module.s3pet_lora:
                low_rank = module.s3pet_lora[name]
                parts = (low_rank.A.weight.detach(), low_rank.B.weight.detach(), low_rank.scaling)
                lora_parts.append(LoraPart(path, *parts, config.lora_alpha, module.fan_in_fan_out))
        if isinstance(module, Norm) and name in module.s3pet_lnfit:
            refused.append(f"{path}: LNFit scale delta")
        if isinstance(module, (Linear, Norm)) and name in module.s3pet_bias:
            if getattr(module.get_base_layer(), "bias", None) is None:
                refused.append(f"{path}: bias delta on a module without a bias (nothing to fold it into)")
            else:
                biases[path] = module.s3pet_bias[name].detach()
    if refused or not lora_parts:
        what = f"{len(refused)} parts, e.g. {refused[:3]}" if refused else "a structure without LoRA parts"
        raise ExportError(
            f"Plain PEFT cannot express {what} of S3PET adapter {name!r}: only LoRA (and BitFit on biased modules) "
            "has a plain-PEFT form. Use `export_merged` when every part merges (`unmergeable_parts` lists the rest)."
        )
    plain = _plain_copy(model, name)
    with torch.no_grad():
        for path, delta in biases.items():
            bias = plain.get_submodule(path).bias
            bias.add_(delta.to(bias.dtype))
    exported = _lora_model(plain, lora_parts, config, bias="all" if biases else "none", dropout=0.0)
    notes = [f"{len(lora_parts)} LoRA modules as LoraConfig with rank_pattern/alpha_pattern"]
    if biases:
        notes.append(f"{len(biases)} BitFit bias deltas folded into the base biases, saved with bias='all'")
    return exported, ExportInfo("", "lora", "S3PET", exact=not biases, notes=notes)


def _structure_to_lora(model, tuner, name, config):
    """Hook for other tuners: `tuner.export_lora_structure(name)` returns `list[LoraPart]` or raises ExportError."""
    parts = tuner.export_lora_structure(name)
    exported = _lora_model(_plain_copy(model, name), parts, config, bias="none", dropout=0.0)
    notes = [f"{len(parts)} LoRA modules as LoraConfig with rank_pattern/alpha_pattern"]
    return exported, ExportInfo("", "lora", _peft_type(config), exact=True, notes=notes)


def _lora_model(plain: nn.Module, parts: list[LoraPart], config: Any, *, bias: str, dropout: float) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    fan_in_fan_out = {p.fan_in_fan_out for p in parts}
    if len(fan_in_fan_out) > 1:
        raise ExportError("The LoRA modules mix nn.Linear and GPT-2 Conv1D layers; one LoraConfig cannot hold both.")
    ranks = [p.A.shape[0] for p in parts]
    default_r = max(set(ranks), key=ranks.count)
    default_alpha = next(p.alpha for p in parts if p.A.shape[0] == default_r)
    lora_config = LoraConfig(
        r=default_r,
        lora_alpha=default_alpha,
        target_modules=[p.path for p in parts],
        rank_pattern={p.path: p.A.shape[0] for p in parts if p.A.shape[0] != default_r},
        alpha_pattern={p.path: p.alpha for p in parts if p.alpha != default_alpha},
        lora_dropout=dropout,
        fan_in_fan_out=fan_in_fan_out.pop(),
        bias=bias,
        task_type=config.task_type,
        modules_to_save=config.modules_to_save,
        base_model_name_or_path=config.base_model_name_or_path,
    )
    exported = get_peft_model(plain, lora_config)
    with torch.no_grad():
        for part in parts:
            layer = exported.base_model.model.get_submodule(part.path)
            if layer.scaling["default"] != part.scaling:
                raise ExportError(
                    f"{part.path}: PEFT's scaling {layer.scaling['default']!r} differs from the adapter's "
                    f"{part.scaling!r} (lora_alpha {part.alpha!r}, r {part.A.shape[0]}); cannot export exactly."
                )
            layer.lora_A["default"].weight.copy_(part.A)
            layer.lora_B["default"].weight.copy_(part.B)
    return exported.eval()


def shira_rank(layers: list[tuple[str, int, int, int]]) -> int:
    """The smallest SHiRA `r` whose `r · (in + out)` entries hold every layer's selection.

    Args:
        layers (`list[tuple]`): `(path, in_features, out_features, selected count)` per layer.

    Raises:
        ExportError: if some layer would need more than `in · out` entries.
    """
    r = max(1, max(math.ceil(k / (i + o)) for _, i, o, k in layers))
    too_small = [path for path, i, o, _ in layers if r * (i + o) > i * o]
    if too_small:
        raise ExportError(
            f"SHiRA gives every layer r·(in + out) entries with one r; holding the largest selection needs r={r}, "
            f"more than the whole weight of {too_small[:3]}. Use `export_merged` (exact for SAM on unquantized "
            "weights)."
        )
    return r


def _check_sam_selected(model, name: str) -> None:
    """Refuse a SAM adapter whose entries are still placeholders (never calibrated nor loaded): exporting it would
    write a zero delta on the first entries of every tensor."""
    from peft_designspace.samtuning.model import has_selection

    if not has_selection(model, name):
        raise ExportError(
            f"The SAM adapter {name!r} has no selection yet (placeholder entries): run `calibrate_sam` (or train with "
            "`SAMCalibrationCallback`, or load a saved adapter) before exporting it."
        )


def _sam_to_shira(model, tuner, name, config):
    from peft import ShiraConfig, get_peft_model

    _check_sam_selected(model, name)
    layers, refused = [], []
    for path, layer in tuner.sam_layers(name):
        base = layer.get_base_layer()
        if type(base) is not nn.Linear:
            refused.append(f"{path}: {type(base).__name__} weight (SHiRA wraps nn.Linear only)")
        elif name in layer.samtuning_bias_values:
            refused.append(f"{path}: bias entries (SHiRA has no bias part)")
        else:
            layers.append((path, base.in_features, base.out_features, layer.samtuning_weight_values[name].numel()))
    if refused:
        raise ExportError(
            f"Plain PEFT's sparse method (SHiRA) cannot express {len(refused)} parts of SAM adapter {name!r}, e.g. "
            f"{refused[:3]}. Use `export_merged`: merging a SAM adapter is exact on unquantized weights (a quantized "
            "layer is requantized after merging, so outputs then agree only to quantization rounding)."
        )
    r = shira_rank(layers)
    shira_config = ShiraConfig(
        r=r,
        target_modules=[path for path, *_ in layers],
        random_seed=0,
        task_type=config.task_type,
        modules_to_save=config.modules_to_save,
        base_model_name_or_path=config.base_model_name_or_path,
    )
    exported = get_peft_model(_plain_copy(model, name), shira_config)
    modules = dict(tuner.sam_layers(name))
    padded = 0
    with torch.no_grad():
        for path, in_f, out_f, count in layers:
            flat = modules[path].samtuning_weight_indices[name].long().cpu()
            values = modules[path].samtuning_weight_values[name].detach().float().cpu()
            size = r * (in_f + out_f)
            taken = torch.zeros(in_f * out_f, dtype=torch.bool)
            taken[flat] = True
            filler = (~taken).nonzero().squeeze(1)[: size - count]  # unselected entries, value 0
            order = torch.cat([flat, filler]).sort()
            full = torch.cat([values, values.new_zeros(size - count)])[order.indices]
            shira_layer = exported.base_model.model.get_submodule(path)
            rows, cols = order.values // in_f, order.values % in_f  # nn.Linear stores (out, in)
            weight = shira_layer.shira_weight["default"]
            shira_layer.shira_indices["default"] = torch.stack([rows, cols]).to(weight.device, torch.int)
            weight.data = full.to(weight.device, weight.dtype)
            padded += size - count
    notes = [
        f"{len(layers)} layers as ShiraConfig(r={r}); {padded:,} zero-valued entries pad the fixed per-layer count"
    ]
    return exported.eval(), ExportInfo("", "shira", "SAMTUNING", exact=True, notes=notes)
