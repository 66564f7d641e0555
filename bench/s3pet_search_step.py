"""Cost of one S3PET search step against one PEFT LoRA training step, and the memory it needs (no model copy).

Model: the MiniLM-L6-shaped BERT of `bench/_minilm.py` (random init, 2 labels); batch `--batch-size` x
`--seq-len`; CPU, `--threads` threads. Methods:

- `peft-lora`: PEFT LoRA rank `--lora-rank` on query and value (the usual baseline), one plain step;
- `s3pet-search`: one first-order S3PET search step as `S3PETSearchTrainer` runs it: an α step (forward and
  backward on a search batch, α gradient only, AdamW on α), then a weight step (forward, backward, AdamW on the
  deltas), with the whole search space (`--space`) gated at `--budget`;
- `s3pet-search-2nd`: the same with the second-order DARTS approximation (four extra passes);
- `s3pet-apply`: one plain step of an applied structure of the same budget (the retraining phase).

Memory: peak RSS of a fresh process per method, and the parameter bytes of the model (base + deltas + α), to show
that the search keeps one model only (the reference code holds a second full model for the virtual step). With
`--device cuda`, the CUDA allocator's peak per method in this process instead, and a synchronize after every timed
step.

Example:

```
python bench/s3pet_search_step.py --json bench/results/s3pet_search_step.json
```
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _minilm import MODEL_SHAPE, build_base, check_seq_len, make_batch, meta_base, method_params  # noqa: E402
from _timing import (  # noqa: E402
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
    run_rounds,
    summarise,
    train_step,
    verdict,
    verdict_text,
    write_json,
)

BASELINE = "peft-lora"
METHODS = (BASELINE, "s3pet-search", "s3pet-search-2nd", "s3pet-apply")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one S3PET search step (gates + deltas) against one PEFT LoRA step on a MiniLM-shaped "
        "BERT on CPU, and measure peak memory per method in fresh processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help=f"Methods to run (in this order, duplicates dropped); must include {BASELINE}, the reference of the "
        "ratios.",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=1.389e-4,
        help="S3PET budget: a fraction of the backbone's parameters in (0, 1), or a whole count >= 1; at least the "
        "smallest candidate of --space.",
    )
    parser.add_argument("--space", default="m", choices=("m", "l"), help="S3PET search space.")
    parser.add_argument("--lora-rank", type=int, default=8, help="Rank of the PEFT LoRA baseline (query, value).")
    parser.add_argument("--batch-size", type=int, default=32, help="Sequences per batch.")
    parser.add_argument("--seq-len", type=int, default=64, help="Tokens per sequence.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="Where the models and batches live. On cuda every timed step ends with a synchronize, and memory is "
        "the CUDA allocator's peak per method in this process (not a fresh process's RSS); use --no-filter there "
        "(the contention filter watches the CPU).",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Learning rate of the weight optimizers.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model and batches.")
    parser.add_argument(
        "--optim",
        default="adamw_torch_fused",
        choices=("adamw_torch_fused", "adamw_torch"),
        help="AdamW kernel of every optimizer (weights and α), as `TrainingArguments(optim=...)`; Trainer's default "
        "with torch >= 2.8 is the fused one.",
    )
    parser.add_argument("--target-ratio", type=float, default=2.0, help="Target of search step / LoRA step.")
    parser.add_argument("--no-memory", action="store_true", help="Skip the fresh-process memory measurement.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results as JSON here.")
    add_timing_arguments(parser, steps=10)
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args, positive=("lora_rank", "batch_size", "seq_len", "threads"))
    check_positive(parser, args, ("lr", "target_ratio"))
    check_seq_len(parser, args.seq_len)
    check_json_path(parser, args.json)
    if BASELINE not in args.methods:
        parser.error(f"--methods must include the baseline {BASELINE!r}, got {' '.join(args.methods)}")
    args.methods = [m for m in METHODS if m in args.methods]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
    if any(m != BASELINE for m in args.methods):
        check_budget(parser, args)
    return args


def check_budget(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--budget` must be a fraction in (0, 1) or a whole count >= 1 that fits the search space (at least its
    smallest candidate, less than all of it), checked on the model's shape on the meta device."""
    budget = args.budget
    if not (math.isfinite(budget) and budget > 0) or (budget >= 1 and budget != int(budget)):
        parser.error(f"--budget must be a fraction in (0, 1) or a whole count >= 1, got {budget:g}")
    import_pack()
    from peft_designspace.s3pet.model import count_base_parameters, resolve_search_budget
    from peft_designspace.s3pet.space import enumerate_candidates

    base = meta_base()
    candidates = enumerate_candidates(base, args.space)
    try:
        resolve_search_budget(int(budget) if budget >= 1 else budget, count_base_parameters(base), candidates)
    except ValueError as error:
        parser.error(f"--budget {budget:g} does not fit search space {args.space!r}: {error}")


