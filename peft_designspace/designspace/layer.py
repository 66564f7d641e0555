"""Tuner layers of the design-space method.

```
                 ┌──────────── designspace.Linear ─────────────┐
x ──► base(x) ──►(+ LoRA(x))──►(+ bias δ)──►(+ parallel adapter(x))──► y ──►(+ sequential adapter(y))──► out
                 └──────────────────────────────────────────────┘
x ──► norm(x) ──►(+ bias δ)──► out                                   designspace.Norm
attention(q, [P_k; k], [P_v; v])                                    designspace.PrefixHolder (child of attention)
```

One wrapper per targeted linear holds every part planned for it, so a projection with LoRA, BitFit and an adapter is
wrapped once. LoRA and bias deltas are linear and merge into the base weights (through PEFT's quantization backend
on bitsandbytes layers); adapters and prefixes are not and stay active after a merge, and so do bias deltas on a
layer without a bias (merging one would create a bias the model's config does not declare).
"""

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from .._layers import LinearDeltaMixin, PackTunerLayer, added, check_finite_deltas, on_meta
from ..modules import Bottleneck, LowRank, PrefixKV


class DesignSpaceLayer(PackTunerLayer):
    """Common base of the method's tuner layers (used by PEFT to find them)."""

    adapter_layer_names: tuple[str, ...] = ()

    def unmergeable_parts(self, adapter_names: list[str]) -> list[str]:
        """Names of the parts of `adapter_names` that cannot be merged into the base weights."""
        return []

    def _check_mergeable(self, adapter_names: list[str]) -> None:
        """Raise when these adapters cannot be merged at all (design-space adapters always can, in part)."""


class Linear(nn.Module, LinearDeltaMixin, DesignSpaceLayer):
    """Wraps a linear-like layer (`nn.Linear`, GPT-2 `Conv1D`, bitsandbytes 8/4-bit) with LoRA, bias and adapter parts.

    Args:
        base_layer (`nn.Module`): the wrapped layer.
        adapter_name (`str`): name of the first adapter.
        **parts: forwarded to [`~Linear.update_layer`].
    """

    lora_container = "designspace_lora"
    bias_container = "designspace_bias"

    adapter_layer_names = ("designspace_lora", "designspace_bias", "designspace_adapter")
    other_param_names = ("designspace_adapter_mode",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, **parts) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.designspace_lora = nn.ModuleDict()
        self.designspace_bias = nn.ParameterDict()
        self.designspace_adapter = nn.ModuleDict()
        self.designspace_adapter_mode: dict[str, str] = {}
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self._init_linear(base_layer)
        self.update_layer(adapter_name, **parts)

    def update_layer(
        self,
        adapter_name: str,
        lora: int = 0,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.0,
        bias: int = 0,
        adapter: int = 0,
        adapter_mode: str = "sequential",
        adapter_activation: str = "relu",
        init_weights: bool = True,
        **_: object,
    ) -> None:
        """Add the parts of one adapter: LoRA of rank `lora`, a bias delta if `bias`, an adapter of width `adapter`."""
        if lora:
            scaling = (lora_alpha / lora) if lora_alpha else 1.0
            self.designspace_lora[adapter_name] = LowRank(
                self.in_features, self.out_features, lora, scaling, lora_dropout, zero_init=init_weights
            )
        if bias:
            init = torch.zeros(self.out_features) if init_weights else torch.randn(self.out_features) * 0.02
            self.designspace_bias[adapter_name] = nn.Parameter(init)
        if adapter:
            d_in = self.out_features if adapter_mode == "sequential" else self.in_features
            self.designspace_adapter[adapter_name] = Bottleneck(
                d_in, adapter, self.out_features, adapter_activation, zero_init=init_weights
            )
            self.designspace_adapter_mode[adapter_name] = adapter_mode
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    # merging ---------------------------------------------------------------------------------------------------
    def unmergeable_parts(self, adapter_names: list[str]) -> list[str]:
        adapters = [f"adapter[{n}]" for n in adapter_names if n in self.designspace_adapter]
        return adapters + self._unmergeable_biases(adapter_names)

    # forward ---------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self._base_output(x, *args, **kwargs)
        out_dtype = result.dtype
        sequential = []
        bias_names = self._bias_delta_names()  # a bias delta on a bias-free base stays here when merged
        for name in self.active_adapters:
            if name not in self.merged_adapters and name in self.designspace_lora:
                lora = self.designspace_lora[name]
                result = result + lora(self._cast_input_dtype(x, lora.A.weight.dtype)).to(out_dtype)
            if name in bias_names:
                result = result + self.designspace_bias[name].to(out_dtype)
            if name in self.designspace_adapter:
                if self.designspace_adapter_mode[name] == "parallel":
                    adapter = self.designspace_adapter[name]
                    result = result + adapter(self._cast_input_dtype(x, adapter.down.weight.dtype)).to(out_dtype)
                else:
                    sequential.append(self.designspace_adapter[name])
        for adapter in sequential:
            result = result + adapter(result.to(adapter.down.weight.dtype)).to(out_dtype)
        return result

    def __repr__(self) -> str:
        return "designspace." + super().__repr__()


