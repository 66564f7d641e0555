"""`S3PETSearchTrainer` fixes: the best checkpoint's α under a named adapter, constructor validation, stale search
figures, the α history's step numbers, and runnable docstring examples."""

import doctest
import importlib
import math
import warnings

import pytest
import torch
from peft import get_peft_model
from test_trainer_quantized import _args, _dataset
from tiny_models import make_model

import peft_designspace.s3pet.plot as s3pet_plot
from peft_designspace import S3PETConfig
from trainer_ext import S3PETSearchTrainer
from trainer_ext.s3pet_trainer import PLOT_FILE, STRUCTURE_FILE, TRAJECTORY_FILE


def _model(adapter_name: str = "default"):
    config = S3PETConfig(budget=600, task_type="SEQ_CLS")
    return get_peft_model(make_model("bert", "SEQ_CLS", layers=4), config, adapter_name=adapter_name)


def _trainer(output_dir, model=None, **kwargs) -> S3PETSearchTrainer:
    options = {"max_steps": 2, "save_steps": 100, **{k: kwargs.pop(k) for k in list(kwargs) if k not in _TRAINER}}
    data = _dataset("bert", "SEQ_CLS", n=16)
    return S3PETSearchTrainer(
        model=model if model is not None else _model(),
        args=_args(output_dir, **options),
        train_dataset=data,
        eval_dataset=data[:4],
        **kwargs,
    )


_TRAINER = {
    "search_fraction",
    "search_seed",
    "arch_learning_rate",
    "arch_max_grad_norm",
    "second_order",
    "structure_strategy",
    "compute_metrics",
}


def _live_alphas(trainer) -> list[torch.Tensor]:
    return [a.detach().clone() for a in trainer._alphas()]


# 1. the best checkpoint's α under a non-default adapter name ---------------------------------------------------------
def test_best_checkpoint_alpha_is_read_from_a_named_adapters_subfolder(tmp_path):
    trainer = _trainer(
        tmp_path,
        _model("search"),
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        metric_for_best_model="loss",
        greater_is_better=False,
    )
    trainer.train()
    trainer._best = None  # as after a resume from a checkpoint of an earlier version: the checkpoint's α is read
    best = trainer.state.best_model_checkpoint
    assert best is not None and (tmp_path / "checkpoint-2" / "search" / "adapter_model.safetensors").is_file()
    saved = _live_alphas(trainer)  # the best checkpoint is the last step's
    with torch.no_grad():  # move the live α away, so only the checkpoint's α gives `saved`
        for a in trainer._alphas():
            a.add_(torch.randn_like(a) * 5)
    structure = trainer.derive_structure(save=False)
    assert structure["from_checkpoint"] == best
    for got, want in zip(trainer._best_alphas(), saved):
        torch.testing.assert_close(got, want)
    expected = trainer._tuner().derive_structure(strategy="greedy", alpha=saved)
    assert structure["modules"] == expected["modules"]


def test_a_missing_best_checkpoint_file_warns_and_falls_back_to_the_live_alpha(tmp_path):
    trainer = _trainer(tmp_path / "out", _model("search"))
    (tmp_path / "gone").mkdir()
    trainer.state.best_model_checkpoint = str(tmp_path / "gone")
    with pytest.warns(UserWarning, match=r"gone.*search.*adapter_model\.safetensors.*live α"):
        structure = trainer.derive_structure(save=False)
    assert structure["from_checkpoint"] is None
    assert structure["modules"] == trainer._tuner().derive_structure(strategy="greedy")["modules"]


# 1b. the best evaluation's α whatever the saving schedule (a review of the T5 journey, 2026-11-25) ------------------
class _ScriptedMetric:
    """`compute_metrics` returning `score` values in turn; `alphas` records α at each evaluation, by step."""

    def __init__(self, scores: list[float]):
        self.scores, self.trainer, self.alphas = list(scores), None, {}

    def __call__(self, _prediction) -> dict:
        self.alphas[self.trainer.state.global_step] = [a.detach().clone() for a in self.trainer._alphas()]
        return {"score": self.scores.pop(0)}


def _scripted_trainer(tmp_path, scores, **kwargs):
    metric = _ScriptedMetric(scores)
    options = {"eval_strategy": "steps", "eval_steps": 2, "metric_for_best_model": "score", **kwargs}
    metric.trainer = _trainer(tmp_path, compute_metrics=metric, **options)
    return metric.trainer, metric


