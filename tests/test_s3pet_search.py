"""S3PET search: budget control, discretisation, gradients, the search Trainer, bad input."""

import itertools
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import PeftModel, get_peft_model
from s3pet_helpers import finite_differences, searched_structure
from test_trainer_quantized import _args, _dataset
from tiny_models import make_inputs, make_model

import peft_designspace.s3pet.model as s3pet_model
from peft_designspace import S3PETConfig
from peft_designspace.s3pet.gates import expected_size, keep_probabilities, solve_shift
from peft_designspace.s3pet.structure import greedy_select, knapsack_select
from trainer_ext import S3PETSearchTrainer


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 400), share=st.floats(0.001, 0.95), beta=st.floats(0.2, 5.0))
def test_shift_meets_the_budget(seed, n, share, beta):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.randn(n, generator=g, dtype=torch.float64) * 4
    sizes = torch.randint(1, 5000, (n,), generator=g).double()
    budget = float(sizes.sum()) * share
    b, residual = solve_shift(alpha, sizes, budget, beta)
    p = torch.sigmoid((alpha - b) / beta)
    assert abs(float((p * sizes).sum()) - budget) / budget < 1e-6
    assert residual < 1e-6


@pytest.mark.parametrize(
    ("scale", "share", "beta"),
    [(0.01, 1e-5, 1.0), (4.0, 1e-3, 0.2), (4.0, 1.389e-4, 1.0), (50.0, 0.5, 1.0), (500.0, 0.99, 5.0)],
)
def test_shift_solve_takes_newton_steps_not_bisection(monkeypatch, scale, share, beta):
    g = torch.Generator().manual_seed(7)
    alpha = torch.randn(300, generator=g, dtype=torch.float64) * scale
    sizes = torch.randint(1, 5000, (300,), generator=g).double()
    budget = float(sizes.sum()) * share
    evaluations, sigmoid = [], torch.sigmoid
    monkeypatch.setattr(torch, "sigmoid", lambda x: evaluations.append(1) or sigmoid(x))
    _, residual = solve_shift(alpha, sizes, budget, beta)
    assert residual < 1e-9
    assert len(evaluations) <= 30, f"{len(evaluations)} evaluations of F (bisection alone needs about 50)"


def test_renormalised_probabilities_keep_the_budget_and_project_the_gradient():
    g = torch.Generator().manual_seed(0)
    alpha = torch.randn(50, generator=g, requires_grad=True)
    sizes = torch.randint(10, 100, (50,), generator=g).double()
    p, _, residual = keep_probabilities(alpha, sizes, 500.0)
    assert abs(expected_size(p, sizes) / 500.0 - 1) < 1e-6
    assert residual == pytest.approx(abs(expected_size(p, sizes) / 500.0 - 1), abs=1e-15)  # of the float32 p used
    weights = torch.randn(50, generator=g)
    (grad,) = torch.autograd.grad((p * weights).sum(), alpha)
    plain = p.detach() * (1 - p.detach())  # dσ/dα with β = 1
    projected = weights - (weights * p.detach()).sum() / p.detach().sum()
    torch.testing.assert_close(grad, plain * projected, atol=1e-6, rtol=1e-5)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(1, 9))
def test_knapsack_is_optimal_and_greedy_fits(data, n):
    sizes = data.draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    p = data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
    budget = data.draw(st.integers(1, sum(sizes)))
    kept = knapsack_select(p, sizes, budget)
    assert sum(sizes[i] for i in kept) <= budget
    best = max(
        sum(p[i] for i in combo)
        for r in range(n + 1)
        for combo in itertools.combinations(range(n), r)
        if sum(sizes[i] for i in combo) <= budget
    )
    assert sum(p[i] for i in kept) >= best - 1e-9
    assert sum(sizes[i] for i in greedy_select(p, sizes, budget)) <= budget


def test_equal_alpha_keeps_candidates_in_search_space_order():
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=700, task_type="SEQ_CLS"))
    structure = model.base_model.derive_structure()
    candidates = model.base_model.candidates()
    expected, left = [], 700
    for c in candidates:  # equal p everywhere: the documented tie-break is the candidate order
        if c.size <= left:
            expected.append(c.key)
            left -= c.size
    assert [f"{m['path']}:{m['type']}" for m in structure["modules"]] == expected
    assert structure["total"] == 700 - left <= 700


