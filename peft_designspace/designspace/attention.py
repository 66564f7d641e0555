"""Per-layer key/value prefixes through transformers' `AttentionInterface`.

PEFT's prefix tuning is model-wide; the design space needs prefixes in chosen layers only. transformers v5 models
compute attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`, called with the attention module
itself. We register one function, `"designspace_prefix"`, and give only the prefixed attention modules a shallow copy
of their config that selects it. The model-wide config (and so mask creation) keeps the original implementation,
which the function calls after prepending the prefixes:

```
key   = [P_k ; key]      shape (batch, kv_heads, P + k, head_dim)
value = [P_v ; value]
mask  = [attend ; mask]  (bool True / additive 0 for the prefix columns; built causal when the model passed none)
position_bias (T5) padded with zeros for the prefix columns
```
"""

import copy
import inspect
import sys

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

FUNCTION_NAME = "designspace_prefix"
# The holder's own name must not start with the method prefix: transformers' `load_adapter` inserts the adapter name
# after the first `designspace_*` segment of each key, which must be the `designspace_prefix_kv` container.
HOLDER_NAME = "prefix_holder"
SUPPORTED_FALLBACKS = ("eager", "sdpa")


def check_prefix_support(attention: nn.Module) -> str:
    """Return the attention implementation `attention` uses; raise if prefixes cannot be injected into it."""
    source = inspect.getsource(type(attention).forward) if hasattr(type(attention), "forward") else ""
    config = getattr(attention, "config", None)
    if "ALL_ATTENTION_FUNCTIONS" not in source or config is None:
        raise ValueError(
            f"The `prefix` strategy needs attention computed through transformers' AttentionInterface, but "
            f"{type(attention).__name__} does not use it. Remove `prefix` from `group_strategies` for this model."
        )
    return _implementation(attention, getattr(config, "_designspace_original", None) or config)


def _implementation(attention: nn.Module, config) -> str:
    # read from the model's own config at each call, so that `set_attn_implementation` after injection is followed
    implementation = config._attn_implementation or "eager"
    if implementation not in SUPPORTED_FALLBACKS:
        raise ValueError(
            f"The `prefix` strategy supports attn_implementation in {list(SUPPORTED_FALLBACKS)}, but "
            f"{type(attention).__name__} uses {implementation!r}. Load the model with attn_implementation='sdpa'"
            " or call `model.set_attn_implementation('sdpa')`."
        )
    return implementation


def install(attention: nn.Module) -> None:
    """Route `attention` through the prefix-aware function (idempotent)."""
    if getattr(attention.config, "_designspace_original", None) is not None:
        return
    check_prefix_support(attention)
    local = copy.copy(attention.config)
    local._attn_implementation_internal = FUNCTION_NAME
    object.__setattr__(local, "_designspace_original", attention.config)
    attention.config = local


def uninstall(attention: nn.Module) -> None:
    """Give `attention` its original config back."""
    original = getattr(attention.config, "_designspace_original", None)
    if original is not None:
        attention.config = original


def _fallback_function(module: nn.Module, name: str):
    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _pad_mask(mask: torch.Tensor, prefix_len: int) -> torch.Tensor:
    pad_shape = (*mask.shape[:-1], prefix_len)
    if mask.dtype == torch.bool:
        pad = torch.ones(pad_shape, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(pad_shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def _causal_mask(q_len: int, k_len: int, prefix_len: int, device, as_bool: bool, dtype) -> torch.Tensor:
    # What sdpa's `is_causal=True` does when the model passes no mask, plus the prefix: query i sees keys 0..i and
    # every prefix position. Aligned top-left: transformers passes no mask only when that is right, for
    # `k_len == q_len` and for the prefill of an empty static cache, whose `k_len` is the whole cache (the keys past
    # the prompt are empty slots, which bottom-right alignment let the prompt attend to).
    rows = torch.arange(q_len, device=device)[:, None]
    allowed = torch.arange(k_len, device=device)[None, :] <= rows
    allowed = torch.cat([torch.ones(q_len, prefix_len, dtype=torch.bool, device=device), allowed], dim=-1)
    allowed = allowed[None, None]
    if as_bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def prefix_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """Attention function registered as `"designspace_prefix"`; see the module docstring."""
    fallback = _implementation(module, module.config._designspace_original)
    function = _fallback_function(module, fallback)
    holder = module._modules.get(HOLDER_NAME)
    pairs = holder.active_prefixes() if holder is not None else []
    if not pairs:
        return _attend(function, fallback, module, query, key, value, attention_mask, *args, **kwargs)

    batch = key.shape[0]
    prefix_key = torch.cat([k for k, _ in pairs], dim=1).to(key.dtype)
    prefix_value = torch.cat([v for _, v in pairs], dim=1).to(value.dtype)
    prefix_len = prefix_key.shape[1]
    key = torch.cat([prefix_key.unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_value.unsqueeze(0).expand(batch, -1, -1, -1), value], dim=2)

    q_len, k_len = query.shape[2], key.shape[2] - prefix_len
    if attention_mask is not None:
        attention_mask = _pad_mask(attention_mask, prefix_len)
    else:
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        if is_causal and q_len > 1:
            attention_mask = _causal_mask(q_len, k_len, prefix_len, query.device, fallback == "sdpa", query.dtype)
    kwargs.pop("is_causal", None)
    if attention_mask is not None and fallback == "sdpa":
        kwargs["is_causal"] = False
    position_bias = kwargs.get("position_bias")
    if position_bias is not None:
        kwargs["position_bias"] = torch.nn.functional.pad(position_bias, (prefix_len, 0))
    return _attend(function, fallback, module, query, key, value, attention_mask, *args, **kwargs)


def _attend(function, fallback: str, module, query, key, value, attention_mask, *args, **kwargs):
    """`function(...)`, except where the model itself would not call the attention function: GPT-2 with
    `reorder_and_upcast_attn=True` under eager computes the scores in float32 with its own method (the prefixed
    layer's config no longer reads "eager", so GPT-2 would skip it)."""
    if fallback == "eager" and getattr(module, "reorder_and_upcast_attn", False):
        upcast = getattr(module, "_upcast_and_reordered_attn", None)
        if upcast is not None:
            return upcast(query, key, value, attention_mask)
    return function(module, query, key, value, attention_mask, *args, **kwargs)


ALL_ATTENTION_FUNCTIONS.register(FUNCTION_NAME, prefix_attention)
