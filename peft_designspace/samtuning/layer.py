"""The tuner layer of SAM sparse tuning: sparse deltas (int32 flat indices + values) on a module's weight and bias.

```
linear (float):      y = x (W + ΔW)ᵀ + (b + Δb)      one matmul; W + ΔW exists only inside the op (ops.py)
linear (quantized):  y = base(x) + x ΔWᵀ + Δb        the base layer is left alone (bitsandbytes, ...)
embedding:           y = base(ids) + ΔE[ids]          rows gathered from the sparse delta
norm:                y = norm(x; w + Δw, b + Δb)     small vectors, applied through `functional_call`
```

Each adapter owns `samtuning_{weight,bias}_values[adapter]` (trainable, 1-D) and
`samtuning_{weight,bias}_indices[adapter]` (persistent int32 buffers, sorted flat indices into the stored tensor).
Entries outside the indices have no parameter at all, so they cannot drift (weight decay included).
"""

import warnings

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import check_adapters_to_merge
from peft.utils.quantization_utils import resolve_quantization_backend
from torch import nn
from torch.func import functional_call

from .._layers import PackTunerLayer, base_weight, check_finite_deltas
from ..architecture import is_linear, is_norm, linear_features
from .ops import (
    GradProbe,
    SparsePattern,
    dense_vector_delta,
    fused_sparse_linear,
    gather_rows_delta,
    sparse_delta_matmul,
)

PARTS = ("weight", "bias")


def module_kind(module: nn.Module) -> str | None:
    """`"linear"`, `"embedding"`, `"norm"` or `None` for modules SAM cannot target."""
    if is_linear(module):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if is_norm(module):
        return "norm"
    return None


