"""`S3PETSearchTrainer` across runs and Trainer options: repeated `train()` calls, `model_init`, label smoothing in the
second-order step, α clipping switched off, and the second-order step's shared random draws."""

import pytest
import torch
from peft import get_peft_model
from test_trainer_quantized import _args, _dataset
from tiny_models import make_inputs, make_model
from torch.utils.data import IterableDataset

import peft_designspace.s3pet.model as s3pet_model
from peft_designspace import S3PETConfig
from trainer_ext import S3PETSearchTrainer
from trainer_ext.s3pet_gradients import darts_alpha_gradients, output_loss


def _model(init_weights: bool = True):
    config = S3PETConfig(budget=900, task_type="SEQ_CLS", init_weights=init_weights)
    return get_peft_model(make_model("bert", "SEQ_CLS"), config)


def _trainer(tmp_path, model=None, **kwargs):
    options = {"max_steps": 4, "save_steps": 100}
    trainer_options = {k: kwargs.pop(k) for k in list(kwargs) if k in ("second_order", "arch_max_grad_norm")}
    return S3PETSearchTrainer(
        model=model,
        args=_args(tmp_path, **{**options, **kwargs}),
        train_dataset=_dataset("bert", "SEQ_CLS", n=16),
        **trainer_options,
    )


def _alpha_learning_rates(trainer) -> list[float]:
    return [e["alpha_learning_rate"] for e in trainer.state.log_history if "alpha_learning_rate" in e]


def test_a_second_train_call_decays_alpha_afresh_and_moves_alpha(tmp_path):
    model = _model()
    trainer = _trainer(tmp_path / "run", model)
    trainer.train()
    first = _alpha_learning_rates(trainer)
    before = torch.cat([a.detach().reshape(-1) for a in model.base_model.architecture_parameters()]).clone()
    trainer.train()  # a new TrainerState, so a new log history
    second = _alpha_learning_rates(trainer)
    after = torch.cat([a.detach().reshape(-1) for a in model.base_model.architecture_parameters()])
    assert second == pytest.approx(first) and second[0] > 0.05, (first, second)
    assert float((after - before).abs().max()) > 1e-4, "the second run did not move α"


def test_model_init_gets_an_alpha_optimizer_over_the_new_models_alpha(tmp_path):
    built = []

    def model_init():
        built.append(_model())
        return built[-1]

    trainer = S3PETSearchTrainer(
        model_init=model_init,
        args=_args(tmp_path, max_steps=3, save_steps=100),
        train_dataset=_dataset("bert", "SEQ_CLS", n=16),
    )
    trainer.train()
    trainer.train()  # as in `hyperparameter_search`: a new model per run
    held = {id(p) for group in trainer.arch_optimizer.param_groups for p in group["params"]}
    alphas = built[-1].base_model.architecture_parameters()
    assert len(built) == 3  # one for __init__, one per train()
    assert held == {id(a) for a in alphas}
    assert max(float(a.detach().abs().max()) for a in alphas) > 0, "the trained model's α never moved"


def _alpha_gradients(tmp_path, clip, monkeypatch) -> tuple[list, list]:
    """`(raw, given)`: α's gradients of one step as computed, and as α's optimizer got them (after clipping)."""
    given = []
    original = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        if any(p.dim() == 1 and p.grad is not None and p.numel() < 8 for p in self.param_groups[0]["params"]):
            given.append(torch.cat([p.grad.reshape(-1) for p in self.param_groups[0]["params"]]).clone())
        return original(self, *args, **kwargs)

    raw = []
    trainer = _trainer(tmp_path, _model(init_weights=False), max_steps=1, arch_max_grad_norm=clip)
    monkeypatch.setattr(trainer, "_arch_gradients", _recording(trainer._arch_gradients, raw))
    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    trainer.train()
    return raw, given


@pytest.mark.parametrize("clip", [None, 0.0, -1.0])
def test_alpha_clipping_at_or_below_zero_is_off(tmp_path, clip, monkeypatch):
    raw, given = _alpha_gradients(tmp_path, clip, monkeypatch)
    assert raw and given and float(raw[0].abs().max()) > 0
    torch.testing.assert_close(given[0], raw[0])  # neither scaled down nor flipped


