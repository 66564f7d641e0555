"""Tuner layers of S3PET: the candidate (search) or kept (apply) delta modules of one linear or norm module.

```
                 ┌──────────────────────── s3pet.Linear ──────────────────────────┐
x ──► base(x) ──►(+ z_lora · LoRA(x))──►(+ z_bitfit · b)──► y ──►(+ z_lra · LRA(y))──► out
x ──► norm(x; w + z_lnfit · Δw, b + z_bitfit · Δb) ──► out                      s3pet.Norm
```

In search mode every part is multiplied by its gate `z` (set by the tuner before each forward, from the layer's
architecture parameters `s3pet_alpha[adapter]`, one per part in `TYPES` order); in apply mode `z = 1`. LoRA, BitFit and
LNFit are linear in their parameters and merge into the base weights; the low-rank adapter (LRA) does not.

The gates are folded where they cost least, not applied to full-size activations: bias deltas go into the base op's
bias (`F.linear(x, W, b + z·Δb)`, `F.layer_norm(x, …, w + z·Δw, b + z·Δb)`), and the LoRA and LRA gates scale their
rank-1 (or rank-r) intermediates, whose products are added with one `addmm`:
`y + z·s·B(A x) = addmm(y, z·s·(A x), Bᵀ)` and `y + z·(t v + c) = addmm(y, [z·t, z], [v; c])` with `t` the LRA's
rank-1 up-projection input. On a plain `nn.Linear` with a frozen weight, one adapter and one dtype (the usual case),
the whole layer is one autograd node, `FrozenLinearWithDeltas` (`fused.py`), whose backward pass adds the LoRA and
LRA terms of the input gradient in place instead of as full-size outer products. Same sums, another order: values
agree with the plain formulas to rounding (`tests/test_s3pet_numerics.py`).
"""

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn
from torch.func import functional_call

from .._layers import LinearDeltaMixin, PackTunerLayer, added, check_finite_deltas
from ..modules import LowRank, LowRankAdapter
from .fused import FrozenLinearWithDeltas
from .space import TYPES


