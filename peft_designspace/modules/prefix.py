r"""Per-layer key/value prefixes (prefix tuning, Li & Liang 2021, https://arxiv.org/abs/2101.00190).

`P` learned key and value vectors per key/value head are prepended to the keys and values of one self-attention
layer; queries attend to them as if they were extra tokens. Shapes: keys and values ``(kv_heads, P, head_dim)`` each,
`2·P·kv_heads·head_dim` parameters.

The optional reparameterisation of the original paper trains an embedding ``(P, hidden)`` and an MLP
`hidden → projection_hidden → 2·kv_heads·head_dim` instead; its extra parameters exist only for training stability
and are reported apart from the budget.
"""

import torch
from torch import nn


class PrefixKV(nn.Module):
    """Learned key/value prefixes for one attention layer.

    Args:
        num_kv_heads (`int`): number of key/value heads of the attention layer.
        head_dim (`int`): size of one head.
        length (`int`): number of prefix positions `P`.
        hidden_size (`int`, *optional*): model width, needed for the reparameterisation only.
        projection_hidden (`int`, *optional*): width of the reparameterisation MLP; `None` trains `P` vectors directly.

    Example:

    ```py
    >>> prefix = PrefixKV(num_kv_heads=2, head_dim=8, length=3)
    >>> key, value = prefix()
    >>> tuple(key.shape)
    (2, 3, 8)
    ```
    """

    def __init__(
        self,
        num_kv_heads: int,
        head_dim: int,
        length: int,
        hidden_size: int | None = None,
        projection_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.num_kv_heads, self.head_dim, self.length = num_kv_heads, head_dim, length
        kv_width = 2 * num_kv_heads * head_dim
        if projection_hidden is None:
            # small random init: a zero prefix is not an identity anyway (softmax dilution), and random keys break the
            # symmetry between positions
            self.kv = nn.Parameter(torch.randn(length, kv_width) * 0.02)
            self.projection = None
        else:
            if hidden_size is None:
                raise ValueError("`hidden_size` is required when `projection_hidden` is set.")
            self.kv = nn.Parameter(torch.randn(length, hidden_size) * 0.02)
            self.projection = nn.Sequential(
                nn.Linear(hidden_size, projection_hidden), nn.Tanh(), nn.Linear(projection_hidden, kv_width)
            )

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(key, value)`, each of shape ``(num_kv_heads, length, head_dim)``."""
        flat = self.kv if self.projection is None else self.projection(self.kv)
        flat = flat.view(self.length, 2, self.num_kv_heads, self.head_dim)
        key, value = flat.unbind(dim=1)
        return key.transpose(0, 1), value.transpose(0, 1)

    def effective_parameters(self) -> int:
        """Parameters of the prefixes themselves, `2·P·kv_heads·head_dim`, whatever the parameterisation."""
        return 2 * self.length * self.num_kv_heads * self.head_dim

    def training_only_parameters(self) -> int:
        """Extra parameters of the reparameterisation (0 without it)."""
        if self.projection is None:
            return 0
        return sum(p.numel() for p in self.parameters()) - self.effective_parameters()