@pytest.mark.parametrize(
    ("save_steps", "scores", "best"), [(4, [0.1, 0.5, 0.9, 0.2], 6), (3, [0.1, 0.9, 0.5, 0.2], 4)]
)
def test_structure_comes_from_the_best_evaluation_when_its_step_was_not_saved(tmp_path, save_steps, scores, best):
    # evaluations at steps 2, 4, 6, 8; the best at a step that `save_steps` does not save: Trainer's best checkpoint
    # then names an older checkpoint (checkpoint-4, 0.5) or none at all
    trainer, metric = _scripted_trainer(tmp_path, scores, max_steps=8, save_steps=save_steps)
    trainer.train()
    structure = trainer.derive_structure(save=False)
    assert (structure["from_step"], structure["from_checkpoint"]) == (best, None)
    for got, want in zip(trainer._best_alphas(), metric.alphas[best]):
        torch.testing.assert_close(got, want.float())
    expected = trainer._tuner().derive_structure(strategy="greedy", alpha=metric.alphas[best])
    assert structure["modules"] == expected["modules"]


def test_a_resumed_search_keeps_the_best_evaluation_of_the_run_it_resumes(tmp_path):
    trainer, metric = _scripted_trainer(tmp_path, [0.1, 0.5, 0.9, 0.2], max_steps=8, save_steps=4)
    trainer.train()
    resumed, _ = _scripted_trainer(tmp_path, [0.3], max_steps=10, save_steps=4)  # step 10 does not beat 0.9
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    structure = resumed.derive_structure(save=False)
    assert structure["from_step"] == 6
    for got, want in zip(resumed._best_alphas(), metric.alphas[6]):
        torch.testing.assert_close(got, want.float())


def test_a_best_evaluation_at_a_saved_step_names_its_checkpoint(tmp_path):
    trainer, _ = _scripted_trainer(tmp_path, [0.1, 0.9, 0.2], max_steps=6, save_steps=2)
    trainer.train()
    structure = trainer.derive_structure(save=False)
    assert structure["from_step"] == 4
    assert structure["from_checkpoint"] == trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")


def test_a_checkpoint_of_an_earlier_run_at_the_best_step_is_not_named(tmp_path):
    """Trainer names `checkpoint-<best step>` as the best checkpoint when that folder exists, also when an earlier run
    in the same output folder left it and this run did not save the step: the structure named it as its source
    (a review of 2026-11-25)."""
    _trainer(tmp_path, max_steps=4, save_steps=2, seed=1).train()  # leaves checkpoint-2 and checkpoint-4
    trainer, metric = _scripted_trainer(tmp_path, [0.1, 0.9, 0.2], max_steps=6, save_steps=3)
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")  # the earlier run's folder
    structure = trainer.derive_structure(save=False)
    assert (structure["from_step"], structure["from_checkpoint"]) == (4, None)
    for got, want in zip(trainer._best_alphas(), metric.alphas[4]):
        torch.testing.assert_close(got, want.float())


def test_a_tie_with_the_best_evaluation_takes_the_later_alpha_as_the_reference(tmp_path):
    # the reference keeps the search at `score >= best`: among equal evaluations the latest; Trainer's own best
    # checkpoint keeps the first
    trainer, metric = _scripted_trainer(tmp_path, [0.5, 0.9, 0.9, 0.2], max_steps=8, save_steps=2)
    trainer.train()
    structure = trainer.derive_structure(save=False)
    assert (structure["from_step"], structure["from_checkpoint"]) == (6, str(tmp_path / "checkpoint-6"))
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    assert not all(torch.equal(a, b) for a, b in zip(metric.alphas[4], metric.alphas[6]))  # α moved in between
    for got, want in zip(trainer._best_alphas(), metric.alphas[6]):
        torch.testing.assert_close(got, want.float())
    # a checkpoint-6 that holds other α (left by an earlier run in the same folder) is not named
    from safetensors.torch import load_file, save_file

    weights_file = tmp_path / "checkpoint-6" / "adapter_model.safetensors"
    weights = {k: (v + 1 if k.endswith("s3pet_alpha") else v) for k, v in load_file(weights_file).items()}
    save_file(weights, weights_file)
    assert trainer.derive_structure(save=False)["from_checkpoint"] is None