class S3PETLayer(PackTunerLayer):
    """Common base of the S3PET layers: gates and the order of the parts of each adapter."""

    adapter_layer_names: tuple[str, ...] = ()

    def _init_gates(self) -> None:
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.part_types: dict[str, list[str]] = {}  # adapter -> its parts, in TYPES order (= the α order)
        # adapter -> part type -> gate (search mode), set by the tuner before each forward (samples when the model
        # is in train mode, p in eval mode), with this layer's mode at that time: a later call in the other mode is
        # a submodule called directly, which would silently reuse them
        self.gates: dict[str, dict[str, torch.Tensor]] = {}
        self.gates_drawn_training: dict[str, bool] = {}

    def _add_alpha(self, adapter_name: str, types: list[str], searching: bool) -> None:
        self.part_types[adapter_name] = sorted(
            set(self.part_types.get(adapter_name, [])) | set(types), key=TYPES.index
        )
        if searching:
            self.s3pet_alpha[adapter_name] = nn.Parameter(torch.zeros(len(self.part_types[adapter_name])))

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter's parts, α, part order and gates (so the name can be added again with other parts)."""
        super().delete_adapter(adapter_name)
        self.part_types.pop(adapter_name, None)
        self.gates.pop(adapter_name, None)
        self.gates_drawn_training.pop(adapter_name, None)

    def __getstate__(self) -> dict:
        # The gates belong to one forward and carry its autograd graph, which cannot be copied (`copy.deepcopy`
        # refuses non-leaf tensors). They are kept after the forward because the backward pass of non-reentrant
        # activation checkpointing replays the layer and reads them; a copy or pickle gets none, and the tuner sets
        # new ones on its next forward.
        state = nn.Module.__getstate__(self)
        state["gates"] = {}
        state["gates_drawn_training"] = {}
        return state

    def gate(self, adapter_name: str, kind: str) -> torch.Tensor | float:
        if adapter_name not in self.s3pet_alpha:
            return 1.0
        gates = self.gates.get(adapter_name)
        if gates is None:
            raise RuntimeError(
                "S3PET search gates were not set; run the model through its PeftModel, or call a submodule inside "
                "`with peft_model.base_model.gated_call(): ...`."
            )
        if self.gates_drawn_training.get(adapter_name) != self.training:
            # a submodule called directly after a forward of the whole model in the other mode: its gates would be
            # that forward's samples in eval mode (or p without noise in train mode), silently
            now, drawn = ("train", "an eval") if self.training else ("eval", "a train")
            raise RuntimeError(
                f"The S3PET search gates of adapter {adapter_name!r} were drawn for {drawn}-mode forward, but this "
                f"layer runs in {now} mode: a submodule was called directly. Call it inside "
                "`with peft_model.base_model.gated_call(): ...` (one draw for the call), or run the model through "
                "its PeftModel."
            )
        return gates[kind]

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
    __getstate__ = S3PETLayer.__getstate__  # nn.Module comes first in the bases

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
        lras = [f"low-rank adapter[{n}]" for n in adapter_names if n in self.s3pet_lra]
        return lras + self._unmergeable_biases(adapter_names)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        live = [n for n in self.active_adapters if n not in self.merged_adapters]
        bias_deltas = [self.gate(n, "bitfit") * self.s3pet_bias[n] for n in self._bias_delta_names()]
        loras = [(self.s3pet_lora[n], self.gate(n, "lora")) for n in live if n in self.s3pet_lora]
        lras = [(self.s3pet_lra[n], self.gate(n, "lra")) for n in self.active_adapters if n in self.s3pet_lra]
        if self._plain_base(args, kwargs):
            flat = x.reshape(-1, x.shape[-1])
            bias = self._folded_bias(bias_deltas)
            result = _fused_output(flat, self.base_layer.weight, bias, loras, lras)
            if result is not None:
                return result.view(*x.shape[:-1], result.shape[-1])
            result = self._folded_base_output(flat, bias, loras).view(*x.shape[:-1], -1)
        else:
            result = self._base_output(x, *args, **kwargs)
            for lora, gate in loras:
                inner = F.linear(self._cast_input_dtype(x, lora.A.weight.dtype), lora.A.weight)  # (..., r)
                result = _add_product(result, inner * (gate * lora.scaling), lora.B.weight.T)
            for delta in bias_deltas:
                result = result + delta.to(result.dtype)
        for lra, gate in lras:
            result = self._add_lra(result, lra, gate)
        return result

    def _plain_base(self, args: tuple, kwargs: dict) -> bool:
        """Whether the base layer may be computed as `F.linear` here: a plain `nn.Linear` without hooks or extras."""
        base = self.base_layer
        return (
            type(base) is nn.Linear
            and self.quantization_backend is None
            and not (args or kwargs or base._forward_hooks or base._forward_pre_hooks)
        )

    def _folded_bias(self, bias_deltas: list) -> torch.Tensor | None:
        """`b + Σ z·Δb`: the base bias with the (gated) bias deltas folded in."""
        base = self.base_layer
        bias = base.bias
        for delta in bias_deltas:
            delta = delta.to(base.weight.dtype)
            bias = delta if bias is None else bias + delta
        return bias

    def _folded_base_output(self, flat: torch.Tensor, bias: torch.Tensor | None, loras: list) -> torch.Tensor:
        """`W x + (b + Σ z·Δb) + Σ z·s·B(A x)` for 2-D `flat`: LoRA products added in place into the base product.

        The base product is a fresh tensor that no other op saved for backward, so adding into it is safe; the
        LoRA gate and scale multiply the rank-r intermediate, not the output. (Used where `_fused_output` does not
        apply: several adapters at once, mixed dtypes, autocast, or a base weight that is trained.)
        """
        result = F.linear(flat, self.base_layer.weight, bias)  # (tokens, out)
        for lora, gate in loras:
            inner = F.linear(self._cast_input_dtype(flat, lora.A.weight.dtype), lora.A.weight)  # (tokens, r)
            inner = inner * (gate * lora.scaling)
            if inner.dtype == result.dtype == lora.B.weight.dtype:
                result.addmm_(inner, lora.B.weight.T)
            else:
                result = result + (inner @ lora.B.weight.T).to(result.dtype)
        return result

    @staticmethod
    def _add_lra(result: torch.Tensor, lra: LowRankAdapter, gate: torch.Tensor | float) -> torch.Tensor:
        """`result + gate · lra(result)`, with the gate on the rank-1 input of the up projection."""
        h = result.to(lra.up_v.dtype)
        inner = F.gelu((h @ lra.down_u) @ lra.down_v + lra.down_bias, approximate="tanh") @ lra.up_u  # (..., 1)
        if not isinstance(gate, torch.Tensor):
            gate = torch.tensor(gate, dtype=inner.dtype, device=inner.device)
        gate = gate.to(inner.dtype)
        left = torch.cat([inner * gate, gate.expand_as(inner)], dim=-1)  # (..., 2): [z·t, z]
        return _add_product(result, left, torch.cat([lra.up_v, lra.up_bias[None]]))  # + z·(t v + c)

    def __repr__(self) -> str:
        return "s3pet." + super().__repr__()


