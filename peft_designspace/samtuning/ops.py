"""Autograd operations of SAM sparse tuning: a weight delta held as (flat indices, values) per adapter.

Two ways to apply `W + ΔW` in a linear layer, both keeping only the layer input for backward (never a dense
weight-sized tensor; the base weight, the values and the index buffers are the layer's own tensors):

- `fused_sparse_linear` (plain floating-point `nn.Linear` / GPT-2 `Conv1D`): forward builds `W + ΔW` in a scratch
  buffer, runs one matmul and frees it; backward rebuilds it for the input gradient. The values' gradient is the
  sampled product `(∂L/∂y)ᵀ x` at the selected entries only (`torch.sparse.sampled_addmm`). Cost over the frozen base
  layer: two scatter-adds and one sampled product.
- `sparse_delta_matmul` (any base layer, e.g. bitsandbytes 8/4-bit): `base(x)` is left alone and `x @ ΔWᵀ` is
  added through sparse CSR matmuls, in float32.

`GradProbe` is the calibration hook: an identity on the layer output whose backward hands `∂L/∂y` and `x` to a sink
that accumulates the dense weight gradient of one layer at a time.
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # torch warns once per process that CSR support is "in beta"; the ops used here are tested against dense ones
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass
class SparsePattern:
    """Index structures of one sparse delta over a weight stored as `(rows, cols)` (row-major flat indices).

    Args:
        flat (`torch.Tensor`): sorted int32 flat indices into the stored weight.
        crow (`torch.Tensor`): int32 CSR row pointers (`rows + 1`).
        col (`torch.Tensor`): int32 CSR column indices.
        shape (`tuple[int, int]`): the stored weight's shape.
    """

    flat: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    shape: tuple[int, int]
    _transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_flat(cls, flat: torch.Tensor, shape: tuple[int, int]) -> "SparsePattern":
        rows, cols = shape
        flat64 = flat.long()
        row = torch.div(flat64, cols, rounding_mode="floor")
        crow = torch.zeros(rows + 1, dtype=torch.int32, device=flat.device)
        crow[1:] = torch.bincount(row, minlength=rows).cumsum(0)
        return cls(flat=flat, crow=crow, col=(flat64 % cols).to(torch.int32), shape=(rows, cols))

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow, self.col, values, self.shape)

    def transposed_csr(self, values: torch.Tensor) -> torch.Tensor:
        """The CSR of the transposed matrix (`(cols, rows)`), with `values` permuted accordingly."""
        if self._transposed is None:
            rows, cols = self.shape
            flat64 = self.flat.long()
            row, col = torch.div(flat64, cols, rounding_mode="floor"), flat64 % cols
            perm = torch.argsort(col * rows + row)
            tcrow = torch.zeros(cols + 1, dtype=torch.int32, device=self.flat.device)
            tcrow[1:] = torch.bincount(col, minlength=cols).cumsum(0)
            self._transposed = (tcrow, row[perm].to(torch.int32), perm)
        tcrow, tcol, perm = self._transposed
        return _csr(tcrow, tcol, values[perm], (self.shape[1], self.shape[0]))

    def sampled(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """`(left @ right)` at the pattern's entries, in flat order; `left` is `(rows, n)`, `right` `(n, cols)`."""
        if self.flat.numel() == 0:
            return left.new_zeros(0)
        pattern = self.csr(torch.zeros(self.flat.numel(), dtype=left.dtype, device=left.device))
        return torch.sparse.sampled_addmm(pattern, left, right, beta=0.0).values()


def _with_deltas(
    weight: torch.Tensor, patterns: list[SparsePattern], values: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    merged = weight.detach().clone()
    flat = merged.view(-1)
    for pattern, vals in zip(patterns, values):
        flat.index_add_(0, pattern.flat, vals.detach().to(merged.dtype))
    return merged


class _FusedSparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, patterns, transposed, *values):
        merged = _with_deltas(weight, patterns, values)
        out = F.linear(x, merged.T if transposed else merged, bias)
        ctx.patterns, ctx.transposed = patterns, transposed
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(x, weight, *values)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, *values = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            # Under autocast the forward's product ran in the autocast dtype, so `grad_out` comes in that dtype
            # (backward runs outside autocast): the input gradient is computed in it too, as autocast's own
            # linear backward does, and returned in the input's dtype.
            merged = _with_deltas(weight, ctx.patterns, values).to(grad_out.dtype)
            grad_x = (grad_out @ (merged.T if ctx.transposed else merged)).to(x.dtype)
            del merged
        grad_bias = None
        if ctx.needs_input_grad[2]:  # the bias carries the bias deltas' gradient (base bias + Δb)
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=_wide(grad_out)).to(ctx.bias_dtype)
        grads = [None] * len(values)  # one per values tensor, also when none needs one (frozen adapter, input grad)
        wanted = ctx.needs_input_grad[5:]
        if any(wanted):
            wide = _wide(grad_out, x)
            g2 = grad_out.reshape(-1, grad_out.shape[-1]).to(wide)
            x2 = x.reshape(-1, x.shape[-1]).to(wide)
            left, right = (x2.T, g2) if ctx.transposed else (g2.T, x2)
            grads = [
                p.sampled(left, right).to(v.dtype) if want else None
                for p, v, want in zip(ctx.patterns, values, wanted)
            ]
        return (grad_x, None, grad_bias, None, None, *grads)