# 2. constructor validation ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_model():
    return _model()


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"second_order": "no"}, TypeError, r"`second_order` must be a bool, got 'no'"),
        ({"second_order": 1}, TypeError, r"`second_order` must be a bool, got 1"),
        ({"arch_max_grad_norm": "2"}, TypeError, r"`arch_max_grad_norm` must be None or a finite .*got '2'"),
        ({"arch_max_grad_norm": math.nan}, ValueError, r"`arch_max_grad_norm` must be None or a finite .*got nan"),
        ({"arch_max_grad_norm": math.inf}, ValueError, r"`arch_max_grad_norm` must be None or a finite .*got inf"),
        ({"search_seed": None}, TypeError, r"`search_seed` must be .*int.*got None"),
        ({"search_seed": 1.5}, TypeError, r"`search_seed` must be .*int.*got 1\.5"),
        ({"search_seed": True}, TypeError, r"`search_seed` must be .*int.*got True"),
        ({"search_seed": 2**64}, ValueError, r"`search_seed` must be an int in \[-2\*\*63, 2\*\*64\), got 1844"),
        ({"search_fraction": "0.5"}, TypeError, r"`search_fraction` must be a .*number in \(0, 1\), got '0\.5'"),
        ({"search_fraction": 1.0}, ValueError, r"`search_fraction` must be a .*number in \(0, 1\), got 1\.0"),
        ({"search_fraction": math.nan}, ValueError, r"`search_fraction` must be a .*number in \(0, 1\), got nan"),
        ({"arch_learning_rate": "0.1"}, TypeError, r"`arch_learning_rate` must be a finite .*> 0, got '0\.1'"),
        ({"arch_learning_rate": math.inf}, ValueError, r"`arch_learning_rate` must be a finite .*> 0, got inf"),
        ({"arch_learning_rate": math.nan}, ValueError, r"`arch_learning_rate` must be a finite .*> 0, got nan"),
        ({"arch_learning_rate": 0}, ValueError, r"`arch_learning_rate` must be a finite .*> 0, got 0"),
        ({"structure_strategy": "best"}, ValueError, r"`structure_strategy` must be 'greedy' or 'knapsack'"),
        ({"structure_strategy": ["greedy"]}, TypeError, r"`structure_strategy` must be 'greedy' or 'knapsack'"),
    ],
)
def test_bad_trainer_keywords_are_refused_at_construction(tmp_path, shared_model, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        _trainer(tmp_path, shared_model, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"second_order": True},
        {"arch_max_grad_norm": None},
        {"arch_max_grad_norm": 0},
        {"arch_max_grad_norm": -1.0},
        {"arch_max_grad_norm": 1},
        {"search_seed": 0},
        {"search_seed": -1},  # torch takes it as 2**64 - 1
        {"search_fraction": 0.25, "arch_learning_rate": 1},
    ],
)
def test_good_trainer_keywords_are_kept(tmp_path, shared_model, kwargs):
    trainer = _trainer(tmp_path, shared_model, **kwargs)
    for name, value in kwargs.items():
        if name != "search_fraction":
            assert getattr(trainer, name) == value
    assert len(trainer.search_dataset) == (4 if "search_fraction" in kwargs else 8)


# 3. no stale search figures ---------------------------------------------------------------------------------------
PNG = b"\x89PNG old figure"