def test_random_structure_is_seeded_fits_the_budget_and_applies():
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=700, task_type="SEQ_CLS"))
    tuner = model.base_model
    first, again, other = (tuner.random_structure(seed=s) for s in (3, 3, 4))
    assert first == again and first != other
    assert first["space"] == "random" and first["budget"] == tuner.search_budget() == 700
    assert sum(m["size"] for m in first["modules"]) == first["total"] <= 700
    small = tuner.random_structure(seed=3, budget=300)
    assert small["total"] <= 300 < first["total"]
    applied = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(structure=first, task_type="SEQ_CLS"))
    assert applied.base_model.model.classifier is not None
    with pytest.raises(ValueError, match="smaller than the smallest candidate"):
        tuner.random_structure(budget=1)


def test_alpha_gradient_matches_finite_differences(monkeypatch):
    """With z = p (eval) and the shift held fixed, autograd gives the documented projected gradient."""
    torch.manual_seed(0)
    base = make_model("bert", "SEQ_CLS", layers=2).double()
    model = get_peft_model(base, S3PETConfig(budget=600, task_type="SEQ_CLS", init_weights=False)).double().eval()
    inputs = make_inputs("bert", "SEQ_CLS")
    tuner = model.base_model
    alphas = tuner.architecture_parameters()
    with torch.no_grad():
        for a in alphas:
            a.copy_(torch.randn(a.shape, dtype=a.dtype))
    loss = model(**inputs).loss
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, alphas)])
    p, shift, _ = tuner.keep_probabilities()
    p = p.detach().double()
    real_solve = s3pet_model.keep_probabilities.__globals__["solve_shift"]
    monkeypatch.setitem(s3pet_model.keep_probabilities.__globals__, "solve_shift", lambda *a, **k: (shift, 0.0))
    with torch.no_grad():
        fd = finite_differences(alphas, lambda: float(model(**inputs).loss))
    monkeypatch.setitem(s3pet_model.keep_probabilities.__globals__, "solve_shift", real_solve)
    slope = p * (1 - p)  # dp/dα at β = 1 with b fixed
    dl_dp = fd / slope
    expected = slope * (dl_dp - (dl_dp * p).sum() / p.sum())
    assert fd.abs().max() > 1e-6, "the loss does not depend on α"
    torch.testing.assert_close(grad, expected, atol=1e-7, rtol=1e-4)


def test_structure_json_round_trip_and_apply_mode_size(tmp_path):
    structure = searched_structure("llama", "CAUSAL_LM")
    path = tmp_path / "structure.json"
    path.write_text(json.dumps(structure))
    model = get_peft_model(make_model("llama", "CAUSAL_LM"), S3PETConfig(structure=str(path), task_type="CAUSAL_LM"))
    assert model.get_nb_trainable_parameters()[0] == structure["total"] <= structure["budget"]
    assert {m["type"] for m in structure["modules"]} <= {"lora", "bitfit", "lnfit", "lra"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 5}, r"smaller than the smallest candidate \(\d+ parameters, .*:bitfit\)"),
        ({"budget": 10_000_000}, r"covers the whole search space"),
        ({"search_space": []}, r"`search_space` must be 'm', 'l' or a non-empty list"),
        ({"search_space": "xl"}, r"`search_space` must be one of \['l', 'm'\]"),
        ({"search_space": [{"type": "lnfit", "roles": ["query"]}]}, r"roles \['query'\] that a 'lnfit' candidate"),
        ({"search_space": [{"type": "lora", "rank": 0}]}, r"`search_space\[0\]\['rank'\]` must be a positive int"),
        ({"budget": -1}, r"`budget` must be > 0"),
        ({"beta": 0}, r"`beta` must be a positive number"),
        ({"target_modules": ["query"]}, r"`target_modules` must be None"),
    ],
)
def test_bad_search_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(task_type="SEQ_CLS", **kwargs))


def test_search_space_without_candidates_is_refused():
    space = [{"type": "lra", "roles": ["attn_out"]}]
    with pytest.raises(ValueError, match=r"`layer_stacks` entry 'nothing' is not an nn.ModuleList"):
        get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(search_space=space, layer_stacks=["nothing"]))


