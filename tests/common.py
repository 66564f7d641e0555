"""The PEFT contract every method of the pack must keep, as reusable checks (one-line delegates in test files)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from peft import get_peft_model
from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
from tiny_models import make_inputs, make_model

import peft_designspace  # noqa: F401  (registers the methods)

ROOT = Path(__file__).resolve().parents[1]
# the config field that makes a saved adapter describe its own shapes, per method
SELF_DESCRIBING = {"DESIGNSPACE": "plan", "SAMTUNING": "nnz_pattern", "S3PET": "structure"}


def prefix_of(config_cls) -> str:
    """The parameter-name prefix of a method (`"designspace_"`, `"samtuning_"`)."""
    return PEFT_TYPE_TO_PREFIX_MAPPING[config_cls().peft_type]


def randomized(kwargs: dict) -> dict:
    """`kwargs` with `init_weights=False` (adapters that change the outputs from the start)."""
    return {**kwargs, "init_weights": False}


def outputs(model, inputs: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def build(model_id: str, task: str, config_cls, kwargs: dict, **model_kwargs):
    base = make_model(model_id, task, **model_kwargs)
    return get_peft_model(base, config_cls(task_type=task, **kwargs))


def check_only_adapter_params_change(model_id, task, config_cls, kwargs, tol):
    model = build(model_id, task, config_cls, kwargs)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    prefix = prefix_of(config_cls)
    assert trainable and all(prefix in n or "modules_to_save" in n for n in trainable), sorted(trainable)[:5]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(**make_inputs(model_id, task)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "an optimizer step changed nothing"
    assert changed <= trainable, sorted(changed - trainable)[:5]


def check_disable_gives_base(model_id, task, config_cls, kwargs, tol):
    base = make_model(model_id, task)
    inputs = make_inputs(model_id, task)
    expected = outputs(base, inputs)
    model = get_peft_model(base, config_cls(task_type=task, **randomized(kwargs)))
    adapted = outputs(model, inputs)
    assert not torch.allclose(adapted, expected, atol=1e-4), "the adapter did not change the outputs"
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), expected, atol=tol, rtol=0)
    torch.testing.assert_close(outputs(model, inputs), adapted, atol=tol, rtol=0)


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, json, torch
    sys.path.insert(0, {tests!r})
    import peft_designspace
    from peft import PeftModel
    from tiny_models import make_inputs
    from transformers import {auto}
    base = {auto}.from_pretrained({base!r})
    model = PeftModel.from_pretrained(base, {adapter!r}).eval()
    with torch.no_grad():
        logits = model(**make_inputs({model_id!r}, {task!r})).logits
    torch.save(logits, {out!r})
    """
)
AUTO = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
}


def run_python(code: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def train_a_little(model, model_id, task, steps: int = 3):
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(**make_inputs(model_id, task)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def check_fresh_process_reload(model_id, task, config_cls, kwargs, tol, tmp_path):
    base = make_model(model_id, task)
    base.save_pretrained(tmp_path / "base")
    model = train_a_little(get_peft_model(base, config_cls(task_type=task, **kwargs)), model_id, task)
    expected = outputs(model, make_inputs(model_id, task))
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(os.listdir(tmp_path / "adapter"))
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files, files
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    peft_type = config_cls().peft_type.value
    assert saved["peft_type"] == peft_type and saved[SELF_DESCRIBING[peft_type]] is not None
    code = LOAD_SCRIPT.format(
        tests=str(ROOT / "tests"),
        auto=AUTO[task],
        base=str(tmp_path / "base"),
        adapter=str(tmp_path / "adapter"),
        model_id=model_id,
        task=task,
        out=str(tmp_path / "logits.pt"),
    )
    run_python(code)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=tol, rtol=0)


def check_transformers_entry_points(model_id, task, config_cls, kwargs, tol, tmp_path):
    """AutoPeftModel and transformers' `load_adapter` load the saved adapter with identical outputs."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM, AutoPeftModelForSequenceClassification

    auto_peft = {
        "SEQ_CLS": AutoPeftModelForSequenceClassification,
        "CAUSAL_LM": AutoPeftModelForCausalLM,
        "SEQ_2_SEQ_LM": AutoPeftModelForSeq2SeqLM,
    }[task]
    base = make_model(model_id, task)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, config_cls(task_type=task, **randomized(kwargs)))
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    inputs = make_inputs(model_id, task)
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path / "adapter")
    loaded = auto_peft.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(outputs(loaded, inputs), expected, atol=tol, rtol=0)
    plain = type(base).from_pretrained(tmp_path / "base")
    plain.load_adapter(str(tmp_path / "adapter"))
    torch.testing.assert_close(outputs(plain, inputs), expected, atol=tol, rtol=0)


def check_two_adapters(model_id, task, config_cls, kwargs, tol):
    base = make_model(model_id, task)
    inputs = make_inputs(model_id, task)
    model = get_peft_model(base, config_cls(task_type=task, **randomized(kwargs)))
    first = outputs(model, inputs)
    torch.manual_seed(123)
    model.add_adapter("other", config_cls(task_type=task, **randomized(kwargs)))
    assert torch.equal(outputs(model, inputs), first), "adding an inactive adapter changed the outputs"
    model.set_adapter("other")
    second = outputs(model, inputs)
    assert not torch.allclose(first, second, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and prefix_of(config_cls) in n}
    assert trainable and all(".other" in n for n in trainable)
    model.set_adapter("default")
    torch.testing.assert_close(outputs(model, inputs), first, atol=tol, rtol=0)
    model.delete_adapter("other")
    assert not any(".other" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(outputs(model, inputs), first, atol=tol, rtol=0)


def check_generate_with_cache(model_id, task, config_cls, kwargs, tol):
    """Greedy generation with the KV cache equals generation without it (prefix masks at every step)."""
    model = build(model_id, task, config_cls, randomized(kwargs))
    inputs = make_inputs(model_id, task, batch=1)
    args = {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "max_new_tokens": 5,
        "do_sample": False,
    }
    with_cache = model.generate(**args, use_cache=True)
    without = model.generate(**args, use_cache=False)
    assert torch.equal(with_cache, without), (with_cache, without)
    assert with_cache.shape[1] > inputs["input_ids"].shape[1] or task == "SEQ_2_SEQ_LM"
