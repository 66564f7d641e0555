"""What the pack's wrappers of linear-like layers share: LoRA and bias deltas merged into the base layer."""

import contextlib
import copy
import sys
import warnings
from collections.abc import Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.quantization_utils import resolve_quantization_backend
from torch import nn

from .architecture import linear_features


def on_meta(module: nn.Module) -> bool:
    """Whether `module` holds tensors on the meta device (adapter parts created under `low_cpu_mem_usage=True`)."""
    return any(t.device.type == "meta" for t in (*module.parameters(), *module.buffers()))


def base_weight(layer) -> torch.Tensor:
    """`layer.get_base_weight()` (PEFT's dequantizing read of the base weight), safe after a bitsandbytes CPU forward.

    bitsandbytes (0.48 and later) repacks a 4-bit weight for its CPU kernel on the first eval-mode, no-grad forward on
    a CPU with AVX512-BF16, and changes its quant state with it. PEFT's backend then dequantizes the packed bytes as if
    they were plain: a merge wrote weights 0.13 off on a tiny Llama (the whole scale of its weights). The packing is
    undone here first, as bitsandbytes itself does before saving; the next such forward packs again. Its inverse
    (0.50.2) leaves a non-nested `absmax` in the packed (transposed, bfloat16) layout, read then in the wrong order
    (0.044 off for weights of scale 0.09); that layout is restored here too. A weight packed by a forward under
    `guard_cpu_packing` gets its state from before the packing back, exactly; for one packed otherwise, what stays is
    bfloat16's rounding of `absmax` (4e-4 for those weights).
    """
    unpack_for_cpu(getattr(layer.get_base_layer(), "weight", None))
    return layer.get_base_weight()


def unpack_for_cpu(weight) -> None:
    """Undo bitsandbytes' CPU packing of a 4-bit weight in place; nothing for any other weight.

    The 4-bit codes are only rearranged by the packing, and bitsandbytes' inverse gives them back exactly. The quant
    state is not: the packing rounds `absmax` to bfloat16 (0.26% of the weights' scale) and the inverse quantizes a
    nested `absmax` again (0.5%), so the frozen base would change for good at the first evaluation. The state as it
    was before the packing (kept by the guard's hook, see `guard_cpu_packing`) is put back instead; without it, the
    inverse's state with its `absmax` layout restored (see `base_weight`).
    """
    state = getattr(weight, "quant_state", None)
    if state is None or not getattr(state, "packing_format_for_cpu", False):
        return
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    nested = state.original_nested
    source, original = getattr(weight, "_designspace_state_before_packing", (None, None))
    kept = source is state  # the packing changed this very object in place: its copy holds the state as it was
    weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
    if kept:
        state = original
    elif not nested and state.absmax.dim() == 2:
        state.absmax = state.absmax.T.reshape(-1).to(torch.float32)
    weight.quant_state = state


def _keep_state_before_packing(weight) -> None:
    """Keep a shallow copy of an unpacked 4-bit weight's quant state: the packing replaces its attributes (`absmax`,
    `state2`, ...) by new objects in place, so the copy keeps the originals for `unpack_for_cpu`, which uses it only
    for that same state object (not after a merge gave the weight a new state)."""
    state = getattr(weight, "quant_state", None)
    if state is not None and not getattr(state, "packing_format_for_cpu", False):
        weight._designspace_state_before_packing = (state, copy.copy(state))


def guard_cpu_packing(model: nn.Module) -> None:
    """Keep bitsandbytes' CPU packing of 4-bit weights (0.48 and later) from breaking training and saving.

    A packed weight (after an eval-mode forward on an AVX512-BF16 CPU, e.g. the Trainer's evaluation) stays packed
    when training resumes, and the packed kernel passes no gradient to its input: every adapter below such a layer
    stopped learning (a `Trainer` run with an evaluation kept training 28 of 49 S4 tensors, and PEFT's LoRA none).
    Saving (`state_dict`) unpacks it with bitsandbytes' own inverse, which leaves a non-nested `absmax` transposed and
    so changed the live model (logits 0.08-0.27 off). Hooks on every 4-bit layer of `model` unpack it correctly
    before a forward that trains or needs the input's gradient, and before `state_dict`; an inference forward
    packs it again. Idempotent; nothing without bitsandbytes.
    """
    bnb = sys.modules.get("bitsandbytes")
    linear4bit = getattr(getattr(bnb, "nn", None), "Linear4bit", None)
    if linear4bit is None:
        return
    for module in model.modules():
        if isinstance(module, linear4bit) and not getattr(module, "_designspace_packing_guard", False):
            module.register_forward_pre_hook(_unpack_before_training_forward)
            module.register_state_dict_pre_hook(_unpack_before_saving)
            module._designspace_packing_guard = True


