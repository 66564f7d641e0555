"""One autograd node for a frozen linear with its gated S3PET deltas (LoRA, bias, low-rank adapter after it).

```
y   = x Wᵀ + b + c · (x Aᵀ) Bᵀ                      linear, bias (deltas folded into `b`), LoRA (c = gate · scale)
s   = y u_d,  t = gelu(s v_d + b_d) u_u               the low-rank adapter (LRA) on the linear's output
out = y + z · (t v_u + c_u)                           z: the LRA's gate
```

Built from autograd's own nodes, this costs several full-size passes per candidate: `x`'s gradient through `A` and
`y`'s gradient through the adapter are written as full outer products, then added to the main gradients; `y` is saved
for the adapter's backward. This node never forms `∂L/∂y`: with `G = ∂L/∂out` and `g_s = ∂L/∂s` (one column),
`∂L/∂y = G + g_s u_dᵀ`, and every product with it is split into a product with `G` plus a rank-1 term:

- `∂L/∂x = G W + g_s (u_dᵀ W) + (c ∂L/∂(xAᵀ)) A`: one GEMM, then the rank-`1 + r` terms added in place;
- the thin products `[t, 1, c xAᵀ]ᵀ G` are one GEMM, and the rank-`k` updates one `addmm_` each;
- `∂L/∂u_d = yᵀ g_s = W (xᵀ g_s) + b Σg_s + B ((c xAᵀ)ᵀ g_s)`, so `y` is not saved;
- only the gradients autograd asks for are computed (`ctx.needs_input_grad`): the first-order α pass of the search
  wants the gates' and `x`'s only.

Same sums as the plain formulas, in the same precision; `tests/test_s3pet_numerics.py` compares both in float64 and
runs `torch.autograd.gradcheck` on this node. `W` is frozen (callers fall back to plain autograd when it is not).
"""

import torch
from torch.autograd.function import once_differentiable

_LORA = slice(3, 6)  # positions of (A, B, c) in the inputs
_LRA = slice(6, 13)  # positions of (u_d, v_d, b_d, u_u, v_u, c_u, z)


