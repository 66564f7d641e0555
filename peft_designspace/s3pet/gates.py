"""Gates of the S3PET search: keep probabilities under a global budget (shifted global sigmoid) and their samples.

`p_i = σ((α_i − b) / β)`, where the shift `b` is solved every time so that the expected size `Σ n_i p_i` equals the
budget `B`. `F(b) = Σ n_i σ((α_i − b)/β) − B` is strictly decreasing in `b`, so Newton steps kept inside a bracket
always converge (the reference code used `scipy.optimize.fsolve`, which can fail silently). `b` is a constant for
autograd. Then `p ← p / Σp · stopgrad(Σp)`: same values, but the gradient loses the component that would raise every
probability at once. During search the gates are binary-concrete samples `z = σ(logit p + logit u)`, `u ~ U(0, 1)`
(temperature 1, no stretch, as in the reference); at evaluation `z = p`.
"""

import math

import torch

from .._config import _check_positive_number

EPS = 1e-7  # the gates' noise u ~ U(0, 1) is kept in [EPS, 1 − EPS]


class NonFiniteAlphaError(ValueError):
    """α holds inf or nan (the search diverged); `indices` are the affected positions of the flattened α."""

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices


def solve_shift(
    alpha: torch.Tensor, sizes: torch.Tensor, budget: float, beta: float = 1.0, iterations: int = 200
) -> tuple[float, float]:
    """The shift `b` with `Σ sizes·σ((alpha − b)/beta) = budget`, in float64 on the CPU; returns `(b, residual)`.

    `residual` is `|Σ n_i p_i − budget| / budget` at the returned `b`. The solve is Newton's method kept inside a
    bracket of the root: a Newton step that leaves the bracket is replaced by bisection, so it always converges
    (`F` is strictly decreasing), in a handful of steps where plain bisection takes about fifty. It runs on a CPU copy
    of `alpha`: on a GPU, each step would otherwise wait for the device to read `F(b)` back.

    Example:

    ```py
    >>> b, residual = solve_shift(torch.zeros(4), torch.tensor([10.0, 10.0, 20.0, 40.0]), budget=40.0)
    >>> round(float(torch.sigmoid(torch.tensor(-b))), 6), residual < 1e-9  # every p equals 40 / 80
    (0.5, True)
    ```
    """
    _check_positive_number("beta", beta)
    a = alpha.detach().to("cpu", torch.float64).reshape(-1)
    n = sizes.detach().to("cpu", torch.float64).reshape(-1)
    total = float(n.sum())
    if not 0 < budget < total:
        raise ValueError(f"The budget {budget:g} must lie strictly between 0 and the search space's size {total:g}.")
    bad = (~torch.isfinite(a)).nonzero().reshape(-1).tolist()
    if bad:
        raise NonFiniteAlphaError(
            f"α holds inf or nan at {len(bad)} of {a.numel()} positions (first: {bad[:3]}): the search diverged.", bad
        )

    def excess(b: float) -> float:
        return float((n * torch.sigmoid((a - b) / beta)).sum()) - budget

    span = 50.0 * beta + 1.0
    low, high = float(a.min()) - span, float(a.max()) + span
    while excess(low) <= 0:  # widen until the bracket holds the root (tiny budgets or extreme α)
        low -= span
    while excess(high) >= 0:
        high += span
    # start where every p would be budget / total: the root when all α are equal
    b = float(a.mean()) - beta * math.log(budget / (total - budget))
    b = b if low < b < high else 0.5 * (low + high)
    for _ in range(iterations):
        p = torch.sigmoid((a - b) / beta)
        f = float((n * p).sum()) - budget
        if f > 0:
            low = b
        else:
            high = b
        middle = 0.5 * (low + high)
        # p moves on the scale of beta, so the bracket is judged against it; `middle` at an end: float64's limit
        if abs(f) <= 1e-12 * budget or high - low <= 1e-12 * beta or not low < middle < high:
            break
        slope = float((n * p * (1 - p)).sum()) / beta  # −F'(b) > 0
        step = b + f / slope if slope > 0 else math.nan
        b = step if low < step < high else middle
    if not math.isfinite(b):  # finite α and β give a finite root; kept as a guard for what reaches the gates
        raise ValueError(f"The budget shift is {b!r} (beta={beta!r}): the search diverged.")
    return b, abs(excess(b)) / budget


def keep_probabilities(
    alpha: torch.Tensor, sizes: torch.Tensor, budget: float, beta: float = 1.0
) -> tuple[torch.Tensor, float, float]:
    """`(p, b, residual)`: the budget-shifted keep probabilities, renormalised with a stop-gradient on `Σp`.

    `residual` is `|Σ n_i p_i − B| / B` of the `p` returned (in its dtype: float32 for a float32 α), not only of the
    float64 solve.

    Raises:
        NonFiniteAlphaError: when `alpha` holds inf or nan (a diverged search).
        ValueError: for a `beta` that is not a finite positive number, or a budget outside `(0, Σ sizes)`.
    """
    b, _ = solve_shift(alpha, sizes, budget, beta)
    # α − b in float64: with large |α| a float32 difference would miss the budget the solve met (2.5e-4 at α ≈ 1e4).
    # p is at least float32 (also for an α cast to bfloat16 or float16 with the model): in half precision 1 − p
    # rounds to 0 for any confident candidate, and the gates' log(1 − p) becomes infinite
    p = torch.sigmoid((alpha.double() - b) / beta).to(torch.promote_types(alpha.dtype, torch.float32))
    p = p / p.sum() * p.sum().detach()
    # only an exact 0 or 1 is nudged (to the nearest finite logit), as the reference does: a wider clamp (1e-7 once)
    # raised every far-out candidate and missed the budget by 1.5e-6 on T5-large's 912. After the renormalisation,
    # whose rounding can turn the largest value below 1 back into 1
    info = torch.finfo(p.dtype)
    p = p.clamp(info.tiny, 1 - info.eps / 2)
    return p, b, abs(expected_size(p, sizes) - budget) / budget


def sample_gates(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary-concrete gates `σ(logit p + logit u)` with `u ~ U(0, 1)` (differentiable in `p`), in `p`'s dtype.

    `p` should be float32 or wider, as `keep_probabilities` returns it: in half precision `1 − p` is 0 for any
    confident candidate.
    """
    u = torch.rand(p.shape, generator=generator, dtype=torch.float64).clamp(EPS, 1 - EPS).to(p.device, p.dtype)
    logit_p = torch.log(p) - torch.log1p(-p)
    return torch.sigmoid(logit_p + torch.log(u) - torch.log1p(-u))


def expected_size(p: torch.Tensor, sizes: torch.Tensor) -> float:
    """`Σ n_i p_i` (a float)."""
    return float((p.detach().double() * sizes.double().to(p.device)).sum())
