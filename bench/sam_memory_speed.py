"""SAM sparse tuning against PEFT LoRA, SHiRA and Supertuning at equal trainable counts: memory, speed, file size.

Two cases, on CPU:

* `minilm`: a MiniLM-L6-shaped BERT (`bench/_minilm.py`, random init), `BertForSequenceClassification` with 2 labels,
  batch `--batch-size` x `--seq-len` random tokens. Adapted: every linear layer of the 6 blocks (query, key, value,
  attention.output.dense, intermediate.dense, output.dense: 36 layers); the classifier head is trained in full by
  every method (`modules_to_save`) and counted apart.
* `linear`: one `nn.Linear(--linear-size, --linear-size)` (default 2048 x 2048) with an MSE loss to random targets;
  training batch `--linear-tokens` x size (default 256 tokens: one 2048² step is otherwise too short to time).

Equal counts: PEFT LoRA at rank `--rank` on the adapted layers fixes C = Σ r·(in + out). SAM gets `budget=C` (an
absolute count, `scope="global"`, default targets), calibrated with `calibrate_sam` on `--calib-batches` random
batches before anything is timed (its wall time is reported, not timed with the steps). SHiRA gets `r=--rank`
(r·(in + out) random entries per layer). Supertuning keeps `int(numel·(1 − sparsity))` entries per layer; the
sparsity whose total is closest to C is searched for.

Measured per method:

* saved-for-backward bytes: unique storages (by data pointer) handed to `torch.autograd.graph.saved_tensors_hooks`
  during one forward, leaving out the storages of the module's own parameters and buffers. `linear`: the adapted
  layer on an input `(--saved-tokens, size)` fp32 that requires grad. `minilm`: (a) the whole model's forward minus
  that of the frozen base whose embedding output requires grad (the activations that any method adapting layer 0 needs
  anyway), and (b) each adapted layer alone, on its real input (detached, requiring grad), with and without counting
  that input;
* step time: one step = `zero_grad` + forward + backward + `AdamW.step`, timed in rotating rounds with the contention
  filter of `bench/_timing.py` (see `bench/designspace_step_time.py` for the methodology); median over clean steps,
  ratios to PEFT LoRA over the same selection of steps on both sides (all steps when either has fewer than 3 clean
  ones: the ratio is then contended and its target not judged);
* peak memory: growth of the peak RSS (`VmHWM`, reset after the setup and the calibration) over 2 training steps,
  one fresh process per case and method, with glibc told to return every freed block over 64 KiB to the system
  (`MALLOC_MMAP_THRESHOLD_=65536`), so that the RSS follows the live tensors (`--no-memory` skips it);
* adapter file: size of `adapter_model.safetensors` written by `save_pretrained`; for SAM next to the bound
  nnz × (4 + 4) + 64 KiB (fp32 values, int32 indices, header and head).

Example:

```
python bench/sam_memory_speed.py --json bench/results/sam_memory_speed.json
```
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import _minilm
import torch
import torch.nn.functional as F
from _timing import (
    MIN_CLEAN,
    ForeignLoad,
    Method,
    add_timing_arguments,
    check_json_path,
    check_positive,
    check_timing_arguments,
    environment,
    import_pack,
    load_average,
    make_optimizer,
    measure_memory,
    profile_methods,
    run_rounds,
    summarise,
    verdict,
    verdict_text,
    write_json,
)
from torch import nn

BASELINE = "peft-lora"
ALL_METHODS = (BASELINE, "sam", "peft-shira", "peft-supertuning")
CASES = ("minilm", "linear")
MINILM_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
FILE_SLACK = 64 * 1024
MIB = 1024 * 1024
# glibc: every block over 64 KiB is mmapped and unmapped when freed, so the RSS follows the live tensors; otherwise
# freed memory stays resident and a setup that allocates a lot (SAM's calibration) hides the steps' own peak
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
QUICK = {
    "steps": 2,
    "warmup": 1,
    "round_steps": 1,
    "no_filter": True,
    "batch_size": 4,
    "seq_len": 16,
    "linear_size": 256,
    "linear_tokens": 32,
}


# ---------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "SAM sparse tuning against PEFT LoRA, SHiRA and Supertuning at equal trainable counts, on a "
            "MiniLM-L6-shaped BERT and on one square linear layer (CPU): saved-for-backward bytes, peak RSS growth "
            "during training steps, step time (rotating rounds with a contention filter) and adapter file size, "
            "side by side with ratios to LoRA."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=8,
        help="LoRA rank r; fixes the count C = sum r*(in+out) every method gets. 2r must stay below the width of "
        "the square layers (384 for minilm, --linear-size for linear).",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_METHODS,
        default=list(ALL_METHODS),
        help=f"Methods to compare; {BASELINE} (the reference of the ratios) is always included.",
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="Models to run.")
    add_timing_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="minilm: sequences per batch.")
    parser.add_argument("--seq-len", type=int, default=64, help="minilm: tokens per sequence.")
    parser.add_argument("--linear-size", type=int, default=2048, help="linear: in = out features of the layer.")
    parser.add_argument("--linear-tokens", type=int, default=256, help="linear: tokens per training batch.")
    parser.add_argument(
        "--saved-tokens", type=int, default=4, help="linear: tokens of the input of the saved-for-backward count."
    )
    parser.add_argument(
        "--calib-batches", type=int, default=2, help="SAM: random batches (of the training shape) to calibrate on."
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value.")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the base weights, the batches and the adapters.")
    parser.add_argument(
        "--target-saved-mib", type=float, default=0.1, help="Target: SAM saved-for-backward MiB per linear layer."
    )
    parser.add_argument(
        "--target-ratio", type=float, default=1.10, help="Target: SAM median step time <= this x PEFT LoRA's."
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="Skip the peak-RSS measurement (one fresh process per case and method, after the timing).",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="After the timing, profile one step of SAM and one of PEFT LoRA per case with torch.profiler and print "
        "the top operators by self CPU time (also stored in the JSON).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: tiny shapes (" + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + "), unless set "
        "explicitly.",
    )
    parser.add_argument(
        "--json", metavar="PATH", type=Path, default=None, help="Also write the results as JSON to PATH."
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide the tqdm progress bar.")
    argv = sys.argv[1:] if argv is None else argv
    if "--quick" in argv:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    counts = ("rank", "threads", "batch_size", "seq_len", "linear_size", "linear_tokens", "saved_tokens")
    check_timing_arguments(parser, args, positive=(*counts, "calib_batches"))
    check_positive(parser, args, ("lr", "target_ratio", "target_saved_mib"))
    check_json_path(parser, args.json)
    args.methods = [m for m in ALL_METHODS if m in set(args.methods) | {BASELINE}]
    args.cases = [c for c in CASES if c in args.cases]
    if "minilm" in args.cases:
        _minilm.check_seq_len(parser, args.seq_len)
    check_rank(parser, args)
    return args


def check_rank(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--rank` r must leave every adapted layer partly frozen: C = r·(in + out) per layer below in·out, i.e.
    2r < size for a square layer (SAM, SHiRA and Supertuning cannot select a whole layer or more)."""
    sizes = {"linear": args.linear_size, "minilm": _minilm.MODEL_SHAPE["hidden_size"]}  # minilm: its 384² layers
    for case in args.cases:
        if not 2 * args.rank < sizes[case]:
            parser.error(
                f"--rank must be < {sizes[case] / 2:g} for the {case} case (2·rank below its {sizes[case]}-wide "
                f"square layers), got {args.rank}"
            )


