"""One run of the suite: train one experiment on one task with one learning rate and seed, evaluate, measure.

`train_run(...)` returns the `train_info` of the result JSON (see `run.py`): the validation metric after every
evaluation, the final validation and dev metrics, trainable parameters (method and head apart), the median step
time, peak memory during training and the adapter file size.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import tempfile
import threading
import time
from typing import Any

import torch
from backbones import load_classifier
from plan import build_config, method_params
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback

from trainer_ext import SAMCalibrationCallback, glue_metric


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_reader():
    """Bytes the C heap has handed out now (glibc `mallinfo2`: in-use chunks + mmapped blocks), or None.

    Unlike RSS, this falls when tensors are freed, so a peak can be taken per run inside one long-lived process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def read() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return read


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_HEAP = _heap_reader()


class PeakMemory:
    """Peak memory while a block runs: CUDA's allocator peak on GPU; on CPU the peak of the bytes allocated on the C
    heap (glibc `mallinfo2`, or RSS elsewhere), sampled every 10 ms.

    `growth_mib` is the peak minus the level when the block started: activations, gradients and optimizer state.
    `mark()` closes the set-up phase (e.g. SAM's calibration in `on_train_begin`): `setup_peak_mib` is the peak
    before it and `steps_peak_mib` the peak after it (training steps and evaluations), so a method's one-off set-up
    cost is not mistaken for its per-step memory. Without a mark, both are None.
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.read = _HEAP or _rss_bytes
        self.kind = (
            "cuda max_memory_allocated"
            if self.cuda
            else ("C heap in use (glibc mallinfo2, sampled 10 ms)" if _HEAP else "process RSS (sampled 10 ms)")
        )
        self.start = 0
        self._peaks: list[int] = []  # one peak per phase: [whole block] or [set-up, steps]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _current(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self.read()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            phase = len(self._peaks) - 1
            self._peaks[phase] = max(self._peaks[phase], self.read())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.read()
        self._peaks = [self.start]  # set before the sampler starts: it updates the last phase
        if not self.cuda:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def mark(self) -> None:
        """End the set-up phase: later peaks count as the steps' peak. Only the first call counts."""
        if len(self._peaks) != 1:
            return
        self._peaks[0] = max(self._peaks[0], self._current())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._peaks.append(torch.cuda.memory_allocated())
        else:
            self._peaks.append(self.read())

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._peaks[-1] = max(self._peaks[-1], self._current())

    @property
    def peak(self) -> int:
        return max(self._peaks)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 2**20

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    @property
    def setup_peak_mib(self) -> float | None:
        return self._peaks[0] / 2**20 if len(self._peaks) > 1 else None

    @property
    def steps_peak_mib(self) -> float | None:
        return self._peaks[1] / 2**20 if len(self._peaks) > 1 else None

    @property
    def steps_growth_mib(self) -> float | None:
        return (self._peaks[1] - self.start) / 2**20 if len(self._peaks) > 1 else None


class StepRecorder(TrainerCallback):
    """Wall time of every optimizer step (evaluations excluded), the validation metric of every evaluation and an
    optional progress callback."""

    def __init__(self, metric_key: str, on_step=None, memory: PeakMemory | None = None) -> None:
        self.metric_key = metric_key
        self.memory = memory  # marked at the first step, after any set-up in `on_train_begin`
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []
        self.evaluations: list[dict] = []
        self.losses: list[float] = []
        self.on_step = on_step
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.memory is not None:
            self.memory.mark()
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.step_seconds.append(time.perf_counter() - self._start[0])
            self.step_cpu_seconds.append(time.process_time() - self._start[1])
        if self.on_step is not None:
            self.on_step(state.global_step, state.max_steps)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and self.metric_key in metrics:
            self.evaluations.append({"step": state.global_step, "value": float(metrics[self.metric_key])})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _file_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def saved_size(model) -> int:
    """Bytes of the safetensors file(s) a user would share: the adapter, or the whole model for full fine-tuning."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return _file_bytes(folder)


def build_model(
    backbone_dir: str, config: dict | None, structure: dict | None, device: str, quantization: str | None = None
):
    """`(model, tokenizer)`: the 2-label classifier, wrapped by the experiment's PEFT config (None: full FT)."""
    from peft import get_peft_model

    model, tokenizer = load_classifier(backbone_dir, quantization=quantization)
    if quantization is None:
        model = model.to(device)  # bitsandbytes places quantized weights itself
    if config is not None:
        if structure is not None:
            config = {**config, "structure": structure, "budget": structure["budget"]}
        model = get_peft_model(model, build_config(config))
    return model, tokenizer


