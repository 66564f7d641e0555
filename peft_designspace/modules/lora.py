r"""Low-rank update (LoRA, Hu et al. 2021, https://arxiv.org/abs/2106.09685).

```
x ──► dropout ──► A (in → r) ──► B (r → out) ──► × scaling ──► Δy
```

`Δy = scaling · B A x`, with `A` initialised like `nn.Linear` (Kaiming uniform) and `B` at zero, so the update is
exactly zero at initialisation. The dense equivalent is `ΔW = scaling · B A`, shape ``(out, in)``.
"""

import math

import torch
from torch import nn


class LowRank(nn.Module):
    """A rank-`rank` update `x -> scaling * B(A(dropout(x)))`.

    Args:
        in_features (`int`): size of the input, shape ``(..., in_features)``.
        out_features (`int`): size of the output, shape ``(..., out_features)``.
        rank (`int`): inner dimension `r`.
        scaling (`float`, *optional*, defaults to `1.0`): factor applied to the update.
        dropout (`float`, *optional*, defaults to `0.0`): dropout on the input of `A`.
        zero_init (`bool`, *optional*, defaults to `True`): start `B` at zero (identity at init).

    Example:

    ```py
    >>> delta = LowRank(16, 8, rank=2)
    >>> delta(torch.randn(3, 16)).abs().max().item()
    0.0
    ```
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        scaling: float = 1.0,
        dropout: float = 0.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        if zero_init:
            nn.init.zeros_(self.B.weight)
        else:
            nn.init.normal_(self.B.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update `scaling · B A`, shape ``(out_features, in_features)``."""
        return (self.B.weight @ self.A.weight) * self.scaling