# ---------------------------------------------------------------------------------------------------------------
# models


class LinearProbe(nn.Module):
    """One square `nn.Linear` named `lin`; the loss is the MSE of its output to `labels`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.lin = nn.Linear(size, size)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        out = self.lin(x)
        return SimpleNamespace(loss=None if labels is None else F.mse_loss(out, labels), logits=out)


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*[Ss]parse.*support is in beta.*", category=UserWarning)


def build_base(case: str, args: argparse.Namespace) -> nn.Module:
    if case == "minilm":
        return _minilm.build_base(args.seed)
    torch.manual_seed(args.seed)
    return LinearProbe(args.linear_size)


def make_batch(case: str, args: argparse.Namespace, index: int = 0) -> dict:
    """Training batch (`index` 0) or calibration batch `index` >= 1 of a case."""
    if case == "minilm":
        return _minilm.make_batch(args.batch_size, args.seq_len, args.seed + 1000 * index)
    generator = torch.Generator().manual_seed(args.seed + 1 + 1000 * index)
    shape = (args.linear_tokens, args.linear_size)
    return {"x": torch.randn(shape, generator=generator), "labels": torch.randn(shape, generator=generator)}


def case_targets(case: str) -> list[str]:
    return MINILM_TARGETS if case == "minilm" else ["lin"]


def adapted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """`{path without the PEFT prefix: tuner layer}` of a PEFT model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name.removeprefix("base_model.model."): module
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and ".modules_to_save" not in name and hasattr(module, "base_layer")
    }