@pytest.mark.parametrize("clip", [1e6, 1e-4])
def test_alpha_clipping_only_scales_a_gradient_down_to_the_limit(tmp_path, clip, monkeypatch):
    raw, given = _alpha_gradients(tmp_path, clip, monkeypatch)
    norm = float(raw[0].norm())
    assert given and 1e-4 < norm < 1e6
    expected = raw[0] * min(1.0, clip / (norm + 1e-6))  # never scaled up (a far limit leaves it as it is)
    torch.testing.assert_close(given[0], expected)


def _recording(function, into: list):
    def wrapped(*args, **kwargs):
        grads = function(*args, **kwargs)
        into.append(torch.cat([g.detach().reshape(-1) for g in grads]).clone())
        return grads

    return wrapped


def test_second_order_search_runs_with_label_smoothing(tmp_path):
    trainer = _trainer(tmp_path, _model(), max_steps=2, second_order=True, label_smoothing_factor=0.1)
    calls = []
    original = trainer.compute_loss
    trainer.compute_loss = lambda model, inputs, *a, **k: (
        calls.append("labels" in inputs) or original(model, inputs, *a, **k)
    )
    trainer.train()
    # per step: 4 α passes (virtual step, search, w+, w-) and the weight step, all with the labels
    assert len(calls) == 2 * 5 and all(calls)