def test_bad_structures_name_the_module(tmp_path):
    structure = searched_structure("bert", "SEQ_CLS")
    missing = json.loads(json.dumps(structure))
    missing["modules"][0]["path"] = "bert.encoder.layer.99.attention.self.query"
    with pytest.raises(ValueError, match=r"names 'bert.encoder.layer.99.attention.self.query', which Bert.* lacks"):
        get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(structure=missing, task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match=r"has size .* but on this model it would have"):
        get_peft_model(make_model("bert", "SEQ_CLS", hidden=64), S3PETConfig(structure=structure, task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match=r"is not a file"):
        S3PETConfig(structure=str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match=r"format 's3pet-structure'"):
        S3PETConfig(structure={"modules": []})


def test_search_mode_saves_and_reloads_the_gates(tmp_path):
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=900, task_type="SEQ_CLS"))
    with torch.no_grad():
        for a in model.base_model.architecture_parameters():
            a.normal_()
    p, _, _ = model.base_model.keep_probabilities()
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(make_model("bert", "SEQ_CLS"), tmp_path)
    torch.testing.assert_close(reloaded.base_model.keep_probabilities()[0], p)
    assert reloaded.base_model.derive_structure() == model.base_model.derive_structure()
    with pytest.raises(ValueError, match=r"search mode"):
        model.merge_and_unload()


def _search(tmp_path, name, max_steps=4, resume=None, **kwargs):
    data = _dataset("bert", "SEQ_CLS", n=16)
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=900, task_type="SEQ_CLS"))
    args = _args(tmp_path / name, max_steps=max_steps, save_steps=2, max_grad_norm=2.0, **kwargs)
    trainer = S3PETSearchTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data[:4],
        **({"second_order": True} if name == "second" else {}),
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_search_trainer_updates_gates_checkpoints_and_resumes(tmp_path):
    model, trainer = _search(tmp_path, "full")
    alphas = [a.detach().clone() for a in model.base_model.architecture_parameters()]
    assert any(a.abs().sum() > 0 for a in alphas), "the search did not move α"
    assert len(trainer.train_dataset) == 8 and len(trainer.search_dataset) == 8
    assert all(entry["residual"] < 1e-6 for entry in trainer.search_log)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert {"arch_optimizer.pt", "adapter_model.safetensors"} <= set(os.listdir(checkpoint))
    structure = trainer.derive_structure()
    assert structure["total"] <= structure["budget"]
    assert (tmp_path / "full" / "s3pet_structure.json").is_file() and (
        tmp_path / "full" / "s3pet_structure.png"
    ).is_file()

    resumed, _ = _search(tmp_path, "full", resume=str(checkpoint))
    for a, b in zip(resumed.base_model.architecture_parameters(), alphas):
        torch.testing.assert_close(a.detach(), b, atol=1e-6, rtol=0)


def test_second_order_search_runs_and_best_checkpoint_is_used(tmp_path):
    model, trainer = _search(
        tmp_path, "second", eval_strategy="steps", eval_steps=2, metric_for_best_model="loss", greater_is_better=False
    )
    assert trainer.state.best_model_checkpoint is not None
    structure = trainer.derive_structure()
    assert structure["from_checkpoint"] == trainer.state.best_model_checkpoint
    assert structure["total"] <= structure["budget"]


def test_heatmap_grid_uses_every_candidate_as_its_frame():
    from peft_designspace.s3pet.plot import structure_grid

    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=700, task_type="SEQ_CLS"))
    frame = [c.to_dict() for c in model.base_model.candidates()]
    structure = model.base_model.derive_structure()
    rows, layers, grid = structure_grid(structure["modules"], frame=frame)
    assert layers == list(range(8)) and len(rows) == len({(c["type"], c["path"].split(".", 4)[-1]) for c in frame})
    assert sum(v for row in grid for v in row if v == v) == len(structure["modules"])  # NaN: no candidate there


def test_saved_applied_structure_gets_a_card_with_its_heatmap(tmp_path):
    structure = searched_structure("bert", "SEQ_CLS")
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(structure=structure, task_type="SEQ_CLS"))
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert f"{len(structure['modules'])} modules kept by the search" in card
    assert "![S3PET structure](s3pet_structure.png)" in card
    assert (tmp_path / "s3pet_structure.png").read_bytes()[:4] == b"\x89PNG"


def test_search_figures_join_the_training_logs(tmp_path):
    _, trainer = _search(tmp_path, "logs")
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    norms = [e["alpha_grad_norm"] for e in trainer.search_log]
    assert [entry["alpha_grad_norm"] for entry in logs] == pytest.approx(norms)
    assert norms[0] == 0 < norms[-1]  # zero-initialised deltas: α has no gradient until the weights move
    for entry in logs:
        assert entry["s3pet_shift_residual"] < 1e-6 and isinstance(entry["s3pet_shift"], float)
    # α's own schedule: linear decay from 0.1 to 0 over the 4 steps, logged as the rate each step used, in step
    # with Trainer's `learning_rate` of the weights
    assert [entry["alpha_learning_rate"] for entry in logs] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    weights = [e["learning_rate"] / logs[0]["learning_rate"] for e in logs]
    assert [e["alpha_learning_rate"] / 0.1 for e in logs] == pytest.approx(weights)
    changes = [entry["s3pet_structure_changes"] for entry in logs]
    assert all(isinstance(c, int) and c >= 0 for c in changes) and sum(changes) > 0, changes