def supertuning_sparsity(numels: list[int], count: int) -> float:
    """The sparsity s whose Supertuning total Σ int(n·(1 − s)) is closest to `count` (bisection on s)."""

    def total(s: float) -> int:
        return sum(int(n * (1 - s)) for n in numels)

    low, high = 0.0, 1.0 - 1e-12  # total(low) >= count > total(high) for any count < Σ n
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if total(mid) >= count else (low, mid)
    return min((low, high), key=lambda s: (abs(total(s) - count), s))


def build_method(case: str, name: str, args: argparse.Namespace, plan: dict):
    """`(PEFT model, details)` of one method on a freshly seeded base; SAM is calibrated (wall time in details)."""
    from peft import LoraConfig, ShiraConfig, get_peft_model
    from peft.tuners.supertuning import SupertuningConfig

    pack = import_pack()
    base = build_base(case, args)
    task = {"task_type": "SEQ_CLS"} if case == "minilm" else {}
    targets = case_targets(case)
    torch.manual_seed(args.seed + 2)
    details: dict = {}
    if name == BASELINE:
        config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets, lora_dropout=0.0, **task)
        details["description"] = f"LoRA r={args.rank}"
    elif name == "peft-shira":
        config = ShiraConfig(r=args.rank, target_modules=targets, random_seed=args.seed, **task)
        details["description"] = f"SHiRA r={args.rank}, random mask"
    elif name == "peft-supertuning":
        config = SupertuningConfig(sparsity=plan["sparsity"], target_modules=targets, **task)
        details["description"] = f"Supertuning sparsity={plan['sparsity']:.6f}, magnitude top-k"
    else:
        # SAM's default targets (every linear of the blocks) are LoRA's on the BERT; the lone layer is named
        config = pack.SAMTuningConfig(
            budget=plan["count"], scope="global", target_modules=None if case == "minilm" else targets, **task
        )
        details["description"] = f"SAM budget={plan['count']}, global, {args.calib_batches} calibration batches"
    model = get_peft_model(base, config)
    if name == "sam":
        batches = [make_batch(case, args, index=i + 1) for i in range(args.calib_batches)]
        started = time.perf_counter()
        pack.calibrate_sam(model, batches, num_batches=args.calib_batches, show_progress=False)
        details["calibration_s"] = time.perf_counter() - started
    details["adapted_layers"] = sorted(adapted_layers(model))
    return model, details


def memory_setup(case: str, name: str, args: argparse.Namespace, plan: dict):
    """`(model, optimizer, batch)` of one method, for `measure_memory` (runs in a fresh process)."""
    _quiet_warnings()
    import_pack()
    model, _ = build_method(case, name, args, plan)
    return model, make_optimizer(model, args.lr), make_batch(case, args)


def plan_counts(case: str, args: argparse.Namespace) -> dict:
    """The equal-count plan: C from LoRA's rank on the adapted layers, Supertuning's sparsity for C."""
    base = build_base(case, args)
    lora_model, _ = build_method(case, BASELINE, args, {})
    layers = adapted_layers(lora_model)
    linears = [base.get_submodule(path) for path in layers]
    count = sum(args.rank * (m.in_features + m.out_features) for m in linears)
    numels = [m.weight.numel() for m in linears]
    return {
        "count": count,
        "layers": len(layers),
        "targeted_params": sum(numels),
        "base_params": sum(p.numel() for p in base.parameters()),
        "sparsity": supertuning_sparsity(numels, count),
    }


# ---------------------------------------------------------------------------------------------------------------
# saved-for-backward bytes


def _storages(tensor: torch.Tensor) -> list[tuple[int, int]]:
    """`(key, bytes)` of the memory blocks behind a tensor (its storage; the parts of a sparse tensor)."""
    if tensor.layout == torch.sparse_coo:
        return _storages(tensor._indices()) + _storages(tensor._values())
    if tensor.layout == torch.sparse_csr:
        return _storages(tensor.crow_indices()) + _storages(tensor.col_indices()) + _storages(tensor.values())
    try:
        storage = tensor.untyped_storage()
        return [(storage.data_ptr(), storage.nbytes())]
    except (RuntimeError, NotImplementedError):
        return [(id(tensor), tensor.numel() * tensor.element_size())]