def _unpack_before_training_forward(module: nn.Module, args: tuple) -> None:
    x = args[0] if args else None
    if module.training or (isinstance(x, torch.Tensor) and x.requires_grad):
        unpack_for_cpu(module.weight)
    else:  # bitsandbytes may pack the weight in this forward
        _keep_state_before_packing(module.weight)


def _unpack_before_saving(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    unpack_for_cpu(module.weight)


@contextlib.contextmanager
def keeping_requires_grad(module: nn.Module, adapter_name: str) -> Iterator[None]:
    """Restore the `requires_grad` flags of `adapter_name`'s tensors held directly in `nn.ParameterDict`s of `module`.

    PEFT's `cast_adapter_dtype` and `_move_adapter_to_device_of_base_layer` write a cast or moved copy back into the
    dict, which wraps it in a new `nn.Parameter` with `requires_grad=True`: a frozen adapter (inference mode, an
    inactive adapter) would come out trainable on a half-precision base or after a `low_cpu_mem_usage` load. Tensors
    inside submodules (LoRA, adapters) are not affected: PEFT rebuilds those with their own flag.

    Example:

    ```py
    >>> holder = nn.ParameterDict({"a": nn.Parameter(torch.zeros(2), requires_grad=False)})
    >>> with keeping_requires_grad(holder, "a"):
    ...     holder["a"] = holder["a"].to(torch.float64)
    >>> holder["a"].requires_grad
    False
    ```
    """
    dicts = [d for d in module.modules() if isinstance(d, nn.ParameterDict) and adapter_name in d]
    flags = [d[adapter_name].requires_grad for d in dicts]
    yield
    for holder, flag in zip(dicts, flags):
        if adapter_name in holder:
            holder[adapter_name].requires_grad_(flag)


class PackTunerLayer(BaseTunerLayer):
    """Common base of the pack's tuner layers: what PEFT's helpers expect of a tuner layer besides `BaseTunerLayer`."""

    # read, and set per instance, by `peft.helpers.disable_input_dtype_casting` (honoured by `_cast_input_dtype`)
    cast_input_dtype_enabled = True

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        with keeping_requires_grad(self, adapter_name):
            super()._move_adapter_to_device_of_base_layer(adapter_name, device)

    def _check_backend_merges(self) -> None:
        """Raise before a merge (or its safe-merge check) reads a weight that a forward-only backend cannot give."""
        backend = getattr(self, "quantization_backend", None)
        if backend is not None and not backend.supports_merge:
            raise ValueError(
                f"{type(self.get_base_layer()).__name__} cannot be merged into: its quantization backend is "
                "forward-only."
            )


def added(base: torch.Tensor, delta: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """`base + sign · delta` in `base`'s dtype and device, rounded once: the sum is taken in float32 at least.

    Casting `delta` to a bfloat16 or float16 `base` first would round twice (about 1 ulp off in a sixth of the
    entries of a merged weight, where PEFT's LoRA merge rounds once).

    Example:

    ```py
    >>> added(torch.ones(2, dtype=torch.bfloat16), torch.tensor([1e-3, -1e-3])).dtype
    torch.bfloat16
    ```
    """
    wide = torch.promote_types(base.dtype, torch.float32)
    return (base.to(wide) + sign * delta.detach().to(base.device, wide)).to(base.dtype)


def check_finite_deltas(parts: dict[str, dict[str, torch.Tensor | None]]) -> None:
    """For `safe_merge=True`: raise before anything is merged when a part would put NaN or inf values in the base.

    `parts` maps each adapter name to what merging each part gives, by part name (`None` for an absent part): the
    merged tensor in the base's dtype where there is one (so an overflow of a float16 weight is caught, as PEFT's
    LoRA does), else the delta itself. All adapters are checked first, so a refused merge leaves the base layer as it
    was.

    Example:

    ```py
    >>> check_finite_deltas({"default": {"bias": torch.tensor([0.0, float("nan")])}})
    Traceback (most recent call last):
    ...
    ValueError: safe_merge: NaNs or infs in the bias part of adapter 'default' (merged in the base's dtype); ...
    ```
    """
    for name, deltas in parts.items():
        bad = [part for part, delta in deltas.items() if delta is not None and not torch.isfinite(delta).all()]
        if bad:
            raise ValueError(
                f"safe_merge: NaNs or infs in the {', '.join(bad)} part of adapter {name!r} (merged in the base's "
                "dtype); nothing was merged."
            )


class LinearDeltaMixin:
    """For `BaseTunerLayer` wrappers of `nn.Linear`, GPT-2 `Conv1D` and bitsandbytes layers with LoRA and bias deltas.

    Merging goes through PEFT's quantization backend (`base_weight` / `set_base_weight`), so it dequantizes, adds
    and requantizes bitsandbytes weights. A bias delta on a layer without a bias is never merged: creating a bias would
    give the merged model a parameter its config does not declare (dropped on save and reload), so it stays a separate
    addition in the forward (`_bias_delta_names`) and counts as unmergeable (`_unmergeable_biases`), like a bias delta
    on a bias-free norm. Subclasses name their containers in `lora_container` and `bias_container` and define
    `_check_mergeable(names)`.
    """

    lora_container: str
    bias_container: str

    def _init_linear(self, base_layer: nn.Module) -> None:
        self.quantization_backend = resolve_quantization_backend(base_layer)
        self.fan_in_fan_out = type(base_layer).__name__ == "Conv1D"  # GPT-2 stores (in, out)
        self.in_features, self.out_features = linear_features(base_layer)

    def _stored_delta(self, lora: nn.Module) -> torch.Tensor:
        """The dense LoRA update in the base weight's storage layout."""
        delta = lora.delta_weight()
        return delta.T if self.fan_in_fan_out else delta

    def _add_deltas_to_base(self, name: str, lora: nn.Module | None, bias: torch.Tensor | None, sign: float) -> None:
        """Add (`sign=+1`) or remove (`-1`) one adapter's LoRA update and bias delta in the base layer."""
        base = self.get_base_layer()
        if lora is not None:
            self._check_backend_merges()
            self.set_base_weight(added(base_weight(self), self._stored_delta(lora), sign))
        if bias is not None and self._base_has_bias():  # else the forward keeps adding it
            base.bias.data = added(base.bias.data, bias, sign)

    def _base_has_bias(self) -> bool:
        return getattr(self.get_base_layer(), "bias", None) is not None

    def _bias_delta_names(self) -> list[str]:
        """The active adapters whose bias delta the forward adds: unmerged ones, and on a bias-free base all."""
        biases = getattr(self, self.bias_container)
        in_base = self.merged_adapters if self._base_has_bias() else []
        return [n for n in self.active_adapters if n in biases and n not in in_base]

    def _unmergeable_biases(self, adapter_names: list[str]) -> list[str]:
        """The bias deltas of `adapter_names` that cannot be merged: all of them when the base layer has no bias."""
        if self._base_has_bias():
            return []
        return [f"bias[{n}] (the layer has no bias)" for n in adapter_names if n in getattr(self, self.bias_container)]

    def _part(self, container: str, name: str):
        parts = getattr(self, container)
        return parts[name] if name in parts else None

    def _lora_delta(self, name: str) -> torch.Tensor:
        return self._stored_delta(getattr(self, self.lora_container)[name])

    def _safe_merge_parts(self, names: list[str]) -> dict[str, dict[str, torch.Tensor | None]]:
        """What merging `names` in turn gives the base weight and bias, by adapter and part (`check_finite_deltas`)."""
        parts = {}
        weight = bias_sum = None
        for name in names:
            lora, bias = self._part(self.lora_container, name), self._part(self.bias_container, name)
            if lora is not None:
                self._check_backend_merges()  # before reading the weight, which such a backend cannot give
                weight = added(base_weight(self) if weight is None else weight, self._stored_delta(lora))
            if bias is not None and self._base_has_bias():
                bias_sum = added(self.get_base_layer().bias.data if bias_sum is None else bias_sum, bias)
            parts[name] = {
                "LoRA": None if lora is None else weight,
                "bias": None if bias is None or not self._base_has_bias() else bias_sum,
            }
        return parts

    def _add_to_base(self, name: str, sign: float) -> None:
        lora, bias = self._part(self.lora_container, name), self._part(self.bias_container, name)
        self._add_deltas_to_base(name, lora, bias, sign)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merge the LoRA and bias parts of the active (or given) adapters into the base layer."""
        names = check_adapters_to_merge(self, adapter_names)
        self._check_mergeable(names)
        if safe_merge:
            check_finite_deltas(self._safe_merge_parts(names))
        for name in names:
            self._add_to_base(name, +1.0)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo `merge`, last merged adapter first."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            self._add_to_base(self.merged_adapters.pop(), -1.0)

    def _base_output(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The base layer's output (cloned on backends whose outputs must not be modified in place)."""
        result = self.base_layer(x, *args, **kwargs)
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)
        return result
