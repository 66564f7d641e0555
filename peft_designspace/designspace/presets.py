"""Named starting points of the design space.

`s4` is the paper's final model (found on T5-base, Chen et al. 2023, `docs/methods.md` 1.4): spindle grouping into four
groups, uniform allocation, every group tuned, and per group G1 adapter+LoRA, G2 adapter+prefix,
G3 adapter+prefix+BitFit, G4 prefix+BitFit+LoRA. The single-strategy presets use the same grouping and allocation
with one strategy everywhere, so that baselines at the same budget are one argument away.
"""

STRATEGIES = ("adapter", "bitfit", "lora", "prefix")

PRESETS: dict[str, dict] = {
    "s4": {
        "grouping": "spindle",
        "allocation": "uniform",
        "group_strategies": [
            ["adapter", "lora"],
            ["adapter", "prefix"],
            ["adapter", "prefix", "bitfit"],
            ["prefix", "bitfit", "lora"],
        ],
    },
    **{
        name: {"grouping": "spindle", "allocation": "uniform", "group_strategies": [[name]] * 4} for name in STRATEGIES
    },
}