def _owned(module: nn.Module) -> set[int]:
    return {key for t in [*module.parameters(), *module.buffers()] for key, _ in _storages(t.detach())}


def saved_bytes(run, exclude: set[int]) -> int:
    """Bytes of the unique storages that autograd saves while `run()` builds its graph, leaving out `exclude`."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        for key, nbytes in _storages(tensor):
            if key not in exclude:
                seen.setdefault(key, nbytes)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()  # noqa: F841 - the graph (and with it the saved storages) lives until the count is taken
        return sum(seen.values())


def layer_saved(layer: nn.Module, x: torch.Tensor) -> dict:
    """Saved-for-backward bytes of one adapted layer on input `x` (a fresh leaf requiring grad)."""
    x = x.detach().clone().requires_grad_(True)
    exclude = _owned(layer)
    return {
        "bytes": saved_bytes(lambda: layer(x), exclude),
        "bytes_beyond_input": saved_bytes(lambda: layer(x), exclude | {k for k, _ in _storages(x)}),
        "input_shape": list(x.shape),
    }


def minilm_saved(model: nn.Module, args: argparse.Namespace) -> dict:
    """Whole-model saved bytes minus the frozen base's (embedding output requiring grad), and per adapted layer."""
    batch = make_batch("minilm", args)
    model.train()
    torch.manual_seed(args.seed + 3)
    total = saved_bytes(lambda: model(**batch).loss, _owned(model))
    reference = build_base("minilm", args).train()
    for param in reference.parameters():
        param.requires_grad_(False)
    reference.classifier.requires_grad_(True)
    reference.bert.embeddings.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    torch.manual_seed(args.seed + 3)
    frozen = saved_bytes(lambda: reference(**batch).loss, _owned(reference))

    layers = adapted_layers(model)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda _m, a, path=path: inputs.setdefault(path, a[0].detach()))
        for path, layer in layers.items()
    ]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    per_layer = {path: layer_saved(layer, inputs.pop(path)) for path, layer in layers.items()}
    values = [v["bytes"] for v in per_layer.values()]
    beyond = [v["bytes_beyond_input"] for v in per_layer.values()]
    return {
        "model_bytes": total,
        "frozen_base_bytes": frozen,
        "model_delta_bytes": total - frozen,
        "layer_mean_bytes": sum(values) / len(values),
        "layer_max_bytes": max(values),
        "layer_mean_beyond_input_bytes": sum(beyond) / len(beyond),
        "layer_max_beyond_input_bytes": max(beyond),
        "per_layer": per_layer,
    }


def linear_saved(model: nn.Module, args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(args.seed + 4)
    x = torch.randn(args.saved_tokens, args.linear_size, generator=generator)
    (layer,) = adapted_layers(model).values()
    found = layer_saved(layer, x)
    frozen = layer_saved(layer.get_base_layer(), x)["bytes"]
    return {
        "layer_mean_bytes": found["bytes"],
        "layer_max_bytes": found["bytes"],
        "layer_mean_beyond_input_bytes": found["bytes_beyond_input"],
        "layer_max_beyond_input_bytes": found["bytes_beyond_input"],
        "frozen_layer_bytes": frozen,
        "input_shape": found["input_shape"],
    }


# ---------------------------------------------------------------------------------------------------------------
# adapter file


def adapter_file_bytes(model) -> int:
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))


# ---------------------------------------------------------------------------------------------------------------
# one case


