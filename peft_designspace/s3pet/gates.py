"""Gates of the S3PET search: keep probabilities under a global budget (shifted global sigmoid) and their samples.

`p_i = σ((α_i − b) / β)`, where the shift `b` is solved every time so that the expected size `Σ n_i p_i` equals the
budget `B`. `F(b) = Σ n_i σ((α_i − b)/β) − B` is strictly decreasing in `b`, so bisection on a bracket always
converges (the reference code used `scipy.optimize.fsolve`, which can fail silently). `b` is a constant for autograd.
Then `p ← p / Σp · stopgrad(Σp)`: same values, but the gradient loses the component that would raise every
probability at once. During search the gates are binary-concrete samples `z = σ(logit p + logit u)`, `u ~ U(0, 1)`
(temperature 1, no stretch, as in the reference); at evaluation `z = p`.
"""

import torch

EPS = 1e-7


def solve_shift(
    alpha: torch.Tensor, sizes: torch.Tensor, budget: float, beta: float = 1.0, iterations: int = 200
) -> tuple[float, float]:
    """The shift `b` with `Σ sizes·σ((alpha − b)/beta) = budget`, by bisection in float64; returns `(b, residual)`.

    `residual` is `|Σ n_i p_i − budget| / budget` at the returned `b`.

    Example:

    ```py
    >>> b, residual = solve_shift(torch.zeros(4), torch.tensor([10.0, 10.0, 20.0, 40.0]), budget=40.0)
    >>> round(float(torch.sigmoid(torch.tensor(-b))), 6), residual < 1e-9  # every p equals 40 / 80
    (0.5, True)
    ```
    """
    a = alpha.detach().double().reshape(-1)
    n = sizes.detach().double().reshape(-1).to(a.device)
    total = float(n.sum())
    if not 0 < budget < total:
        raise ValueError(f"The budget {budget:g} must lie strictly between 0 and the search space's size {total:g}.")

    def excess(b: float) -> float:
        return float((n * torch.sigmoid((a - b) / beta)).sum()) - budget

    span = 50.0 * beta + 1.0
    low, high = float(a.min()) - span, float(a.max()) + span
    while excess(low) <= 0:  # widen until the bracket holds the root (tiny budgets or extreme α)
        low -= span
    while excess(high) >= 0:
        high += span
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if excess(mid) > 0:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, abs(mid)):
            break
    b = 0.5 * (low + high)
    return b, abs(excess(b)) / budget


def keep_probabilities(alpha: torch.Tensor, sizes: torch.Tensor, budget: float, beta: float = 1.0):
    """`(p, b, residual)`: the budget-shifted keep probabilities, renormalised with a stop-gradient on `Σp`."""
    b, residual = solve_shift(alpha, sizes, budget, beta)
    p = torch.sigmoid((alpha - b) / beta).clamp(EPS, 1 - EPS)
    p = p / p.sum() * p.sum().detach()
    return p, b, residual


def sample_gates(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary-concrete gates `σ(logit p + logit u)` with `u ~ U(0, 1)` (differentiable in `p`)."""
    u = torch.rand(p.shape, generator=generator, dtype=torch.float64).clamp(EPS, 1 - EPS).to(p.device, p.dtype)
    logit_p = torch.log(p) - torch.log1p(-p)
    return torch.sigmoid(logit_p + torch.log(u) - torch.log1p(-u))


def expected_size(p: torch.Tensor, sizes: torch.Tensor) -> float:
    """`Σ n_i p_i` (a float)."""
    return float((p.detach().double() * sizes.double().to(p.device)).sum())
