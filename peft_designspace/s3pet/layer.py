"""Tuner layers of S3PET: the candidate (search) or kept (apply) delta modules of one linear or norm module.

```
                 ┌──────────────────────── s3pet.Linear ──────────────────────────┐
x ──► base(x) ──►(+ z_lora · LoRA(x))──►(+ z_bitfit · b)──► y ──►(+ z_lra · LRA(y))──► out
x ──► norm(x; w + z_lnfit · Δw, b + z_bitfit · Δb) ──► out                      s3pet.Norm
```

In search mode every part is multiplied by its gate `z` (set by the tuner before each forward, from the layer's
architecture parameters `s3pet_alpha[adapter]`, one per part in `TYPES` order); in apply mode `z = 1`. LoRA, BitFit and
LNFit are linear in their parameters and merge into the base weights; the low-rank adapter (LRA) does not.
"""

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.func import functional_call

from .._layers import LinearDeltaMixin
from ..modules import LowRank, LowRankAdapter
from .space import TYPES


class S3PETLayer(BaseTunerLayer):
    """Common base of the S3PET layers: gates and the order of the parts of each adapter."""

    adapter_layer_names: tuple[str, ...] = ()

    def _init_gates(self) -> None:
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.part_types: dict[str, list[str]] = {}  # adapter -> its parts, in TYPES order (= the α order)
        self.gates: dict[str, torch.Tensor] = {}  # adapter -> gate per part (search mode), set by the tuner

    def _add_alpha(self, adapter_name: str, types: list[str], searching: bool) -> None:
        self.part_types[adapter_name] = sorted(
            set(self.part_types.get(adapter_name, [])) | set(types), key=TYPES.index
        )
        if searching:
            self.s3pet_alpha[adapter_name] = nn.Parameter(torch.zeros(len(self.part_types[adapter_name])))

    def gate(self, adapter_name: str, kind: str) -> torch.Tensor | float:
        if adapter_name not in self.s3pet_alpha:
            return 1.0
        gates = self.gates.get(adapter_name)
        if gates is None:
            raise RuntimeError("S3PET search gates were not set; run the model through its PeftModel.")
        return gates[self.part_types[adapter_name].index(kind)]

    def unmergeable_parts(self, adapter_names: list[str]) -> list[str]:
        return []

    def _check_mergeable(self, adapter_names: list[str]) -> None:
        searching = [n for n in adapter_names if n in self.s3pet_alpha]
        if searching:
            raise ValueError(
                f"Adapter(s) {searching} are in S3PET search mode (gated candidates): derive the structure with "
                "`derive_structure()`, then train it in apply mode, which can be merged."
            )


class Linear(nn.Module, LinearDeltaMixin, S3PETLayer):
    """Wraps a linear-like layer with LoRA, BitFit and low-rank-adapter parts (any subset, per adapter)."""

    lora_container = "s3pet_lora"
    bias_container = "s3pet_bias"

    adapter_layer_names = ("s3pet_lora", "s3pet_bias", "s3pet_lra", "s3pet_alpha")

    def __init__(self, base_layer: nn.Module, adapter_name: str, **parts) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.s3pet_lora = nn.ModuleDict()
        self.s3pet_bias = nn.ParameterDict()
        self.s3pet_lra = nn.ModuleDict()
        self.s3pet_alpha = nn.ParameterDict()
        self._init_gates()
        self._init_linear(base_layer)
        self.update_layer(adapter_name, **parts)

    def update_layer(
        self,
        adapter_name: str,
        types: list[str],
        rank: int = 1,
        lora_alpha: float = 16.0,
        lra_reduction: int = 32,
        searching: bool = False,
        init_weights: bool = True,
        **_: object,
    ) -> None:
        if "lora" in types:
            self.s3pet_lora[adapter_name] = LowRank(
                self.in_features, self.out_features, rank, lora_alpha / rank, zero_init=init_weights
            )
        if "bitfit" in types:
            init = torch.zeros(self.out_features) if init_weights else torch.randn(self.out_features) * 0.02
            self.s3pet_bias[adapter_name] = nn.Parameter(init)
        if "lra" in types:
            self.s3pet_lra[adapter_name] = LowRankAdapter(self.out_features, lra_reduction, zero_init=init_weights)
        self._add_alpha(adapter_name, types, searching)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def unmergeable_parts(self, adapter_names: list[str]) -> list[str]:
        return [f"low-rank adapter[{n}]" for n in adapter_names if n in self.s3pet_lra]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self._base_output(x, *args, **kwargs)
        out_dtype = result.dtype
        sequential = []
        for name in self.active_adapters:
            if name not in self.merged_adapters:
                if name in self.s3pet_lora:
                    lora = self.s3pet_lora[name]
                    delta = lora(self._cast_input_dtype(x, lora.A.weight.dtype))
                    result = result + (self.gate(name, "lora") * delta).to(out_dtype)
                if name in self.s3pet_bias:
                    result = result + (self.gate(name, "bitfit") * self.s3pet_bias[name]).to(out_dtype)
            if name in self.s3pet_lra:
                sequential.append(name)
        for name in sequential:
            lra = self.s3pet_lra[name]
            result = result + (self.gate(name, "lra") * lra(result.to(lra.up_v.dtype))).to(out_dtype)
        return result

    def __repr__(self) -> str:
        return "s3pet." + super().__repr__()