def run_case(case: str, args: argparse.Namespace, load: ForeignLoad) -> dict:
    plan = plan_counts(case, args)
    methods: list[Method] = []
    facts: dict[str, dict] = {}
    for name in args.methods:
        model, details = build_method(case, name, args, plan)
        params, head = _minilm.method_params(model)
        saved = minilm_saved(model, args) if case == "minilm" else linear_saved(model, args)
        facts[name] = {**details, "saved": saved, "file_bytes": adapter_file_bytes(model)}
        methods.append(Method(name, details["description"], model, make_optimizer(model, args.lr), params, head))
        gc.collect()
    layer_sets = {name: tuple(f["adapted_layers"]) for name, f in facts.items()}
    if len(set(layer_sets.values())) != 1:
        raise RuntimeError(f"The methods adapt different layers: {layer_sets}")

    batch = make_batch(case, args)
    load_before = load_average()
    started = time.perf_counter()
    run = run_rounds(methods, batch, args, load)
    run["duration_s"] = time.perf_counter() - started
    run["load_average_before"], run["load_average_after"] = load_before, load_average()
    baseline = next(m for m in methods if m.name == BASELINE)
    rows = []
    for method in methods:
        row = summarise(method, baseline, run["filtering"])
        row.update(facts[method.name])
        row.pop("adapted_layers")
        rows.append(row)
    profiles = None
    if args.profile and "sam" in args.methods:
        profiles = profile_methods([m for m in methods if m.name in ("sam", BASELINE)], batch)
    for method in methods:  # free the timing models before the memory processes run
        method.model = method.optimizer = None
    del methods, baseline
    gc.collect()
    if not args.no_memory:
        jobs = {name: (case, name, args, plan) for name in args.methods}
        memory = measure_memory(memory_setup, jobs, args.threads, env=MALLOC_ENV)
        for row in rows:
            row.update(memory[row["method"]])
    return {
        "plan": plan,
        "adapted_layers": list(next(iter(layer_sets.values()))),
        "run": run,
        "results": rows,
        "profiles": profiles,
    }


# ---------------------------------------------------------------------------------------------------------------
# output


def _mib(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f} MiB"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference or math.isnan(value):
        return "-"
    return f"{value / reference:.2f}x"


def format_tables(case: str, result: dict, args: argparse.Namespace) -> str:
    rows = result["results"]
    base = next(r for r in rows if r["method"] == BASELINE)
    per_layer = f"per {args.linear_size}² layer" if case == "linear" else "mean per layer"
    header = (
        f"{'method':<17} {'trainable':>9} {'+head':>5} {'saved ' + per_layer:>21} {'x LoRA':>7} "
        f"{'beyond input':>12} {'model saved Δ':>13} {'step +RSS':>9} {'x LoRA':>7} {'peak RSS':>8} "
        f"{'file':>10} {'x LoRA':>7}"
    )
    lines = ["memory and size", header, "-" * len(header)]
    for row in rows:
        saved, reference = row["saved"], base["saved"]
        growth, base_growth = row.get("step_rss_growth_mib"), base.get("step_rss_growth_mib")
        lines.append(
            f"{row['method']:<17} {row['method_params']:>9,} {row['head_params']:>5} "
            f"{_mib(saved['layer_mean_bytes'] / MIB, 3):>21} "
            f"{_ratio(saved['layer_mean_bytes'], reference['layer_mean_bytes']):>7} "
            f"{_mib(saved['layer_mean_beyond_input_bytes'] / MIB, 3):>12} "
            f"{_mib(saved.get('model_delta_bytes', math.nan) / MIB, 1):>13} "
            f"{_mib(growth, 0):>9} {_ratio(growth, base_growth):>7} {_mib(row.get('peak_rss_mib'), 0):>8} "
            f"{row['file_bytes'] / 1024:>6.0f} KiB {_ratio(row['file_bytes'], base['file_bytes']):>7}"
        )
    header = (
        f"{'method':<17} {'clean':>7} {'median ms':>9} {'min ms':>8} {'p10-p90 ms':>15} {'x LoRA':>6} "
        f"{'paired x LoRA (range)':>21} {'min x LoRA':>10} {'CPU ms':>8} {'CPU x LoRA':>10}"
    )
    lines += ["", "step time (zero_grad + forward + backward + AdamW)", header, "-" * len(header)]
    for row in rows:
        paired = f"{row['paired_ratio_median']:.3f} ({row['paired_ratio_min']:.2f}-{row['paired_ratio_max']:.2f})"
        clean = f"{row['steps_clean']}/{row['steps_total']}" + ("!" if row["contended"] else "")
        lines.append(
            f"{row['method']:<17} {clean:>7} {row['median_ms']:>9.1f} {row['min_ms']:>8.1f} "
            f"{row['p10_ms']:>7.1f}-{row['p90_ms']:<7.1f} {row['ratio']:>6.3f} {paired:>21} "
            f"{row['min_ratio']:>10.3f} {row['cpu_median_ms']:>8.1f} {row['cpu_ratio']:>10.3f}"
        )
    return "\n".join(lines)


