"""The S3PET search space: every candidate delta module of a model, resolved from module roles, with exact sizes.

Candidate types (one gate each), with their exact sizes:

- `lora` on a projection (`query`, `key`, `value`, `attn_out`, `ffn_in`, `ffn_out`): a rank-`r` update beside it,
  scaled by `lora_alpha / r`; `r·(in + out)` parameters.
- `bitfit` on a projection or a norm: a bias delta on its output; `out` parameters.
- `lnfit` on a norm: a delta on its scale; `size` parameters.
- `lra` after the attention block / the FFN block (on the `attn_out` / `ffn_out` projection's output): a rank-1
  factorised bottleneck; `3d + 3·max(1, d // lra_reduction)` (`lra_reduction` 32 by default) parameters.

Spaces: `"m"` (S3PET-M: LoRA and BitFit on every projection, LNFit and BitFit on every norm, LRA after every
attention and FFN block), `"l"` (S3PET-L: LoRA on every projection), or a list of entries
`{"type": ..., "roles": [...], "rank": r}` (`roles` out of the projection roles and `"norm"`; `lra` takes
`"attn_out"` and/or `"ffn_out"`; `rank` only on `lora` entries, default 1; no other keys). A module serving several
roles (GPT-2's fused `c_attn`) gets one candidate per type, so the entries must not give it two LoRA ranks.
"""

import warnings
from dataclasses import asdict, dataclass

from torch import nn

from .._warnings import DesignSpaceWarning
from ..architecture import PROJECTION_ROLES, resolve_architecture
from ..modules import lra_parameters

TYPES = ("lora", "bitfit", "lnfit", "lra")
TYPE_ROLES = {
    "lora": PROJECTION_ROLES,
    "bitfit": (*PROJECTION_ROLES, "norm"),
    "lnfit": ("norm",),
    "lra": ("attn_out", "ffn_out"),
}
ENTRY_KEYS = ("type", "roles", "rank")
SPACES = {
    "m": [
        {"type": "lora", "roles": list(PROJECTION_ROLES), "rank": 1},
        {"type": "bitfit", "roles": [*PROJECTION_ROLES, "norm"]},
        {"type": "lnfit", "roles": ["norm"]},
        {"type": "lra", "roles": ["attn_out", "ffn_out"]},
    ],
    "l": [{"type": "lora", "roles": list(PROJECTION_ROLES), "rank": 1}],
}


def candidate_key(path: str, kind: str) -> str:
    """`"path:type"`, the name of one candidate (or of one module of a structure) across the package."""
    return f"{path}:{kind}"


@dataclass
class Candidate:
    """One candidate delta module.

    Args:
        path (`str`): module path in the base model.
        role (`str`): the role it was found under (the first one for modules with several roles).
        type (`str`): `lora`, `bitfit`, `lnfit` or `lra`.
        layer (`int`): index of its transformer layer (0 = bottom, encoder before decoder).
        size (`int`): exact number of parameters.
        rank (`int`): LoRA rank (0 for other types).
    """

    path: str
    role: str
    type: str
    layer: int
    size: int
    rank: int = 0

    @property
    def key(self) -> str:
        return candidate_key(self.path, self.type)

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_space(space) -> list[dict]:
    """Validate a search space (`"m"`, `"l"` or a list of entries) and return its entries."""
    if isinstance(space, str):
        if space not in SPACES:
            raise ValueError(f"`search_space` must be one of {sorted(SPACES)} or a list of entries, got {space!r}.")
        return [dict(e) for e in SPACES[space]]
    if not isinstance(space, (list, tuple)) or not space:
        raise ValueError(
            f"`search_space` must be 'm', 'l' or a non-empty list of {{'type', 'roles', 'rank'}} entries, got "
            f"{space!r}."
        )
    entries = []
    for i, entry in enumerate(space):
        if not isinstance(entry, dict) or entry.get("type") not in TYPES:
            raise ValueError(f"`search_space[{i}]` must be a dict with `type` out of {list(TYPES)}, got {entry!r}.")
        unknown_keys = [key for key in entry if key not in ENTRY_KEYS]
        if unknown_keys:
            raise ValueError(
                f"`search_space[{i}]` has unknown keys {unknown_keys}; allowed: {list(ENTRY_KEYS)} (`rank` for "
                "'lora' only)."
            )
        if "rank" in entry and entry["type"] != "lora":
            raise ValueError(
                f"`search_space[{i}]['rank']` is {entry['rank']!r}, but only 'lora' entries take a rank; this one is "
                f"{entry['type']!r}."
            )
        roles = entry.get("roles", list(TYPE_ROLES[entry["type"]]))
        if not isinstance(roles, (list, tuple)) or not roles or not all(isinstance(r, str) for r in roles):
            raise ValueError(f"`search_space[{i}]['roles']` must be a non-empty list of role names, got {roles!r}.")
        unknown = sorted(set(roles) - set(TYPE_ROLES[entry["type"]]))
        if unknown:
            raise ValueError(
                f"`search_space[{i}]['roles']` has roles {unknown} that a {entry['type']!r} candidate cannot take; "
                f"allowed: {list(TYPE_ROLES[entry['type']])}."
            )
        rank = entry.get("rank", 1)
        if entry["type"] == "lora" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"`search_space[{i}]['rank']` must be a positive int, got {rank!r}.")
        entries.append(
            {"type": entry["type"], "roles": list(roles), **({"rank": rank} if entry["type"] == "lora" else {})}
        )
    return entries