def test_search_under_activation_checkpointing_matches_the_plain_search(tmp_path):
    plain, _ = _search(tmp_path, "plain", max_steps=3)
    checkpointed, trainer = _search(tmp_path, "checkpointed", max_steps=3, gradient_checkpointing=True)
    layers = [m for m in checkpointed.modules() if getattr(m, "gradient_checkpointing", False) is True]
    assert layers, "Trainer did not turn activation checkpointing on"
    alphas = plain.base_model.architecture_parameters()
    assert any(a.abs().sum() > 0 for a in alphas)
    for (name, value), other in zip(plain.named_parameters(), checkpointed.parameters()):
        if value.requires_grad:  # α and the deltas: the replayed layers give the same gradients
            torch.testing.assert_close(other, value, atol=1e-6, rtol=0, msg=name)


def test_search_refuses_reentrant_checkpointing(tmp_path):
    kwargs = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}}
    with pytest.raises(ValueError, match=r"reentrant activation checkpointing .*'use_reentrant': False"):
        _search(tmp_path, "reentrant", max_steps=1, **kwargs)
    # what `peft.prepare_model_for_kbit_training` does by default: no `use_reentrant`, which torch takes as True
    base = make_model("bert", "SEQ_CLS")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={})
    model = get_peft_model(base, S3PETConfig(budget=900, task_type="SEQ_CLS"))
    data = _dataset("bert", "SEQ_CLS", n=8)
    trainer = S3PETSearchTrainer(model=model, args=_args(tmp_path / "unspecified", max_steps=1), train_dataset=data)
    with pytest.raises(ValueError, match=r"or no `use_reentrant`, which torch .* treats as True"):
        trainer.train()


def test_search_under_bf16_autocasts_both_passes(tmp_path):
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=900, task_type="SEQ_CLS"))
    forwards = []
    model.base_model.model.register_forward_pre_hook(
        lambda module, args: forwards.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        )
    )
    args = _args(tmp_path / "bf16", max_steps=2, save_steps=10, bf16=True)
    trainer = S3PETSearchTrainer(model=model, args=args, train_dataset=_dataset("bert", "SEQ_CLS", n=16))
    trainer.train()
    assert forwards == [torch.bfloat16] * 4  # per step: the α pass, then the weight step
    assert any(a.abs().sum() > 0 for a in model.base_model.architecture_parameters())


def test_gradient_accumulation_takes_one_alpha_step_per_optimizer_step(tmp_path):
    _, trainer = _search(tmp_path, "accumulated", max_steps=3, gradient_accumulation_steps=2)
    assert trainer.state.global_step == 3
    assert [entry["step"] for entry in trainer.search_log] == [1, 2, 3]  # the optimizer steps, as Trainer counts
    assert trainer.arch_scheduler.last_epoch == 3  # three α learning-rate steps, not six


def test_resume_without_the_alpha_optimizer_is_refused(tmp_path):
    _search(tmp_path, "run", max_steps=2)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    (checkpoint / "arch_optimizer.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no arch_optimizer.pt, .*`save_only_model=True`"):
        _search(tmp_path, "run", max_steps=4, resume=str(checkpoint))


def test_a_second_train_call_checks_checkpointing_again(tmp_path):
    model, trainer = _search(tmp_path, "twice", max_steps=1)
    model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    trainer.args.max_steps = 2
    with pytest.raises(ValueError, match=r"reentrant activation checkpointing"):
        trainer.train()


def test_compiled_search_model_does_not_recompile_per_step():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = get_peft_model(make_model("bert", "SEQ_CLS", layers=2), S3PETConfig(budget=600, task_type="SEQ_CLS"))
    counter = CompileCounter()
    compiled = torch.compile(model.train(), backend=counter)
    inputs, frames = make_inputs("bert", "SEQ_CLS"), []
    for _ in range(5):  # a new α, hence a new shift, every step
        compiled(**inputs).loss.backward()
        with torch.no_grad():
            for a in model.base_model.architecture_parameters():
                a.add_(torch.randn(a.shape) * 0.3)
        frames.append(counter.frame_count)
    # the gate refresh runs outside the graph; traced, its float shift solve was compiled again and again
    assert frames[-1] == frames[1] <= 3, frames
    model.eval()
    torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits)
    torch._dynamo.reset()