def check_targets(cases: dict, args: argparse.Namespace) -> dict:
    """SAM's targets per case: saved MiB per layer (`linear` case), step-time ratio, file bound."""
    targets = {}
    for case, result in cases.items():
        sam = next((r for r in result["results"] if r["method"] == "sam"), None)
        if sam is None:
            continue
        bound = sam["method_params"] * (4 + 4) + FILE_SLACK
        found = {
            "step_ratio": verdict(sam, args.target_ratio),
            "file_bytes": {"value": sam["file_bytes"], "limit": bound, "met": sam["file_bytes"] <= bound},
        }
        if case == "linear":
            mib = sam["saved"]["layer_mean_bytes"] / MIB
            found["saved_mib_per_layer"] = {
                "value": mib,
                "limit": args.target_saved_mib,
                "met": mib <= args.target_saved_mib,
            }
        targets[case] = found
    return targets


def describe_case(case: str, result: dict, args: argparse.Namespace) -> str:
    plan = result["plan"]
    if case == "minilm":
        shape = f"BERT {_minilm.MODEL_SHAPE}, 2 labels, batch {args.batch_size} x {args.seq_len}"
    else:
        shape = (
            f"one nn.Linear({args.linear_size}, {args.linear_size}), MSE loss; step batch ({args.linear_tokens}, "
            f"{args.linear_size}); saved-for-backward input ({args.saved_tokens}, {args.linear_size}) fp32"
        )
    sam = next((r for r in result["results"] if r["method"] == "sam"), None)
    calibration = f"; SAM calibration {sam['calibration_s']:.1f} s (not timed)" if sam else ""
    return (
        f"== {case}: {shape}\n"
        f"equal counts: LoRA r={args.rank} on {plan['layers']} layers -> C = {plan['count']:,} of "
        f"{plan['targeted_params']:,} targeted ({plan['count'] / plan['targeted_params']:.3%}); Supertuning sparsity "
        f"{plan['sparsity']:.6f}{calibration}"
    )


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet_warnings()
    torch.set_num_threads(args.threads)
    import_pack()
    load = ForeignLoad()
    filtering = not args.no_filter and load.available
    print(
        f"{args.threads} threads; {args.warmup} warm-up steps, then rounds of {args.round_steps} timed steps per "
        f"method until {args.steps} "
        + (
            f"clean steps each (other processes < {args.max_foreign_load:g} cores), at most {args.max_rounds} rounds"
            if filtering
            else f"steps each ({args.max_rounds} rounds, no contention filter)"
        )
    )
    cases = {}
    for case in args.cases:
        cases[case] = result = run_case(case, args, load)
        print()
        print(describe_case(case, result, args))
        print(format_tables(case, result, args))
        run = result["run"]
        print(
            f"{run['rounds']} rounds in {run['duration_s']:.0f} s; clean = timed steps during which other processes "
            f"used < {args.max_foreign_load:g} cores ('!': fewer than {MIN_CLEAN} clean; then all steps of it and "
            f"of LoRA are used for its ratios)"
            if filtering
            else f"{run['rounds']} rounds in {run['duration_s']:.0f} s; no contention filter"
        )
        if run.get("warning"):
            print(f"warning: {run['warning']}")
        if result["profiles"]:
            for name, table in result["profiles"].items():
                print(f"\ntorch.profiler, one {case} step of {name}, by self CPU time:\n{table}")

    targets = check_targets(cases, args)
    print("\nSAM targets:")
    for case, found in targets.items():
        for key, item in found.items():
            text = verdict_text(item) if "judged" in item else "MET" if item["met"] else "NOT MET"
            print(f"  {case:<7} {key:<19} {item['value']:>12,.3f} <= {item['limit']:<12,.3f} {text}")
    print(
        "saved: unique storages handed to saved_tensors_hooks during one forward, module parameters and buffers "
        "excluded; beyond input: the layer input's storage excluded too; model saved Δ: whole-model forward minus "
        "the frozen base's with its embedding output requiring grad; step +RSS: growth of VmHWM over 2 training "
        "steps in a fresh process; file: adapter_model.safetensors (with the classifier head for minilm)"
    )

    if args.json is not None:
        payload = {
            "benchmark": "sam_memory_speed",
            "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": environment(),
            "cases": cases,
            "targets": targets,
        }
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