def enumerate_candidates(
    model: nn.Module, space, layer_stacks: list[str] | None = None, lra_reduction: int = 32
) -> list[Candidate]:
    """All candidates of `space` in `model`, ordered by layer, then module order, then type (`TYPES` order).

    Raises:
        ValueError: when the space has no candidate in this model, or gives one module LoRA candidates of two ranks
            (two entries with the same role, or a module serving two roles, like GPT-2's fused `c_attn`).
    """
    entries = normalize_space(space)
    arch = resolve_architecture(model, layer_stacks)
    found: dict[str, Candidate] = {}
    rank: dict[str, tuple[int, int]] = {}  # module path -> (layer, position inside the layer)
    for layer in arch.layers:
        for position, path in enumerate([*layer.linears, *layer.norms]):
            rank.setdefault(path, (layer.index, position))
        for entry in entries:
            for role in entry["roles"]:
                for path in layer.norms if role == "norm" else layer.modules_for(role):
                    candidate = _candidate(entry, role, path, layer.index, layer.features[path], lra_reduction)
                    kept = found.setdefault(candidate.key, candidate)
                    if kept.rank != candidate.rank:
                        raise ValueError(
                            f"The search space gives {path!r} LoRA candidates of rank {kept.rank} (role "
                            f"{kept.role!r}) and rank {candidate.rank} (role {role!r}); a module takes one rank."
                        )
    _warn_unrecognised_projections(arch, entries)
    candidates = sorted(found.values(), key=lambda c: (*rank[c.path], TYPES.index(c.type)))
    if not candidates:
        raise ValueError(
            f"The search space {space!r} has no candidate in {type(model).__name__}: no module matched its roles."
        )
    return candidates


def _warn_unrecognised_projections(arch, entries: list[dict]) -> None:
    """Warn when layers that hold linear modules lack a projection role the space asks for.

    The roles come from module names (`architecture.ROLE_PATTERNS`). A family whose names are not known there (or an
    FFN made of mixture-of-experts weights, which are not linear modules) would otherwise get a search space without
    those projections, silently.
    """
    wanted = [r for r in PROJECTION_ROLES if any(r in entry["roles"] for entry in entries)]
    missing: dict[str, list] = {}  # role -> the layers without it
    for layer in arch.layers:
        for role in wanted:
            if layer.linears and not layer.modules_for(role):
                missing.setdefault(role, []).append(layer)
    if missing:
        first = next(iter(missing.values()))[0]
        listed = "; ".join(f"{role}: {len(layers)} of {len(arch.layers)} layers" for role, layers in missing.items())
        warnings.warn(
            f"S3PET found no module for some projection roles ({listed}), so those layers get no such candidates "
            f"(linear modules of {first.path!r}: {first.linears}). Mixture-of-experts weights are not linear modules "
            "and are never candidates; other projection names can be added to "
            "`peft_designspace.architecture.ROLE_PATTERNS`.",
            DesignSpaceWarning,
            stacklevel=3,
        )


def _candidate(entry: dict, role: str, path: str, layer: int, features: tuple[int, int], reduction: int) -> Candidate:
    in_features, out_features = features
    kind = entry["type"]
    if kind == "lora":
        rank = entry["rank"]
        return Candidate(path, role, kind, layer, rank * (in_features + out_features), rank)
    if kind == "lra":
        return Candidate(path, role, kind, layer, lra_parameters(out_features, reduction))
    return Candidate(path, role, kind, layer, out_features)  # bitfit: output size; lnfit: norm size