def train_run(
    *,
    backbone_dir: str,
    config: dict | None,
    task: str,
    data: dict[str, Any],
    params: dict,
    learning_rate: float,
    seed: int,
    device: str = "cpu",
    structure: dict | None = None,
    output_dir: str,
    quantization: str | None = None,
    on_step=None,
) -> dict:
    """Train and evaluate one run; `data` holds tokenized `train`, `validation` and `dev` datasets."""
    from trainer_ext.glue import TASKS

    set_seed(seed)
    model, tokenizer = build_model(backbone_dir, config, structure, device, quantization)
    method, head = method_params(model) if config is not None else _full_counts(model)
    metric_name = TASKS[task]["metric"]
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=params["max_steps"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=params["eval_batch_size"],
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=params["warmup_ratio"],
        weight_decay=params["weight_decay"],
        max_grad_norm=params["max_grad_norm"],
        eval_strategy="steps",
        eval_steps=params["eval_every"],
        save_strategy="no",
        logging_steps=max(1, params["eval_every"] // 2),
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        use_cpu=device == "cpu",
    )
    memory = PeakMemory(device)
    recorder = StepRecorder(f"eval_{metric_name}", on_step, memory)
    callbacks: list = [recorder]
    is_sam = config is not None and config["peft_type"] == "SAMTUNING"
    if is_sam:
        callbacks.append(SAMCalibrationCallback(params["sam_calibration_batches"]))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue_metric(task),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to the result JSON, not to stdout
    start = time.perf_counter()
    with memory:
        trainer.train()
    train_seconds = time.perf_counter() - start
    if not recorder.evaluations or recorder.evaluations[-1]["step"] != params["max_steps"]:
        trainer.evaluate()  # the final validation number, when max_steps is not a multiple of eval_every
    dev = trainer.evaluate(eval_dataset=data["dev"], metric_key_prefix="dev")
    # SAM calibrates in `on_train_begin`, before the first timed step (its time is in `train_seconds`).
    skip = params["timing_warmup_steps"] if len(recorder.step_seconds) > params["timing_warmup_steps"] else 0
    warm, warm_cpu = recorder.step_seconds[skip:], recorder.step_cpu_seconds[skip:]
    return {
        "metric": metric_name,
        "val_metrics": recorder.evaluations,
        "val_metric": recorder.evaluations[-1]["value"],
        "dev_metric": float(dev[f"dev_{metric_name}"]),
        "dev_accuracy": float(dev["dev_accuracy"]),
        "train_loss": recorder.losses[-1] if recorder.losses else None,
        "trainable_params": method,
        "head_params": head,
        "step_time_s": statistics.median(warm),
        "step_cpu_time_s": statistics.median(warm_cpu),  # process CPU time: robust to other jobs on the machine
        "step_time_steps": len(warm),
        "train_seconds": train_seconds,
        "peak_memory_mib": memory.peak_mib,
        "train_memory_growth_mib": memory.growth_mib,
        "setup_peak_memory_mib": memory.setup_peak_mib,  # before the first step (SAM: its calibration)
        "steps_peak_memory_mib": memory.steps_peak_mib,  # from the first step on
        "steps_memory_growth_mib": memory.steps_growth_mib,
        "memory_kind": memory.kind,
        "adapter_file_bytes": saved_size(model),
    }


def _full_counts(model) -> tuple[int, int]:
    from plan import head_names

    heads = set(head_names(model))
    head = sum(p.numel() for n, p in model.named_parameters() if n in heads)
    return sum(p.numel() for p in model.parameters()) - head, head