def test_a_train_dataset_without_length_asks_for_a_search_dataset(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(_dataset("bert", "SEQ_CLS", n=4))

    with pytest.raises(ValueError, match=r"`train_dataset` \(Stream\) has no length.*`search_dataset`"):
        S3PETSearchTrainer(model=_model(), args=_args(tmp_path), train_dataset=Stream())


def test_second_order_passes_share_gate_noise_and_dropout(monkeypatch):
    torch.manual_seed(0)
    model = get_peft_model(
        make_model("bert", "SEQ_CLS", layers=2), S3PETConfig(budget=600, task_type="SEQ_CLS", init_weights=False)
    ).train()
    drawn, masks = [], []
    original = s3pet_model.sample_gates

    def recording_gates(p):
        gates = original(p)
        drawn.append(gates.detach().clone())
        return gates

    monkeypatch.setattr(s3pet_model, "sample_gates", recording_gates)
    dropout = torch.nn.functional.dropout

    def recording_dropout(x, *args, **kwargs):
        out = dropout(x, *args, **kwargs)
        masks.append((out == 0).clone())
        return out

    monkeypatch.setattr(torch.nn.functional, "dropout", recording_dropout)
    alphas = model.base_model.architecture_parameters()
    train, search = make_inputs("bert", "SEQ_CLS", seed=1), make_inputs("bert", "SEQ_CLS", seed=2)
    darts_alpha_gradients(model, alphas, output_loss(model), train, search, 1e-2)
    assert len(drawn) == 4
    for gates in drawn[1:]:  # α is the same in the four passes, so equal gates mean one noise draw
        assert torch.equal(gates, drawn[0])
    per_pass = len(masks) // 4
    assert per_pass > 0 and len(masks) == 4 * per_pass and any(m.any() for m in masks)
    train_passes = [masks[:per_pass], masks[2 * per_pass : 3 * per_pass], masks[3 * per_pass :]]
    for other in train_passes[1:]:  # the same dropout masks on the same batch: w, w+ and w-
        assert all(torch.equal(a, b) for a, b in zip(train_passes[0], other))
    darts_alpha_gradients(model, alphas, output_loss(model), train, search, 1e-2)
    assert not torch.equal(drawn[4], drawn[0]), "the next step must draw new noise"


def test_alpha_gradients_under_fp16_autocast_need_the_loss_scale(monkeypatch):
    from trainer_ext.s3pet_gradients import alpha_only_gradients

    monkeypatch.setattr(s3pet_model, "sample_gates", lambda p: p)  # deterministic gates, to compare runs
    torch.manual_seed(0)
    config = S3PETConfig(budget=3000, task_type="SEQ_CLS", init_weights=False)
    model = get_peft_model(make_model("bert", "SEQ_CLS", hidden=64, layers=4), config)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    alphas = model.base_model.architecture_parameters()
    batch = {**make_inputs("bert", "SEQ_CLS", batch=8, length=60), "labels": torch.zeros(8, dtype=torch.long)}
    with torch.no_grad():  # a small loss, as late in a search: gradients small enough to underflow in fp16
        model.base_model.model.classifier.modules_to_save["default"].bias.copy_(torch.tensor([4.0, -4.0]))

    def grads(scale):
        return torch.cat(
            [g.reshape(-1) for g in alpha_only_gradients(model, alphas, lambda: model(**batch).loss, scale)]
        )

    reference = grads(1.0)
    with torch.autocast("cpu", dtype=torch.float16):
        plain, scaled = grads(1.0), grads(2.0**16)

    def error(g):
        return float((g - reference).norm() / reference.norm())

    assert error(scaled) < 0.02 < error(plain), (error(scaled), error(plain))


class _Scaler:
    def __init__(self, scale):
        self.scale = scale

    def get_scale(self):
        return self.scale

    def is_enabled(self):
        return True


def test_the_trainer_scales_alpha_losses_and_skips_overflowed_steps(tmp_path, monkeypatch):
    import trainer_ext.s3pet_trainer as trainer_module

    scales, original = [], trainer_module.alpha_only_gradients

    def overflowing(model, alphas, loss_fn, loss_scale=1.0):
        scales.append(loss_scale)
        return [torch.full_like(g, float("inf")) for g in original(model, alphas, loss_fn, loss_scale)]

    model = _model(init_weights=False)
    trainer = _trainer(tmp_path, model, max_steps=2, logging_steps=2)
    monkeypatch.setattr(trainer_module, "alpha_only_gradients", overflowing)
    monkeypatch.setattr(trainer, "_loss_scale", lambda: _Scaler(1024.0).get_scale())
    before = [a.detach().clone() for a in model.base_model.architecture_parameters()]
    trainer.train()
    assert scales == [1024.0, 1024.0]
    for a, b in zip(model.base_model.architecture_parameters(), before):
        assert torch.equal(a.detach(), b), "an overflowed α gradient must not update α"
    assert any(e.get("alpha_steps_skipped") == 2 for e in trainer.state.log_history)
    trainer.accelerator.scaler = _Scaler(8.0)
    assert S3PETSearchTrainer._loss_scale(trainer) == 8.0


def test_with_gradient_accumulation_alpha_averages_as_many_search_batches(tmp_path, monkeypatch):
    import trainer_ext.s3pet_trainer as trainer_module

    calls, original = [], trainer_module.alpha_only_gradients

    def recording(model, alphas, loss_fn, loss_scale=1.0):
        grads = original(model, alphas, loss_fn, loss_scale)
        calls.append(torch.cat([g.reshape(-1) for g in grads]).clone())
        return grads

    given = []
    trainer = _trainer(tmp_path / "a", _model(init_weights=False), max_steps=2, gradient_accumulation_steps=2)
    monkeypatch.setattr(trainer_module, "alpha_only_gradients", recording)
    arch_gradients = trainer._arch_gradients
    monkeypatch.setattr(trainer, "_arch_gradients", _recording(arch_gradients, given))
    trainer.train()
    assert len(calls) == 4 and len(given) == 2  # two search batches per α step
    torch.testing.assert_close(given[0], (calls[0] + calls[1]) / 2)
    assert not torch.equal(calls[0], calls[1])


def test_resume_with_gradient_accumulation_continues_the_search_stream(tmp_path):
    def run(name, resume=None):
        model = _model(init_weights=False)
        trainer = _trainer(tmp_path / name, model, max_steps=4, save_steps=2, gradient_accumulation_steps=2)
        trainer.train(resume_from_checkpoint=resume)
        return torch.cat([a.detach().reshape(-1) for a in model.base_model.architecture_parameters()])

    whole = run("whole")
    resumed = run("whole", resume=str(tmp_path / "whole" / "checkpoint-2"))
    torch.testing.assert_close(resumed, whole, atol=1e-6, rtol=0)
