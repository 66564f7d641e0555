"""Where things are in a transformer: the ordered stack of layers and the role of each module inside a layer.

Methods of the pack place their modules by *role* (query projection, attention output, FFN output, norms, ...)
rather than by architecture-specific names. Roles are matched by full regular expressions on the module path
relative to its layer, so one table covers BERT/RoBERTa, T5, BART, GPT-2 and the LLaMA family (Llama, Qwen2, Mistral,
...). `layer_stacks` lets users point at the stacks of any other model.

Example:

```py
>>> from transformers import BertConfig, BertModel
>>> model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
>>> arch = resolve_architecture(model)
>>> [layer.path for layer in arch.layers]
['encoder.layer.0', 'encoder.layer.1']
>>> arch.layers[0].modules_for("query")
['encoder.layer.0.attention.self.query']
```
"""

import re
from dataclasses import dataclass, field

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ._config import check_layer_stacks

# Full-match patterns, relative to one layer. The first role list that matches wins for each module.
# Fused projections (GPT-2's `c_attn`, `query_key_value`, `qkv_proj`, `Wqkv`) serve as query, key and value at once.
_FUSED_QKV = (r"attn\.c_attn", r"(self_attention|attention)\.query_key_value", r"attn\.Wqkv")


def _qkv_patterns(name: str, short: str) -> tuple[str, ...]:
    """The patterns of one of query, key, value (`short`: its letter)."""
    return (
        rf"attention\.self\.{name}(_proj)?",  # BERT family; DeBERTa-v2
        rf"layer\.0\.SelfAttention\.{short}",  # T5
        rf"self_attn\.({short}_proj|qkv_proj)",  # Llama family; Phi3
        rf"attention\.{short}_lin",  # DistilBERT
        *_FUSED_QKV,  # GPT-2; Falcon, Bloom, GPT-NeoX; ModernBERT
    )


ROLE_PATTERNS: dict[str, tuple[str, ...]] = {
    # names relative to a layer, matched in full; gated FFNs' fused `gate_up_proj` serves as the FFN input
    "attention": (r"attention\.self", r"layer\.0\.SelfAttention", r"attn", r"self_attn", r"self_attention"),
    "query": _qkv_patterns("query", "q"),
    "key": _qkv_patterns("key", "k"),
    "value": _qkv_patterns("value", "v"),
    "attn_out": (
        r"attention\.output\.dense",
        r"layer\.0\.SelfAttention\.o",
        r"attn\.c_proj",
        r"self_attn\.(o_proj|out_proj|dense)",  # ...; Phi
        r"attention\.out_lin",
        r"(self_attention|attention)\.dense",
        r"attn\.Wo",
    ),
    "ffn_in": (
        r"intermediate\.dense",
        r"layer\.\d\.DenseReluDense\.wi(_0|_1)?",
        r"mlp\.c_fc",
        r"mlp\.(gate_proj|up_proj|gate_up_proj|fc1|dense_h_to_4h|Wi)",
        r"fc1",
        r"ffn\.lin1",
    ),
    "ffn_out": (
        r"output\.dense",
        r"layer\.\d\.DenseReluDense\.wo",
        r"mlp\.(c_proj|down_proj|fc2|dense_4h_to_h|Wo)",
        r"fc2",
        r"ffn\.lin2",
    ),
}
PROJECTION_ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
STACK_NAME = re.compile(r"(^|.*\.)(layer|layers|h|block|blocks)$")


def is_linear(module: nn.Module) -> bool:
    """True for `nn.Linear` (bitsandbytes layers subclass it) and transformers' GPT-2 style `Conv1D`."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def is_norm(module: nn.Module) -> bool:
    """True for LayerNorm and RMSNorm-like modules (matched by class name, as every family has its own class)."""
    name = type(module).__name__
    return "Norm" in name and "Group" not in name and hasattr(module, "weight")


def linear_features(module: nn.Module) -> tuple[int, int]:
    """`(in_features, out_features)` of a linear-like module, from the module's declared sizes."""
    if type(module).__name__ == "Conv1D":  # weight is stored (in, out)
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


@dataclass
class LayerInfo:
    """One transformer layer: its path, position and the modules inside it.

    Args:
        path (`str`): module path of the layer, e.g. `"encoder.layer.3"`.
        index (`int`): position in the ordered stack (0 = bottom; encoder before decoder).
        stack (`str`): path of the `nn.ModuleList` holding the layer.
        roles (`dict[str, list[str]]`): role -> module paths (absolute).
        linears (`list[str]`): every linear-like module of the layer.
        norms (`list[str]`): every norm module of the layer.
        features (`dict[str, tuple[int, int]]`): `(in, out)` of each linear, `(size, size)` of each norm.
        norm_has_bias (`dict[str, bool]`): whether each norm has a bias parameter of its own.
        linear_has_bias (`dict[str, bool]`): whether each linear has a bias parameter of its own.
        attention_heads (`tuple[int, int] | None`): `(num_kv_heads, head_dim)` of the self-attention, if found.
    """

    path: str
    index: int
    stack: str
    roles: dict[str, list[str]] = field(default_factory=dict)
    linears: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    features: dict[str, tuple[int, int]] = field(default_factory=dict)
    norm_has_bias: dict[str, bool] = field(default_factory=dict)
    linear_has_bias: dict[str, bool] = field(default_factory=dict)
    attention_heads: tuple[int, int] | None = None

    def modules_for(self, role: str) -> list[str]:
        """Absolute paths of the modules with `role` in this layer (empty list if none)."""
        return self.roles.get(role, [])