def fused_sparse_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patterns: list[SparsePattern],
    values: list[torch.Tensor],
    transposed: bool = False,
) -> torch.Tensor:
    """`F.linear(x, W + Σ ΔW_a, bias)` with each `ΔW_a` given by `patterns[a]` and `values[a]`.

    Args:
        x (`torch.Tensor`): input `(..., in)`.
        weight (`torch.Tensor`): the stored base weight, `(out, in)`, or `(in, out)` when `transposed` (Conv1D).
        bias (`torch.Tensor`, *optional*): the base bias (plus any bias delta), `(out,)`.
        patterns (`list[SparsePattern]`): index structures of each delta over the stored weight.
        values (`list[torch.Tensor]`): the trainable values of each delta.
        transposed (`bool`): the weight is stored `(in, out)`.

    Example:

    ```py
    >>> w, v = torch.zeros(3, 2), torch.ones(1, requires_grad=True)
    >>> pattern = SparsePattern.from_flat(torch.tensor([1], dtype=torch.int32), (3, 2))  # entry (0, 1)
    >>> fused_sparse_linear(torch.ones(1, 2), w, None, [pattern], [v]).tolist()
    [[1.0, 0.0, 0.0]]
    ```
    """
    return _FusedSparseLinear.apply(x, weight, bias, patterns, transposed, *values)


def _wide(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype sparse products run in: float32, or wider when an input is (float64 stays float64)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _SparseDeltaMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, patterns, transposed, *values):
        wide = _wide(x, *values)
        x2 = x.reshape(-1, x.shape[-1]).to(wide)
        out = None
        # float32 at least: under autocast the CSR products would run in bfloat16, which the sparse kernels lack
        with torch.autocast(x.device.type, enabled=False):
            for pattern, vals in zip(patterns, values):
                # ΔW stored (out, in): x ΔWᵀ = (ΔW xᵀ)ᵀ;  stored (in, out) (Conv1D): x ΔW = (ΔWᵀ xᵀ)ᵀ
                matrix = pattern.transposed_csr(vals.to(wide)) if transposed else pattern.csr(vals.to(wide))
                part = (matrix @ x2.T).T
                out = part if out is None else out + part
        ctx.patterns, ctx.transposed = patterns, transposed
        ctx.save_for_backward(x, *values)
        return out.reshape(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _SparseDeltaMatmul._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        x, *values = ctx.saved_tensors
        wide = _wide(grad_out, x, *values)
        g2 = grad_out.reshape(-1, grad_out.shape[-1]).to(wide)
        x2 = x.reshape(-1, x.shape[-1]).to(wide)
        grad_x = None
        if ctx.needs_input_grad[0]:
            for pattern, vals in zip(ctx.patterns, values):
                matrix = pattern.csr(vals.to(wide)) if ctx.transposed else pattern.transposed_csr(vals.to(wide))
                part = (matrix @ g2.T).T
                grad_x = part if grad_x is None else grad_x + part
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        left, right = (x2.T, g2) if ctx.transposed else (g2.T, x2)
        grads = [p.sampled(left, right).to(v.dtype) for p, v in zip(ctx.patterns, values)]
        return (grad_x, None, None, *grads)


def sparse_delta_matmul(
    x: torch.Tensor, patterns: list[SparsePattern], values: list[torch.Tensor], transposed: bool = False
) -> torch.Tensor:
    """`Σ_a x @ ΔW_aᵀ` (float32), for adding to the output of a base layer that is left untouched (e.g. quantized).

    Example:

    ```py
    >>> v = torch.ones(1, requires_grad=True)
    >>> pattern = SparsePattern.from_flat(torch.tensor([1], dtype=torch.int32), (3, 2))  # entry (0, 1)
    >>> sparse_delta_matmul(torch.ones(1, 2), [pattern], [v]).tolist()
    [[1.0, 0.0, 0.0]]
    ```
    """
    return _SparseDeltaMatmul.apply(x, patterns, transposed, *values)


class GradProbe(torch.autograd.Function):
    """Identity on `y` whose backward calls `sink(grad_y, x)`; `anchor` (a scalar requiring grad) makes `y` part of
    the graph even when the whole model is frozen."""

    @staticmethod
    def forward(ctx, y, x, anchor, sink):
        ctx.sink = sink
        ctx.save_for_backward(x)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        ctx.sink(grad_y, x)
        return grad_y, None, None, None


def gather_rows_delta(ids: torch.Tensor, pattern: SparsePattern, values: torch.Tensor, dim: int) -> torch.Tensor:
    """`ΔE[ids]` for a sparse embedding delta `ΔE` (`(vocab, dim)`), without building `ΔE`: `(*ids.shape, dim)`.

    Differentiable in `values`; memory is proportional to the number of selected entries in the looked-up rows.
    """
    flat_ids = ids.reshape(-1).long()
    crow = pattern.crow.long()
    start = crow[flat_ids]
    counts = crow[flat_ids + 1] - start
    token = torch.repeat_interleave(torch.arange(flat_ids.numel(), device=ids.device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    entry = start[token] + torch.arange(token.numel(), device=ids.device) - offsets[token]
    out = values.new_zeros(flat_ids.numel(), dim)
    out = out.index_put((token, pattern.col[entry].long()), values[entry], accumulate=True)
    return out.reshape(*ids.shape, dim)


def dense_vector_delta(pattern: SparsePattern, values: torch.Tensor, size: int) -> torch.Tensor:
    """A small dense vector (bias or norm weight sized) holding `values` at the pattern's entries."""
    return values.new_zeros(size).index_add(0, pattern.flat, values)