def test_search_stream_drops_the_columns_the_model_does_not_take(tmp_path):
    from datasets import Dataset

    rows = [
        {**{k: v.tolist() for k, v in row.items()}, "sentence": f"row {i}", "idx": i}
        for i, row in enumerate(_dataset("bert", "SEQ_CLS", n=16))
    ]
    keys = {"search": set(), "train": set()}

    class Recording(S3PETSearchTrainer):
        def _next_search_inputs(self):
            inputs = super()._next_search_inputs()
            keys["search"] |= set(inputs)
            return inputs

        def training_step(self, model, inputs, num_items_in_batch=None):
            keys["train"] |= set(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=900, task_type="SEQ_CLS"))
    Recording(model=model, args=_args(tmp_path / "cols", max_steps=2), train_dataset=Dataset.from_list(rows)).train()
    assert keys["search"] == keys["train"] == {"input_ids", "attention_mask", "labels"}


def test_resume_after_the_first_search_pass_continues_the_same_stream(tmp_path):
    # 8 search rows in batches of 2: a pass is 4 α steps, so step 6 is the third batch of the second pass
    model, _ = _search(tmp_path, "long", max_steps=7)
    resumed, _ = _search(tmp_path, "long", max_steps=7, resume=str(tmp_path / "long" / "checkpoint-6"))
    for a, b in zip(resumed.base_model.architecture_parameters(), model.base_model.architecture_parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("search", "match"),
    [([], "with 0 rows"), (iter([{"input_ids": [1]}]), "got list_iterator."), ("rows.tsv", "got str.")],
)
def test_search_dataset_must_have_rows_and_a_length(tmp_path, search, match):
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=900, task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match=rf"`search_dataset` must be a non-empty dataset .*{match}"):
        S3PETSearchTrainer(
            model=model, args=_args(tmp_path), train_dataset=_dataset("bert", "SEQ_CLS"), search_dataset=search
        )


def test_search_split_and_stream_follow_search_seed_not_the_run_seed(tmp_path):
    def trainer(run_seed, search_seed):
        model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=900, task_type="SEQ_CLS"))
        args = _args(tmp_path / f"{run_seed}-{search_seed}", seed=run_seed)
        data = _dataset("bert", "SEQ_CLS", n=16)
        return S3PETSearchTrainer(model=model, args=args, train_dataset=data, search_seed=search_seed)

    def first_batches(t, n=3):
        stream = t._search_batches()
        return [next(stream)["input_ids"] for _ in range(n)]

    base, other_run, other_search = trainer(0, 1234), trainer(7, 1234), trainer(0, 99)
    assert base.search_dataset.indices == other_run.search_dataset.indices
    assert base.search_dataset.indices != other_search.search_dataset.indices
    for a, b in zip(first_batches(base), first_batches(other_run)):
        assert torch.equal(a, b)


def test_keep_probability_history_and_its_plot(tmp_path):
    from peft_designspace.s3pet.plot import plot_trajectory

    model, trainer = _search(tmp_path, "trajectory", max_steps=3)
    tuner = model.base_model
    sizes = torch.tensor([c.size for c in tuner.candidates()], dtype=torch.float64)
    assert [step for step, _ in trainer.p_history] == [1, 2, 3]  # the optimizer steps, as Trainer counts
    for _, p in trainer.p_history:  # each entry is the budgeted, deterministic p after that α step
        assert expected_size(p, sizes) == pytest.approx(tuner.search_budget(), rel=1e-5)
    torch.testing.assert_close(trainer.p_history[-1][1], tuner.keep_probabilities()[0].detach().float())
    trainer.derive_structure()
    assert (tmp_path / "trajectory" / "s3pet_search_trajectory.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"one entry per step and at least one, got 0 entries"):
        plot_trajectory([], [], [], set(), tmp_path / "empty.png")


def test_second_order_search_refuses_activation_checkpointing(tmp_path):
    # the replay in the backward would see the real weights instead of the virtual step's (torch: CheckpointError)
    with pytest.raises(ValueError, match=r"`second_order=True` cannot run under activation checkpointing"):
        _search(tmp_path, "second", max_steps=1, gradient_checkpointing=True)