class Norm(nn.Module, S3PETLayer):
    """Wraps a LayerNorm/RMSNorm-like module with an LNFit scale delta and a BitFit bias delta (per adapter)."""

    adapter_layer_names = ("s3pet_lnfit", "s3pet_bias", "s3pet_alpha")

    def __init__(self, base_layer: nn.Module, adapter_name: str, **parts) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.s3pet_lnfit = nn.ParameterDict()
        self.s3pet_bias = nn.ParameterDict()
        self.s3pet_alpha = nn.ParameterDict()
        self._init_gates()
        self.size = base_layer.weight.numel()
        self.update_layer(adapter_name, **parts)

    def update_layer(
        self, adapter_name: str, types: list[str], searching: bool = False, init_weights: bool = True, **_: object
    ) -> None:
        for kind, container in (("lnfit", self.s3pet_lnfit), ("bitfit", self.s3pet_bias)):
            if kind in types:
                init = torch.zeros(self.size) if init_weights else torch.randn(self.size) * 0.02
                container[adapter_name] = nn.Parameter(init)
        self._add_alpha(adapter_name, types, searching)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def unmergeable_parts(self, adapter_names: list[str]) -> list[str]:
        if getattr(self.base_layer, "bias", None) is not None:
            return []
        return [f"norm bias[{n}] (the norm has no bias)" for n in adapter_names if n in self.s3pet_bias]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = check_adapters_to_merge(self, adapter_names)
        self._check_mergeable(names)
        base = self.get_base_layer()
        for name in names:
            if name in self.s3pet_lnfit:
                base.weight.data += self.s3pet_lnfit[name].detach().to(base.weight.dtype).view_as(base.weight)
            if name in self.s3pet_bias and getattr(base, "bias", None) is not None:
                base.bias.data += self.s3pet_bias[name].detach().to(base.bias.dtype).view_as(base.bias)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.s3pet_lnfit:
                base.weight.data -= self.s3pet_lnfit[name].detach().to(base.weight.dtype).view_as(base.weight)
            if name in self.s3pet_bias and getattr(base, "bias", None) is not None:
                base.bias.data -= self.s3pet_bias[name].detach().to(base.bias.dtype).view_as(base.bias)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        base = self.get_base_layer()
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        overrides, extra_bias = {}, None
        for name in self.active_adapters:
            merged = name in self.merged_adapters
            if name in self.s3pet_lnfit and not merged:
                delta = self.gate(name, "lnfit") * self.s3pet_lnfit[name]
                overrides["weight"] = overrides.get("weight", base.weight) + delta.to(base.weight.dtype).view_as(
                    base.weight
                )
            if name in self.s3pet_bias and not (merged and getattr(base, "bias", None) is not None):
                # a bias delta on a bias-free norm is never merged: it stays a separate addition
                delta = self.gate(name, "bitfit") * self.s3pet_bias[name]
                if getattr(base, "bias", None) is not None:
                    overrides["bias"] = overrides.get("bias", base.bias) + delta.to(base.bias.dtype).view_as(base.bias)
                else:
                    extra_bias = delta if extra_bias is None else extra_bias + delta
        result = functional_call(base, overrides, (x, *args), kwargs) if overrides else base(x, *args, **kwargs)
        if extra_bias is not None:
            result = result + extra_bias.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "s3pet." + super().__repr__()