class SAMTuningLayer(nn.Module, PackTunerLayer):
    """Wraps a linear-like, embedding or norm module with one sparse delta per adapter on its weight (and bias).

    Args:
        base_layer (`nn.Module`): the wrapped module.
        adapter_name (`str`): the first adapter.
        **kwargs: forwarded to [`~SAMTuningLayer.update_layer`].
    """

    adapter_layer_names = ("samtuning_weight_values", "samtuning_bias_values")
    other_param_names = ("samtuning_weight_indices", "samtuning_bias_indices")

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.kind = module_kind(base_layer)
        if self.kind is None:
            raise TypeError(
                f"SAM tuning cannot target a {type(base_layer).__name__}: only linear, embedding and norm."
            )
        self.samtuning_weight_values = nn.ParameterDict()
        self.samtuning_bias_values = nn.ParameterDict()
        self.samtuning_weight_indices = BufferDict(persistent=True)
        self.samtuning_bias_indices = BufferDict(persistent=True)
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self._merge_saved: dict[str, dict[str, torch.Tensor]] = {}
        self._patterns: dict[tuple[str, str], tuple[tuple, SparsePattern]] = {}
        self.quantization_backend = resolve_quantization_backend(base_layer) if self.kind == "linear" else None
        self.transposed = type(base_layer).__name__ == "Conv1D"  # GPT-2 stores (in, out)
        self.tied = False  # set by the model when the weight is shared with another module (tied embeddings)
        self.probe = None  # set by `calibrate_sam` while it runs
        self.placeholders: set[str] = set()  # adapters whose indices are placeholders, not a selection
        self.register_load_state_dict_pre_hook(_selection_loaded)
        self.update_layer(adapter_name, **kwargs)

    # shapes ------------------------------------------------------------------------------------------------------
    def stored_shape(self, part: str) -> tuple[int, int]:
        """The tensor's shape seen as 2-D `(rows, cols)` in storage order (1-D tensors are one row)."""
        base = self.get_base_layer()
        if part == "weight":
            if self.kind == "linear":
                in_f, out_f = linear_features(base)
                return (in_f, out_f) if self.transposed else (out_f, in_f)
            if self.kind == "embedding":
                return (base.num_embeddings, base.embedding_dim)
            return (1, base.weight.numel())
        return (1, base.bias.numel())

    def numel(self, part: str) -> int:
        rows, cols = self.stored_shape(part)
        return rows * cols

    def update_layer(
        self,
        adapter_name: str,
        weight_nnz: int = 0,
        bias_nnz: int | None = None,
        generator: torch.Generator | None = None,
        init_weights: bool = True,
        **_: object,
    ) -> None:
        """Allocate the values and indices of one adapter.

        With `init_weights=True` the values are zeros (the model is unchanged) and the indices are placeholders until
        `calibrate_sam` (or loading a saved adapter) fills them. With `init_weights=False` the entries are drawn at
        random (from `generator`) with non-zero values: for tests only.
        """
        for part, nnz in (("weight", weight_nnz), ("bias", bias_nnz)):
            if nnz is None:
                continue
            numel = self.numel(part)
            if init_weights:
                flat = torch.arange(nnz, dtype=torch.int32)
                values = torch.zeros(nnz)
            else:
                flat = torch.randperm(numel, generator=generator)[:nnz].sort().values.to(torch.int32)
                values = torch.randn(nnz, generator=generator) * 0.1
            getattr(self, f"samtuning_{part}_values")[adapter_name] = nn.Parameter(values)
            getattr(self, f"samtuning_{part}_indices")[adapter_name] = flat
        if init_weights:
            self.placeholders.add(adapter_name)
        else:
            self.placeholders.discard(adapter_name)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def set_selection(self, adapter_name: str, part: str, flat: torch.Tensor) -> None:
        """Install a new selection (sorted flat indices) for one part, with zero values.

        The values `nn.Parameter` object is kept and resized in place, so an optimizer that already holds it (and has
        no state for it yet) keeps working.
        """
        values = getattr(self, f"samtuning_{part}_values")[adapter_name]
        indices = getattr(self, f"samtuning_{part}_indices")
        with torch.no_grad():
            values.data = torch.zeros(flat.numel(), dtype=values.dtype, device=values.device)
        indices[adapter_name] = flat.to(device=values.device, dtype=torch.int32).contiguous()
        self._patterns.pop((adapter_name, part), None)
        self.placeholders.discard(adapter_name)

    def holds_placeholder(self, adapter_name: str) -> bool:
        """Whether the adapter's weight indices here are still the placeholders `update_layer` made (0, 1, ...).

        Placeholders are marked when made and unmarked by calibration and by `load_state_dict` (PEFT's loaders use
        it). transformers' `load_adapter` sets the tensors another way, so a marked layer whose indices no longer
        read 0, 1, ... counts as loaded too (through that loader, a real selection of exactly the first entries of
        every marked layer would still read as placeholders). A layer without entries holds nothing either way, and
        one whose entries are all of its weight holds the same selection either way. Values are not looked at: an
        adapter trained without calibration still holds placeholders.
        """
        if adapter_name not in self.placeholders:
            return False
        flat = self.samtuning_weight_indices[adapter_name]
        if not 0 < flat.numel() < self.numel("weight"):  # nothing, or all of the weight: the same either way
            return False
        return torch.equal(flat, torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device))

    def pattern(self, adapter_name: str, part: str) -> SparsePattern:
        """The (cached) CSR structures of one part; rebuilt when its index buffer changes."""
        flat = getattr(self, f"samtuning_{part}_indices")[adapter_name]
        key = (flat.data_ptr(), flat._version, flat.numel(), flat.device)
        cached = self._patterns.get((adapter_name, part))
        if cached is None or cached[0] != key:
            cached = (key, SparsePattern.from_flat(flat, self.stored_shape(part)))
            self._patterns[(adapter_name, part)] = cached
        return cached[1]

    def _active_parts(self, part: str) -> list[str]:
        values = getattr(self, f"samtuning_{part}_values")
        return [a for a in self.active_adapters if a in values and a not in self.merged_adapters]

    # merging ------------------------------------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the deltas of the active (or given) adapters into the base tensors; only selected entries change."""
        if self.tied:
            raise ValueError(
                "Cannot merge a SAM delta into a tied embedding weight (the output projection shares it, so the "
                "merged model would differ); keep the adapter unmerged or untie the weights first."
            )
        self._check_backend_merges()
        names = check_adapters_to_merge(self, adapter_names)
        if safe_merge:  # every part of every adapter first, so that a refusal leaves the base tensors untouched
            check_finite_deltas(self._safe_merge_parts(names))
        for name in names:
            saved = {}
            for part in PARTS:
                vals = self._values(part, name)
                if vals is None:
                    continue
                flat = getattr(self, f"samtuning_{part}_indices")[name].long()
                tensor = self._base_tensor(part)
                saved[part] = tensor.view(-1)[flat].clone()
                tensor.view(-1).index_add_(0, flat, vals.to(tensor.dtype))
                self._set_base_tensor(part, tensor)
            self._merge_saved[name] = saved
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo [`~SAMTuningLayer.merge`], restoring the merged entries' original values (exactly on float weights; a
        bitsandbytes weight is quantized again, which rounds the whole tensor)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            for part, original in self._merge_saved.pop(name).items():
                flat = getattr(self, f"samtuning_{part}_indices")[name].long()
                tensor = self._base_tensor(part)
                tensor.view(-1)[flat] = original.to(tensor.dtype)
                self._set_base_tensor(part, tensor)

    def _safe_merge_parts(self, names: list[str]) -> dict[str, dict[str, torch.Tensor | None]]:
        """The merged entries of every part, in the base's dtype (so an overflow of a float16 weight is caught)."""
        self._check_backend_merges()  # before reading the base tensors, which such a backend cannot give
        parts = {n: {} for n in names}
        for part in PARTS:
            merged = None  # the entries of the base tensor the adapters touch, merged in turn as `merge` does
            for name in names:
                vals = self._values(part, name)
                if vals is None:
                    parts[name][part] = None
                    continue
                if merged is None:
                    merged = self._base_tensor(part).reshape(-1).clone()
                flat = getattr(self, f"samtuning_{part}_indices")[name].long()
                merged.index_add_(0, flat, vals.to(merged.dtype))
                parts[name][part] = merged[flat]
        return parts

    def _values(self, part: str, name: str) -> torch.Tensor | None:
        values = getattr(self, f"samtuning_{part}_values")
        return values[name].detach() if name in values else None

    def _base_tensor(self, part: str) -> torch.Tensor:
        if part == "weight":
            return base_weight(self) if self.kind == "linear" else self.get_base_layer().weight.data
        return self.get_base_layer().bias.data

    def _set_base_tensor(self, part: str, tensor: torch.Tensor) -> None:
        if part == "weight" and self.kind == "linear":
            self.set_base_weight(tensor)

    # forward ------------------------------------------------------------------------------------------------------
    def _can_fuse(self, base: nn.Module) -> bool:
        return (
            self.quantization_backend is None
            and base.weight.dtype.is_floating_point
            and not base._forward_hooks
            and not base._forward_pre_hooks
            and (type(base) is nn.Linear or self.transposed)
        )

    def _bias_delta(self, adapters: list[str], size: int, dtype: torch.dtype) -> torch.Tensor | None:
        total = None
        for name in adapters:
            delta = dense_vector_delta(self.pattern(name, "bias"), self.samtuning_bias_values[name], size).to(dtype)
            total = delta if total is None else total + delta
        return total

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.probe is not None:
            return self.probe(self, x, *args, **kwargs)
        weight_adapters, bias_adapters = self._active_parts("weight"), self._active_parts("bias")
        if not weight_adapters and not bias_adapters:
            return self.base_layer(x, *args, **kwargs)
        if self.kind == "linear":
            return self._forward_linear(x, weight_adapters, bias_adapters, *args, **kwargs)
        if self.kind == "embedding":
            result = self.base_layer(x, *args, **kwargs)
            base = self.get_base_layer()
            for name in weight_adapters:
                delta = gather_rows_delta(
                    x, self.pattern(name, "weight"), self.samtuning_weight_values[name], base.embedding_dim
                )
                scale = self._get_embed_scale()
                result = result + (delta if scale is None else delta * scale).to(result.dtype)
            return result
        base = self.get_base_layer()  # norm
        overrides = {}
        for part, adapters in (("weight", weight_adapters), ("bias", bias_adapters)):
            if adapters:
                tensor = getattr(base, part)
                delta = None
                for name in adapters:
                    values = getattr(self, f"samtuning_{part}_values")[name]
                    d = dense_vector_delta(self.pattern(name, part), values, tensor.numel()).view_as(tensor)
                    delta = d if delta is None else delta + d
                overrides[part] = tensor + delta.to(tensor.dtype)
        return functional_call(base, overrides, (x, *args), kwargs)

    def _forward_linear(self, x, weight_adapters, bias_adapters, *args, **kwargs) -> torch.Tensor:
        base = self.get_base_layer()
        patterns = [self.pattern(n, "weight") for n in weight_adapters]
        values = [self.samtuning_weight_values[n] for n in weight_adapters]
        out_features = self.stored_shape("weight")[1 if self.transposed else 0]
        if self._can_fuse(base) and not args and not kwargs:
            bias = base.bias
            delta_b = self._bias_delta(bias_adapters, out_features, base.weight.dtype) if bias_adapters else None
            if delta_b is not None:
                bias = delta_b if bias is None else bias + delta_b
            return fused_sparse_linear(x.to(base.weight.dtype), base.weight, bias, patterns, values, self.transposed)
        result = self.base_layer(x, *args, **kwargs)
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)
        if weight_adapters:
            result = result + sparse_delta_matmul(x, patterns, values, self.transposed).to(result.dtype)
        if bias_adapters:
            result = result + self._bias_delta(bias_adapters, out_features, result.dtype)
        return result

    def __repr__(self) -> str:
        return "samtuning." + super().__repr__()