def test_derive_structure_without_history_removes_an_old_trajectory(tmp_path):
    trainer = _trainer(tmp_path)
    (tmp_path / TRAJECTORY_FILE).write_bytes(PNG)
    with pytest.warns(UserWarning, match=rf"removed .*{TRAJECTORY_FILE}"):
        trainer.derive_structure()
    assert not (tmp_path / TRAJECTORY_FILE).exists()
    assert (tmp_path / STRUCTURE_FILE).is_file() and (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


def test_derive_structure_without_history_and_no_old_figure_is_quiet(tmp_path):
    trainer = _trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.derive_structure()
    assert not (tmp_path / TRAJECTORY_FILE).exists()


def test_derive_structure_without_matplotlib_removes_the_old_figures(tmp_path, monkeypatch):
    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(s3pet_plot, "plot_structure", no_matplotlib)
    monkeypatch.setattr(s3pet_plot, "plot_trajectory", no_matplotlib)
    trainer = _trainer(tmp_path)
    trainer.p_history.append((1, torch.zeros(3)))  # a trajectory that would be drawn
    for name in (PLOT_FILE, TRAJECTORY_FILE):
        (tmp_path / name).write_bytes(PNG)
    with pytest.warns(UserWarning, match=rf"matplotlib.*removed .*{PLOT_FILE}.*{TRAJECTORY_FILE}"):
        trainer.derive_structure()
    assert (tmp_path / STRUCTURE_FILE).is_file()
    assert not (tmp_path / PLOT_FILE).exists() and not (tmp_path / TRAJECTORY_FILE).exists()


# 4. α-history step numbers ---------------------------------------------------------------------------------------
def test_alpha_history_is_labelled_with_the_optimizer_step_it_belongs_to(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3, save_steps=2)
    trainer.train()
    assert [step for step, _ in trainer.p_history] == [1, 2, 3]
    assert [entry["step"] for entry in trainer.search_log] == [1, 2, 3]
    # the α of checkpoint-2 is the α recorded for step 2
    trainer.state.best_model_checkpoint = str(tmp_path / "checkpoint-2")
    p, _, _ = trainer._tuner().keep_probabilities(alpha=trainer._best_alphas())
    torch.testing.assert_close(dict(trainer.p_history)[2], p.detach().float())


def test_skipped_alpha_steps_use_the_same_step_numbers(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, max_steps=2)
    monkeypatch.setattr(
        trainer, "_arch_gradients", lambda *args, **kwargs: [torch.full_like(a, math.nan) for a in trainer._alphas()]
    )
    trainer.train()
    assert trainer.search_log == [{"step": 1, "alpha_step_skipped": True}, {"step": 2, "alpha_step_skipped": True}]


# 5. docstring examples run under a doctest runner ---------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    ["trainer_ext.s3pet_trainer", "trainer_ext.s3pet_gradients", "trainer_ext.sam_callback", "trainer_ext.callbacks"],
)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    runner = doctest.DocTestRunner()
    report: list[str] = []
    tests = [t for t in doctest.DocTestFinder().find(mod) if t.examples]
    assert tests, f"{module} has no docstring examples"
    for test in tests:
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)


# auto_find_batch_size: a retry after an out-of-memory error is a new run (a review of Trainer features, 2026-11-25)
def test_a_retry_of_auto_find_batch_size_draws_search_batches_of_its_own_size(tmp_path, monkeypatch):
    import transformers

    raised, step = [], transformers.Trainer.training_step

    def out_of_memory_once(self, *args, **kwargs):
        if not raised:
            raised.append(1)
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 byte (simulated)")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", out_of_memory_once)
    trainer = _trainer(tmp_path, auto_find_batch_size=True, per_device_train_batch_size=4, max_steps=-1)
    trainer.args.num_train_epochs = 2
    sizes, draw = [], trainer._next_search_inputs
    trainer._next_search_inputs = lambda: (lambda batch: (sizes.append(len(batch["input_ids"])), batch)[1])(draw())
    trainer.train()
    assert raised and trainer._train_batch_size == 3
    assert sizes[0] == 4 and set(sizes[1:]) == {3}  # the failed attempt's first α batch, then the retry's size
    steps = trainer.state.global_step
    assert [e["step"] for e in trainer.search_log] == list(range(1, steps + 1))  # the failed attempt's step dropped
    assert [s for s, _ in trainer.p_history] == list(range(1, steps + 1))
    rates = [e["alpha_learning_rate"] for e in trainer.search_log]  # the retry's schedule spans its own steps
    assert rates == pytest.approx([0.1 * (1 - i / steps) for i in range(steps)])


def test_derive_structure_refuses_an_empty_strategy_and_non_bool_flags(tmp_path):
    # strategy="" ran greedy, and from_best="no" / save="no" counted as True (a bad-input fuzz, 2026-11-25)
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match=r"`strategy` must be 'greedy' or 'knapsack', got ''"):
        trainer.derive_structure(strategy="", save=False)
    for flag in ("from_best", "save"):
        with pytest.raises(TypeError, match=rf"`{flag}` must be True or False, got 'no'"):
            trainer.derive_structure(**{flag: "no"})
    assert not (tmp_path / "s3pet_structure.json").exists()