class FrozenLinearWithDeltas(torch.autograd.Function):
    """`out` of the module docstring for 2-D `x` of shape `(tokens, in)` and a frozen `W` of shape `(out, in)`.

    Inputs, in order: `x, W, b, A, B, c, u_d, v_d, b_d, u_u, v_u, c_u, z`. `b` may be `None`; the LoRA part
    `(A, B, c)` and the adapter part `(u_d, …, z)` may each be all `None`. `c` and `z` are 0-d tensors or floats.

    Example:

    ```py
    >>> x, w, a, b = torch.randn(5, 4), torch.randn(3, 4), torch.randn(1, 4), torch.randn(3, 1)
    >>> y = FrozenLinearWithDeltas.apply(x, w, None, a, b, 0.5, *[None] * 7)
    >>> torch.allclose(y, x @ w.T + 0.5 * (x @ a.T) @ b.T)
    True
    ```
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, coef, down_u, down_v, down_bias, up_u, up_v, up_bias, gate):
        result = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
        ctx.has_lora, ctx.has_lra = lora_a is not None, down_u is not None
        inner = scaled = s = a = g = t = None
        if ctx.has_lora:
            inner = torch.mm(x, lora_a.t())  # (tokens, r)
            scaled = inner * coef
            result.addmm_(scaled, lora_b.t())
        if ctx.has_lra:
            s = torch.mm(result, down_u)  # (tokens, 1)
            a = torch.addmm(down_bias, s, down_v)  # (tokens, hidden)
            g = torch.nn.functional.gelu(a, approximate="tanh")  # gelu_new, as the paper's LRA
            t = torch.mm(g, up_u)  # (tokens, 1)
            left = torch.cat([t, torch.ones_like(t)], dim=1) * gate
            result.addmm_(left, torch.cat([up_v, up_bias[None]]))
        ctx.scalars = tuple(None if isinstance(v, torch.Tensor) else v for v in (coef, gate))
        needs = ctx.needs_input_grad
        ctx.save_for_backward(
            x if needs[3] or needs[6] else None, weight, bias if needs[6] else None,  # x, b: for ∂A and ∂u_d only
            lora_a, lora_b, *(v if isinstance(v, torch.Tensor) else None for v in (coef, gate)),
            inner, scaled, down_u, down_v, up_u, up_v, up_bias, s, a, g, t,
        )  # fmt: skip
        return result

    @staticmethod
    @once_differentiable  # double backward is not needed (S3PET's second order uses finite differences)
    def backward(ctx, grad):
        x, weight, bias, lora_a, lora_b, coef, gate, inner, scaled, *rest = ctx.saved_tensors
        down_u, down_v, up_u, up_v, up_bias, s, a, g, t = rest
        coef = ctx.scalars[0] if coef is None else coef
        gate = ctx.scalars[1] if gate is None else gate
        needs = ctx.needs_input_grad
        need_x, need_bias = needs[0], needs[2]
        need_lora, need_lra = any(needs[_LORA]), any(needs[_LRA])
        grads = [None] * 13
        grad = grad.contiguous()

        # G times thin right factors: separate matrix-vector products (as fast as one thin GEMM on CPU, see below)
        grad_s = None
        if ctx.has_lra and (need_x or need_lora or need_lra or need_bias):  # the bias reaches the LRA through y
            grad_t = grad @ up_v.t()  # ∂L/∂(z t)
            if needs[12]:
                grads[12] = ((grad_t * t).sum() + (grad @ up_bias).sum()).reshape(gate.shape)
            grad_t = grad_t * gate
            grads[9] = g.t() @ grad_t if needs[9] else None
            grad_a = torch.ops.aten.gelu_backward(grad_t @ up_u.t(), a, approximate="tanh")
            grads[8] = grad_a.sum(0) if needs[8] else None
            grads[7] = s.t() @ grad_a if needs[7] else None
            grad_s = grad_a @ down_v.t()  # (tokens, 1): ∂L/∂s

        # thin left factors times G, in one GEMM: [t, 1 | scaled]ᵀ G
        rows = []
        if ctx.has_lra and (needs[10] or needs[11] or need_bias):
            rows += [t, torch.ones_like(t)]
        elif need_bias:
            rows += [torch.ones_like(grad[:, :1])]
        lora_rows = len(rows)
        if ctx.has_lora and needs[4]:
            rows.append(scaled)
        tall = torch.cat(rows, dim=1).t() @ grad if rows else None  # (k, out)
        if ctx.has_lra:
            grads[10] = tall[:1] * gate if needs[10] else None
            grads[11] = tall[1] * gate if needs[11] else None
        if need_bias:
            grad_bias = tall[lora_rows - 1]  # Σ G
            grads[2] = grad_bias if grad_s is None else grad_bias + down_u[:, 0] * grad_s.sum()

        grad_scaled = None
        if ctx.has_lora and (need_x or need_lora):
            grad_scaled = _times_thin(grad, lora_b)
            if grad_s is not None:
                grad_scaled = grad_scaled + grad_s @ (down_u.t() @ lora_b)
            grads[5] = (grad_scaled * inner).sum().reshape(coef.shape) if needs[5] else None
            grad_scaled = grad_scaled * coef  # now ∂L/∂(x Aᵀ)
            if needs[4]:
                grad_b = tall[lora_rows:].t()
                grads[4] = grad_b if grad_s is None else grad_b + down_u @ (grad_s.t() @ scaled)

        if need_x:
            grad_x = torch.mm(grad, weight)
            left, right = [], []
            if grad_s is not None:
                left.append(grad_s)
                right.append(down_u.t() @ weight)
            if grad_scaled is not None:
                left.append(grad_scaled)
                right.append(lora_a)
            if left:
                grad_x.addmm_(torch.cat(left, dim=1), torch.cat(right))
            grads[0] = grad_x

        if needs[3] or needs[6]:  # products with x, in one pass: [∂L/∂(xAᵀ) | g_s]ᵀ x
            left = ([grad_scaled] if needs[3] else []) + ([grad_s] if needs[6] else [])
            with_x = torch.cat(left, dim=1).t() @ x
            if needs[3]:
                grads[3] = with_x[: lora_a.shape[0]]
            if needs[6]:  # yᵀ g_s without y: W (xᵀ g_s) + b Σg_s + B (scaledᵀ g_s)
                grad_u = weight @ with_x[-1:].t()
                if bias is not None:
                    grad_u.add_(bias[:, None] * grad_s.sum())
                if ctx.has_lora:
                    grad_u.add_(lora_b @ (scaled.t() @ grad_s))
                grads[6] = grad_u
        return tuple(grads)


def _times_thin(grad: torch.Tensor, thin: torch.Tensor) -> torch.Tensor:
    """`grad @ thin` for a `thin` of shape `(out, k)` with small `k`, in the layout CPU BLAS is fast at.

    With `thin` row-major and `1 < k < 16` the product takes 5-10x longer on CPU than with `thin` column-major
    (measured, one thread: 0.95 ms against 0.17 ms for `(2048, 384) @ (384, 2)`); `k = 1` is a matrix-vector product.
    """
    if thin.shape[1] == 1:
        return grad @ thin
    return grad @ thin.t().contiguous().t()