class Norm(nn.Module, DesignSpaceLayer):
    """Wraps a LayerNorm/RMSNorm-like module with an additive output bias delta per adapter (BitFit on norms)."""

    adapter_layer_names = ("designspace_bias",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, **parts) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.designspace_bias = nn.ParameterDict()
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.size = base_layer.weight.numel()
        self.update_layer(adapter_name, **parts)

    def update_layer(self, adapter_name: str, bias: int = 0, init_weights: bool = True, **_: object) -> None:
        if bias:
            init = torch.zeros(self.size) if init_weights else torch.randn(self.size) * 0.02
            self.designspace_bias[adapter_name] = nn.Parameter(init)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def unmergeable_parts(self, adapter_names: list[str]) -> list[str]:
        if getattr(self.base_layer, "bias", None) is not None:
            return []
        return [f"norm bias[{n}] (the norm has no bias)" for n in adapter_names if n in self.designspace_bias]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = check_adapters_to_merge(self, adapter_names)
        if safe_merge:
            check_finite_deltas(self._safe_merge_parts(names))
        for name in names:  # every merged adapter is recorded, as in the linear layers (PEFT's model status)
            if self._folds(name):
                self.base_layer.bias.data = added(self.base_layer.bias.data, self.designspace_bias[name])
            self.merged_adapters.append(name)

    def _folds(self, name: str) -> bool:
        """Whether merging adapter `name` adds its bias delta into the norm's own bias (else it stays apart)."""
        return name in self.designspace_bias and getattr(self.base_layer, "bias", None) is not None

    def _safe_merge_parts(self, names: list[str]) -> dict[str, dict[str, torch.Tensor | None]]:
        parts, merged = {}, getattr(self.base_layer, "bias", None)
        for name in names:  # merged in turn, as `merge` does
            if self._folds(name):
                merged = added(merged.detach(), self.designspace_bias[name])
                parts[name] = {"bias": merged}
        return parts

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if self._folds(name):
                self.base_layer.bias.data = added(self.base_layer.bias.data, self.designspace_bias[name], -1.0)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name in self.designspace_bias and not (name in self.merged_adapters and self._folds(name)):
                result = result + self.designspace_bias[name].to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "designspace." + super().__repr__()


class PrefixHolder(nn.Module, DesignSpaceLayer):
    """Holds the key/value prefixes of one self-attention module, as a child named `prefix_holder` of it.

    The attention module itself is left in place (its own children, like the query projection, may be wrapped too);
    the attention function registered by the method finds the prefixes through this child. It is not called.

    Args:
        attention (`nn.Module`): the self-attention module (its config is switched to the prefix-aware function).
        adapter_name (`str`): name of the first adapter.
        **parts: forwarded to [`~PrefixHolder.update_layer`].
    """

    adapter_layer_names = ("designspace_prefix_kv",)

    def __init__(self, adapter_name: str, fallback_attention: str, **parts) -> None:
        super().__init__()
        self.designspace_prefix_kv = nn.ModuleDict()
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.fallback_attention = fallback_attention
        self.update_layer(adapter_name, **parts)

    def update_layer(
        self,
        adapter_name: str,
        prefix: int = 0,
        kv_heads: int = 0,
        head_dim: int = 0,
        hidden_size: int | None = None,
        prefix_projection_hidden: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        **_: object,
    ) -> None:
        if prefix:
            module = PrefixKV(kv_heads, head_dim, prefix, hidden_size, prefix_projection_hidden)
            # created on the meta device under `low_cpu_mem_usage=True`: left there for PEFT to materialise.
            # Otherwise in the attention's device and floating dtype, like PEFT's adapter weights (PEFT then
            # upcasts half-precision adapters to float32 unless `autocast_adapter_dtype=False`).
            self._placement = {"device": device, "dtype": dtype}
            self.designspace_prefix_kv[adapter_name] = module
            self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        # There is no base weight to follow (PEFT's version reads `get_base_layer().weight`, which is this holder):
        # the prefixes go to the attention's device and floating dtype, recorded by `update_layer`.
        module = self.designspace_prefix_kv[adapter_name] if adapter_name in self.designspace_prefix_kv else None
        if module is None or on_meta(module):
            return
        placement = getattr(self, "_placement", {})
        module.to(device=device or placement.get("device"), dtype=placement.get("dtype"))

    def get_base_layer(self) -> nn.Module:
        return self

    def active_prefixes(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`(key, value)` pairs of the active adapters, each ``(kv_heads, P, head_dim)``; empty when disabled."""
        if self.disable_adapters:
            if self.merged:  # as the linear and norm layers unmerge in a forward with the adapters disabled
                self.unmerge()
            return []
        return [self.designspace_prefix_kv[n]() for n in self.active_adapters if n in self.designspace_prefix_kv]

    def unmergeable_parts(self, adapter_names: list[str]) -> list[str]:
        return [f"prefix[{n}]" for n in adapter_names if n in self.designspace_prefix_kv]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Prefixes cannot be merged; they stay active (see `DesignSpaceModel.merge_and_unload`). The adapters are
        recorded as merged all the same, as the linear layers record theirs, so that PEFT's model status is regular."""
        self.merged_adapters.extend(check_adapters_to_merge(self, adapter_names))

    def unmerge(self) -> None:
        """Nothing to undo but the record: prefixes are never merged."""
        self.merged_adapters.clear()

    def forward(self, *args, **kwargs):  # pragma: no cover - never called, only holds parameters
        raise RuntimeError("PrefixHolder is a parameter container; the attention function reads it.")