@dataclass
class ArchitectureInfo:
    """The ordered layers of a model, grouped by stack (encoder, decoder, ...)."""

    stacks: list[str]
    layers: list[LayerInfo]

    def layers_of(self, stack: str) -> list[LayerInfo]:
        return [layer for layer in self.layers if layer.stack == stack]


def find_layer_stacks(model: nn.Module) -> list[str]:
    """Paths of the `nn.ModuleList`s that hold transformer layers, encoder before decoder.

    A stack is a `ModuleList` named `layer`, `layers`, `h`, `block` or `blocks` that is not nested in another stack.
    """
    stacks: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or not STACK_NAME.match(name):
            continue
        if any(name.startswith(stack + ".") for stack in stacks):
            continue
        stacks.append(name)
    # encoder-decoder models: the encoder stack is the bottom of the joint stack
    return sorted(stacks, key=lambda s: 0 if "encoder" in s else 1 if "decoder" in s else 0)


def _attention_heads(module: nn.Module, model: nn.Module) -> tuple[int, int] | None:
    config = getattr(module, "config", None) or getattr(model, "config", None)
    head_dim = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
    head_dim = head_dim or getattr(module, "key_value_proj_dim", None)
    heads = getattr(module, "num_attention_heads", None) or getattr(module, "n_heads", None)
    heads = heads or getattr(module, "num_heads", None) or getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if head_dim is None and heads:
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        head_dim = hidden // heads if hidden else None
    if not head_dim or not kv_heads:
        return None
    return int(kv_heads), int(head_dim)


def resolve_architecture(model: nn.Module, layer_stacks: list[str] | None = None) -> ArchitectureInfo:
    """Find the layer stacks of `model` and the role of every module in each layer.

    Args:
        model (`nn.Module`): the (transformers) model.
        layer_stacks (`list[str]`, *optional*): explicit stack paths, bottom first; found automatically when `None`.

    Raises:
        TypeError: when `layer_stacks` is neither `None` nor a list of module paths (e.g. a single string).
        ValueError: when no stack is found, or an explicit path is missing or not an `nn.ModuleList`.
    """
    layer_stacks = check_layer_stacks(layer_stacks)
    modules = dict(model.named_modules())
    if layer_stacks is None:
        stacks = find_layer_stacks(model)
        if not stacks:
            raise ValueError(
                f"Could not find the transformer layers of {type(model).__name__}: searched for an "
                "nn.ModuleList named one of ['block', 'blocks', 'h', 'layer', 'layers']. Pass "
                "`layer_stacks=[...]` with the module path(s) of the layer list(s), bottom first."
            )
    else:
        stacks = list(layer_stacks)
        for stack in stacks:
            if not isinstance(modules.get(stack), nn.ModuleList):
                candidates = find_layer_stacks(model)
                raise ValueError(
                    f"`layer_stacks` entry {stack!r} is not an nn.ModuleList of {type(model).__name__}; "
                    f"automatically found stacks: {candidates}."
                )

    layers: list[LayerInfo] = []
    for stack in stacks:
        for position in range(len(modules[stack])):
            layer_path = f"{stack}.{position}"
            info = LayerInfo(path=layer_path, index=len(layers), stack=stack)
            inside_wrapper: list[str] = []
            for name, module in modules[layer_path].named_modules():
                if not name or any(name.startswith(prefix) for prefix in inside_wrapper):
                    continue
                if isinstance(module, BaseTunerLayer):  # an adapter wrapper: seen as the module it wraps
                    inside_wrapper.append(name + ".")
                    module = module.get_base_layer()
                full = f"{layer_path}.{name}"
                if is_linear(module):
                    info.linears.append(full)
                    info.features[full] = linear_features(module)
                    info.linear_has_bias[full] = getattr(module, "bias", None) is not None
                elif is_norm(module):
                    info.norms.append(full)
                    size = module.weight.numel()
                    info.features[full] = (size, size)
                    info.norm_has_bias[full] = getattr(module, "bias", None) is not None
                for role, patterns in ROLE_PATTERNS.items():
                    if any(re.fullmatch(p, name) for p in patterns):
                        if role == "attention" or is_linear(module):
                            info.roles.setdefault(role, []).append(full)
            attention = info.modules_for("attention")
            if attention:
                info.attention_heads = _attention_heads(modules[attention[0]], model)
            layers.append(info)
    return ArchitectureInfo(stacks=stacks, layers=layers)