def probe_forward(anchor: torch.Tensor, sinks: dict[str, object], leaves: dict[str, torch.Tensor]):
    """A `probe` for calibration: the base output, unchanged, with a way to read the gradient of the layer's tensors.

    With `leaves` (zero tensors shaped like the targeted parts, requiring grad) the layer runs through
    `functional_call` with `tensor + leaf`, so autograd gives the leaf gradients (norms always; every layer for the
    Hutchinson curvature, which needs a differentiable gradient). Otherwise `sinks[part](grad)` receives the float32
    gradient of the stored tensor from a `GradProbe`, one batch (or part of one) at a time.
    """

    def probe(layer: SAMTuningLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = layer.get_base_layer()
        if leaves:
            overrides = {
                part: getattr(base, part) + leaf.to(getattr(base, part).dtype) for part, leaf in leaves.items()
            }
            return functional_call(base, overrides, (x, *args), kwargs)
        out = layer.base_layer(x, *args, **kwargs)

        def sink(grad_out: torch.Tensor, inp: torch.Tensor) -> None:
            g2 = grad_out.reshape(-1, grad_out.shape[-1]).float()
            if layer.kind == "embedding":
                scale = layer._get_embed_scale()
                g2 = g2 if scale is None else g2 * float(scale)
                grad = torch.zeros(layer.stored_shape("weight"), device=g2.device).index_add_(0, inp.reshape(-1), g2)
                if base.padding_idx is not None:  # the base embedding never updates its padding row either
                    grad[base.padding_idx] = 0
                sinks["weight"](grad)
                return
            x2 = inp.reshape(-1, inp.shape[-1]).float()
            sinks["weight"](x2.T @ g2 if layer.transposed else g2.T @ x2)
            if "bias" in sinks:
                sinks["bias"](g2.sum(0).unsqueeze(0))

        return GradProbe.apply(out, x, anchor, sink)

    return probe


def _selection_loaded(module: SAMTuningLayer, state_dict: dict, prefix: str, *args) -> None:
    """`load_state_dict` pre-hook: the adapters whose weight indices are being loaded hold a selection from then on
    (any loader: PEFT's, transformers' `load_adapter`, a plain `load_state_dict`).

    Whatever the indices read: a real selection can be the first entries of a layer (top-k breaks ties towards the
    lower index), and a saved adapter always holds one (saving an uncalibrated adapter is refused). Only a raw
    `state_dict()` of an uncalibrated adapter carries placeholders, and loading it marks them as a selection.
    """
    for name in list(module.placeholders):
        if f"{prefix}samtuning_weight_indices.{name}" in state_dict:
            module.placeholders.discard(name)
