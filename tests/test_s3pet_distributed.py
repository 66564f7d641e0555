"""Under torch.distributed the S3PET search averages α's gradients over the ranks, and each rank searches other rows.

Two CPU processes (gloo over loopback, file rendezvous) run `S3PETSearchTrainer` as `Trainer` runs it under DDP:
each rank gets half of the training rows and half of every search batch. After two search steps both ranks must
hold the same α and deltas, equal to what one process computes with batches of both halves. The gate noise is
switched off (`z = p`) in both runs: it is drawn from each process's random stream, which the two set-ups consume
differently, and it is not what this test is about.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import common
import pytest
import torch
from peft import get_peft_model
from test_trainer_quantized import _dataset
from tiny_models import make_model
from transformers import TrainingArguments

import peft_designspace.s3pet.model as s3pet_model
from peft_designspace import S3PETConfig
from trainer_ext import S3PETSearchTrainer

GLOBAL_BATCH = 8  # 16 rows: 8 train the deltas, 8 the gates; one step = all of each half

WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import torch, torch.distributed as dist
    import peft_designspace.s3pet.model as s3pet_model
    from test_s3pet_distributed import fixed_gates, run_search

    rank = int(sys.argv[1])
    torch.set_num_threads(1)
    s3pet_model.sample_gates = fixed_gates
    dist.init_process_group("gloo", init_method={init!r}, rank=rank, world_size=2)
    results = {{f: run_search({output_dir!r} + f"{{f}}-{{rank}}", 2, f) for f in {settings!r}}}
    with open({out!r} + str(rank), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()
    """
)


def fixed_gates(p, generator=None):
    return p


class _RecordingTrainer(S3PETSearchTrainer):
    """Records the rows of each search batch and the (averaged, clipped) α gradient of each α step."""

    def _next_search_inputs(self) -> dict:
        inputs = super()._next_search_inputs()
        self.search_rows.append(sorted(map(tuple, inputs["input_ids"].tolist())))
        return inputs

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if not getattr(self, "_recording", False):
            self._recording = True
            self.arch_optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: self.alpha_grads.append([a.grad.tolist() for a in self._alphas()])
            )
        return optimizer


def run_search(output_dir: str, world: int, setting: str = "None") -> dict:
    """Two search steps on this process's share of 16 rows; what each α step saw and the state after the search.

    `setting`: Trainer's `ddp_find_unused_parameters` (`"None"`, `"False"`), or `"model_init"`: False, with the model
    built by `model_init` at `train()` (not the one given at construction)."""

    def build():
        base = make_model("bert", "SEQ_CLS", layers=2)
        for module in base.modules():  # no dropout: the two set-ups draw different masks
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        # non-zero deltas, so that α's gradient is not zero at the first step
        return get_peft_model(base, S3PETConfig(budget=300, task_type="SEQ_CLS", init_weights=False))

    find_unused = None if setting == "None" else False
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=GLOBAL_BATCH // world,
        learning_rate=1e-2,
        max_steps=2,
        max_grad_norm=2.0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        ddp_find_unused_parameters=find_unused,
        average_tokens_across_devices=False,  # else Trainer scales a mean loss by the world size
    )
    data = _dataset("bert", "SEQ_CLS", n=16)
    if setting == "model_init":
        trainer = _RecordingTrainer(model_init=build, args=args, train_dataset=data)
    else:
        trainer = _RecordingTrainer(model=build(), args=args, train_dataset=data)
    trainer.search_rows, trainer.alpha_grads = [], []
    trainer.train()
    model = trainer.model
    return {
        "search_rows": trainer.search_rows,
        "alpha_grads": trainer.alpha_grads,
        "alpha": [a.tolist() for a in model.base_model.architecture_parameters()],
        "deltas": {n: p.tolist() for n, p in model.named_parameters() if p.requires_grad and "s3pet_alpha" not in n},
    }


def _loopback_interface() -> str:
    return next(name for _, name in socket.if_nameindex() if name.startswith("lo"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a, b, **tolerances) -> None:
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), **tolerances)


# find_unused_parameters: Trainer's default for a PeftModel (None → True), and False (DDP must then ignore α), also
# for a model that `model_init` builds at `train()`
SETTINGS = ("None", "False", "model_init")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both settings in one pair of rank processes (imports dominate), and the single-process reference."""
    tmp_path = tmp_path_factory.mktemp("s3pet_ddp")
    code = WORKER.format(
        tests=str(common.ROOT / "tests"),
        init=f"file://{tmp_path / 'rendezvous'}",
        output_dir=str(tmp_path / "out"),
        settings=SETTINGS,
        out=str(tmp_path / "result"),
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(common.ROOT),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "GLOO_SOCKET_IFNAME": _loopback_interface(),  # gloo's connections stay on loopback
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(r)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"result{r}").read_text()) for r in range(2)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3pet_model, "sample_gates", fixed_gates)
        single = run_search(str(tmp_path / "single"), world=1)
    return ranks, single


@pytest.mark.parametrize("setting", SETTINGS)
def test_ranks_average_alpha_gradients_like_one_process_on_all_rows(runs, setting):
    ranks, single = runs
    rank0, rank1 = (r[setting] for r in ranks)
    # each rank searched other rows
    for rows0, rows1 in zip(rank0["search_rows"], rank1["search_rows"]):
        assert len(rows0) == len(rows1) == GLOBAL_BATCH // 2 and not set(map(tuple, rows0)) & set(map(tuple, rows1))
    # ... yet both hold the same gradients and end with the same α and deltas
    assert rank0["alpha_grads"] == rank1["alpha_grads"] and len(rank0["alpha_grads"]) == 2
    assert rank0["alpha"] == rank1["alpha"]
    assert rank0["deltas"] == rank1["deltas"]

    for step, rows in enumerate(single["search_rows"]):  # one process, whole batches: both ranks' rows
        assert sorted(map(tuple, rows)) == sorted(map(tuple, rank0["search_rows"][step] + rank1["search_rows"][step]))
    for step, (mine, theirs) in enumerate(zip(single["alpha_grads"], rank0["alpha_grads"])):
        flat_mine = torch.tensor([g for part in mine for g in part])
        assert flat_mine.abs().max() > 1e-6, f"α's gradient is zero at step {step}: the test would prove nothing"
        _close(flat_mine, [g for part in theirs for g in part], atol=1e-9, rtol=1e-4)
    for mine, theirs in zip(single["alpha"], rank0["alpha"]):
        _close(mine, theirs, atol=1e-6, rtol=1e-4)
    for name, value in single["deltas"].items():
        _close(value, rank0["deltas"][name], atol=1e-6, rtol=1e-4)
