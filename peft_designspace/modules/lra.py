r"""Low-rank adapter ("LRA", as in the S3Delta search space): a bottleneck whose projections are rank-1 factorised.

```
h ──► down: (h u_d) v_d + b_d  (d → m) ──► gelu ──► up: (· u_u) v_u + b_u  (m → d) ──► Δh
```

Parameters: `d + m` and `m` (down factors, bias) plus `m + d` and `d` (up factors, bias): `3d + 3m`, with
`m = max(1, d // reduction)`; for `d = 1024`, `reduction = 32` that is 3,168.
"""

import math

import torch
from torch import nn


def lra_parameters(size: int, reduction: int = 32) -> int:
    """Exact parameter count of a `LowRankAdapter(size, reduction)`."""
    hidden = max(1, size // reduction)
    return 3 * size + 3 * hidden


class LowRankAdapter(nn.Module):
    """A bottleneck `size -> size // reduction -> size` with rank-1 factorised projections and GELU in between.

    Args:
        size (`int`): input and output size.
        reduction (`int`, *optional*, defaults to `32`): bottleneck reduction factor.
        zero_init (`bool`, *optional*, defaults to `True`): start the up projection's second factor and both biases
            at zero, so the adapter is exactly zero at initialisation (the S3Delta code starts all factors non-zero).

    Example:

    ```py
    >>> lra = LowRankAdapter(64)
    >>> sum(p.numel() for p in lra.parameters()) == lra_parameters(64)
    True
    >>> lra(torch.randn(2, 64)).abs().max().item()
    0.0
    ```
    """

    def __init__(self, size: int, reduction: int = 32, zero_init: bool = True) -> None:
        super().__init__()
        hidden = max(1, size // reduction)
        self.down_u = nn.Parameter(torch.empty(size, 1))
        self.down_v = nn.Parameter(torch.empty(1, hidden))
        self.down_bias = nn.Parameter(torch.zeros(hidden))
        self.up_u = nn.Parameter(torch.empty(hidden, 1))
        self.up_v = nn.Parameter(torch.empty(1, size))
        self.up_bias = nn.Parameter(torch.zeros(size))
        for factor in (self.down_u, self.down_v, self.up_u, self.up_v):
            bound = math.sqrt(6.0 / (factor.shape[0] + factor.shape[1]))  # Glorot uniform
            nn.init.uniform_(factor, -bound, bound)
        if zero_init:
            nn.init.zeros_(self.up_v)
        else:
            nn.init.normal_(self.up_bias, std=0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.gelu((h @ self.down_u) @ self.down_v + self.down_bias, approximate="tanh")
        return (hidden @ self.up_u) @ self.up_v + self.up_bias