def _search_step(model, optimizer, arch_optimizer, alphas, search_batch, second_order: bool, lr: float):
    """The step of `S3PETSearchTrainer` without the Trainer around it: α step on `search_batch`, then weights.

    The α gradients come from the trainer's own functions (`trainer_ext/s3pet_gradients.py`).
    """
    from trainer_ext.s3pet_gradients import (
        adam_virtual_step,
        alpha_only_gradients,
        darts_alpha_gradients,
        output_loss,
    )

    loss_fn = output_loss(model)
    virtual_step = adam_virtual_step(optimizer) if second_order else None  # the trainer's default

    def step(batch: dict) -> None:
        if second_order:
            grads = darts_alpha_gradients(model, alphas, loss_fn, batch, search_batch, lr, virtual_step=virtual_step)
        else:
            grads = alpha_only_gradients(model, alphas, lambda: loss_fn(search_batch))
        for a, g in zip(alphas, grads):
            a.grad = g
        arch_optimizer.step()
        arch_optimizer.zero_grad(set_to_none=True)
        for a in alphas:
            a.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(batch).backward()
        optimizer.step()
        for a in alphas:
            a.requires_grad_(True)

    return step


def build(name: str, args: argparse.Namespace):
    """`(model, optimizer, batch, step or None, description, details)` of one method."""
    import torch
    from peft import LoraConfig, get_peft_model

    from peft_designspace import S3PETConfig

    batch = _to(make_batch(args.batch_size, args.seq_len, args.seed), args.device)
    base = build_base(args.seed).to(args.device)
    fused = args.optim == "adamw_torch_fused"
    if name == BASELINE:
        model = get_peft_model(
            base, LoraConfig(r=args.lora_rank, target_modules=["query", "value"], task_type="SEQ_CLS")
        ).to(args.device)
        return model, make_optimizer(model, args.lr, fused), batch, None, f"PEFT LoRA r={args.lora_rank} q,v", {}
    if name == "s3pet-apply":
        search = get_peft_model(build_base(args.seed), S3PETConfig(budget=args.budget, search_space=args.space))
        structure = search.base_model.derive_structure()
        model = get_peft_model(base, S3PETConfig(structure=structure, task_type="SEQ_CLS")).to(args.device)
        details = {"modules": len(structure["modules"]), "structure_params": structure["total"]}
        return model, make_optimizer(model, args.lr, fused), batch, None, "applied structure, plain step", details
    model = get_peft_model(base, S3PETConfig(budget=args.budget, search_space=args.space, task_type="SEQ_CLS"))
    model.to(args.device)
    alphas = model.base_model.architecture_parameters()
    for a in alphas:
        a.requires_grad_(False)
    optimizer = make_optimizer(model, args.lr, fused)
    for a in alphas:
        a.requires_grad_(True)
    arch_optimizer = torch.optim.AdamW(alphas, lr=0.1, weight_decay=0.0, fused=fused or None)
    search_batch = _to(make_batch(args.batch_size, args.seq_len, args.seed + 100), args.device)
    second = name == "s3pet-search-2nd"
    step = _search_step(model, optimizer, arch_optimizer, alphas, search_batch, second, args.lr)
    candidates = model.base_model.candidates()
    details = {
        "candidates": len(candidates),
        "candidate_params": sum(c.size for c in candidates),
        "alpha_params": sum(a.numel() for a in alphas),
        "budget_params": model.base_model.search_budget(),
    }
    order = "second" if second else "first"
    return model, optimizer, batch, step, f"{order}-order search step (α + weights), space {args.space}", details


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _synchronized(method: Method) -> None:
    """Make `method`'s step wait for the GPU, so that wall time covers the kernels it queued."""
    import torch

    inner = method.step or (lambda batch: train_step(method.model, method.optimizer, batch))

    def step(batch: dict) -> None:
        inner(batch)
        torch.cuda.synchronize()

    method.step = step