class Norm(nn.Module, S3PETLayer):
    """Wraps a LayerNorm/RMSNorm-like module with an LNFit scale delta and a BitFit bias delta (per adapter)."""

    adapter_layer_names = ("s3pet_lnfit", "s3pet_bias", "s3pet_alpha")
    __getstate__ = S3PETLayer.__getstate__  # nn.Module comes first in the bases

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
        if safe_merge:
            check_finite_deltas(self._safe_merge_parts(names))
        for name in names:
            self._add_to_base(name, +1.0)
            self.merged_adapters.append(name)

    def _merging(self) -> list[tuple[str, nn.ParameterDict, str]]:
        """`(part, container, base attribute)` of what a merge adds into the norm (a bias delta only into a bias)."""
        parts = [("LNFit", self.s3pet_lnfit, "weight")]
        if getattr(self.get_base_layer(), "bias", None) is not None:
            parts.append(("bias", self.s3pet_bias, "bias"))
        return parts

    def _add_to_base(self, name: str, sign: float) -> None:
        base = self.get_base_layer()
        for _, container, attribute in self._merging():
            if name in container:
                tensor = getattr(base, attribute)
                tensor.data = added(tensor.data, container[name].view_as(tensor), sign)

    def _safe_merge_parts(self, names: list[str]) -> dict[str, dict[str, torch.Tensor | None]]:
        base, parts = self.get_base_layer(), {n: {} for n in names}
        for part, container, attribute in self._merging():
            merged = getattr(base, attribute).data
            for name in names:  # merged in turn, as `merge` does
                merged = added(merged, container[name].view_as(merged)) if name in container else merged
                parts[name][part] = merged if name in container else None
        return parts

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._add_to_base(self.merged_adapters.pop(), -1.0)

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
        if not overrides:
            result = base(x, *args, **kwargs)
        elif type(base) is nn.LayerNorm and not (args or kwargs):  # direct call: no parameter swap by functional_call
            weight, bias = overrides.get("weight", base.weight), overrides.get("bias", base.bias)
            result = F.layer_norm(x, base.normalized_shape, weight, bias, base.eps)
        else:
            result = functional_call(base, overrides, (x, *args), kwargs)
        if extra_bias is not None:
            result = result + extra_bias.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "s3pet." + super().__repr__()


def _add_product(result: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`result + left @ right` (`left` of shape `(..., k)`, `right` `(k, out)`) as one `addmm` when dtypes agree."""
    if result.dtype != left.dtype or right.dtype != left.dtype:
        return result + (left @ right).to(result.dtype)
    flat = torch.addmm(result.reshape(-1, result.shape[-1]), left.reshape(-1, left.shape[-1]), right)
    return flat.view(result.shape)


def _fused_output(
    flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, loras: list, lras: list
) -> torch.Tensor | None:
    """The layer's output from one `FrozenLinearWithDeltas` node, or `None` where the node does not apply.

    It applies to at most one LoRA and one adapter, a frozen base weight, one dtype throughout and no autocast.
    """
    if len(loras) > 1 or len(lras) > 1 or not (loras or lras):
        return None
    if weight.requires_grad or torch.is_autocast_enabled(flat.device.type):
        return None
    lora_parts, lora_gate = [None] * 2, None
    if loras:
        lora, gate = loras[0]
        lora_parts, lora_gate = [lora.A.weight, lora.B.weight], gate * lora.scaling
    lra_parts, lra_gate = [None] * 6, None
    if lras:
        lra, lra_gate = lras[0]
        lra_parts = [lra.down_u, lra.down_v, lra.down_bias, lra.up_u, lra.up_v, lra.up_bias]
    if any(t is not None and t.dtype != flat.dtype for t in (weight, bias, *lora_parts, *lra_parts)):
        return None
    return FrozenLinearWithDeltas.apply(flat, weight, bias, *lora_parts, lora_gate, *lra_parts, lra_gate)
