r"""Bottleneck adapter (Houlsby et al. 2019, https://arxiv.org/abs/1902.00751; Pfeiffer et al. 2020).

```
h ──► down (d_in → r) ──► act ──► up (r → d_out) ──► Δh
```

Sequential placement adds `Δh(h)` to the output `h` of a projection (before the residual add); parallel placement
feeds the projection's input instead. `up` starts at zero, so the adapter is an identity at initialisation, and
`down`'s bias at zero (a random one can leave a ReLU unit inactive on every token, where it never gets a gradient).
Trainable parameters: `d_in·r + r + r·d_out + d_out`.
"""

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    """Down-project, activate, up-project: `x -> up(act(down(x)))`.

    Args:
        in_features (`int`): input size, shape ``(..., in_features)``.
        hidden (`int`): bottleneck width `r`.
        out_features (`int`): output size, shape ``(..., out_features)``.
        activation (`str`, *optional*, defaults to `"relu"`): one of `relu`, `gelu`, `tanh`, `silu`.
        zero_init (`bool`, *optional*, defaults to `True`): start `up` at zero (identity at init).

    Example:

    ```py
    >>> adapter = Bottleneck(16, 4, 16)
    >>> sum(p.numel() for p in adapter.parameters())
    148
    ```
    """

    def __init__(
        self, in_features: int, hidden: int, out_features: int, activation: str = "relu", zero_init: bool = True
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
        self.down = nn.Linear(in_features, hidden)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(hidden, out_features)
        nn.init.zeros_(self.down.bias)  # a random bias left ReLU units dead on every token, never to learn
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))

    @staticmethod
    def num_parameters(in_features: int, hidden: int, out_features: int) -> int:
        """Exact parameter count of a `Bottleneck(in_features, hidden, out_features)`."""
        return in_features * hidden + hidden + hidden * out_features + out_features