def cuda_memory(methods: list[Method], batch: dict, steps: int = 2) -> dict[str, tuple[float, float]]:
    """`{name: (peak allocated MiB, growth over the allocation before the steps MiB)}` from the CUDA allocator.

    All methods' models stay resident, so the growth is the figure to compare; the peak includes the other models.
    """
    import torch

    results = {}
    for method in methods:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        for _ in range(steps):
            method.run_step(batch)
        peak = torch.cuda.max_memory_allocated()
        results[method.name] = (peak / 2**20, (peak - start) / 2**20)
    return results


def memory_setup(name: str, args: argparse.Namespace):
    model, optimizer, batch, step, _, _ = build(name, args)
    return (model, optimizer, batch) if step is None else (model, optimizer, batch, step)


def _cuda_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def parameter_mib(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import_pack()
    import warnings

    warnings.filterwarnings("ignore")
    base_mib = parameter_mib(build_base(args.seed))
    methods = []
    for name in args.methods:
        model, optimizer, batch, step, description, details = build(name, args)
        params, head = method_params(model)
        details["model_param_mib"] = round(parameter_mib(model), 3)
        methods.append(Method(name, description, model, optimizer, params, head, details, step=step))
    baseline = next(m for m in methods if m.name == BASELINE)
    if args.device == "cuda":
        for method in methods:
            _synchronized(method)
    load = ForeignLoad()
    batch = _to(make_batch(args.batch_size, args.seq_len, args.seed), args.device)
    load_before = load_average()
    started = time.perf_counter()
    run = run_rounds(methods, batch, args, load)
    run["duration_s"] = time.perf_counter() - started
    rows = [summarise(m, baseline, run["filtering"]) for m in methods]
    memory = None
    if not args.no_memory and args.device == "cuda":
        memory = cuda_memory(methods, batch)
        for row in rows:  # the CUDA allocator's figures, under the same keys as the RSS ones
            row["peak_rss_mib"], row["step_rss_growth_mib"] = memory[row["method"]]
            row["memory_source"] = "cuda_max_memory_allocated"
    elif not args.no_memory:
        for method in methods:
            method.model = method.optimizer = method.step = None
        gc.collect()
        memory = measure_memory(memory_setup, {name: (name, args) for name in args.methods}, args.threads)
        for row in rows:
            row.update(memory[row["method"]])

    where = f"{args.threads} threads" if args.device == "cpu" else f"CUDA ({_cuda_name()})"
    print(
        f"Base: BERT {MODEL_SHAPE}, {base_mib:.1f} MiB of parameters; "
        f"batch {args.batch_size} x {args.seq_len}, {where}"
    )
    header = f"{'method':18} {'trainable':>10} {'model MiB':>9} {'median ms':>10} {'ratio':>6} {'clean':>6}"
    if memory:
        header += (
            f" {'peak RSS':>9} {'step +RSS':>9}" if args.device == "cpu" else f" {'peak CUDA':>9} {'step +CUDA':>10}"
        )
    print(header)
    for row in rows:
        line = (
            f"{row['method']:18} {row['method_params']:>10,} {row['details']['model_param_mib']:>9.2f} "
            f"{row['median_ms']:>10.1f} {row['ratio']:>6.2f} {row['steps_clean']:>3}/{row['steps_total']:<2}"
        )
        if memory:
            line += f" {_mib(row['peak_rss_mib']):>9} {_mib(row['step_rss_growth_mib']):>9}"
        print(line)
    if run.get("warning"):
        print(f"warning: {run['warning']}")
    search = next((r for r in rows if r["method"] == "s3pet-search"), None)
    target = None
    if search is not None:
        target = verdict(search, args.target_ratio)
        print(
            f"\nS3PET first-order search step / PEFT LoRA step: {search['ratio']:.2f} (paired "
            f"{search['paired_ratio_median']:.2f}); target <= {args.target_ratio:g}: {verdict_text(target)}"
        )
    if args.json is not None:
        payload = {
            "benchmark": "s3pet_search_step",
            "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {**environment(), "load_average_before": load_before, "load_average_after": load_average()},
            "model": {**MODEL_SHAPE, "num_labels": 2, "base_param_mib": base_mib},
            "run": run,
            "results": rows,
            "target": target,
        }
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
