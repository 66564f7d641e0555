"""Bad input to SAM tuning: one clear exception naming the field, the value and what is allowed."""

import pytest
import torch
from peft import get_peft_model
from tiny_models import make_inputs, make_model

from peft_designspace import DesignSpaceConfig, SAMTuningConfig, calibrate_sam


def _model(**kwargs):
    return get_peft_model(make_model("bert", "SEQ_CLS"), SAMTuningConfig(task_type="SEQ_CLS", **kwargs))


def _batches(n=3):
    return [make_inputs("bert", "SEQ_CLS", seed=s) for s in range(n)]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"budget": 0}, ValueError, r"`budget` must be > 0.*got 0"),
        ({"budget": -0.1}, ValueError, r"`budget` must be > 0"),
        ({"budget": float("nan")}, ValueError, r"`budget`"),
        ({"budget": 2.5}, ValueError, r"`budget` must be a whole number"),
        ({"budget": "1%"}, TypeError, r"`budget` must be a float fraction"),
        ({"budget": True}, TypeError, r"`budget`"),
        ({"score": "hessian"}, ValueError, r"`score` must be one of \['sam', 'fisher', 'magnitude', 'random'\]"),
        ({"scope": "layer"}, ValueError, r"`scope` must be one of \['global', 'per_tensor'\], got 'layer'"),
        ({"curvature": "exact"}, ValueError, r"`curvature` must be one of"),
        ({"hutchinson_probes": 0}, ValueError, r"`hutchinson_probes`"),
        ({"save_dtype": "int8"}, ValueError, r"`save_dtype` must be None or one of"),
        ({"include_biases": "yes"}, TypeError, r"`include_biases` must be True or False"),
        ({"target_parameters": ["weight"]}, ValueError, r"`target_parameters` must be None"),
        ({"nnz_pattern": {"a.weight": -1}}, ValueError, r"`nnz_pattern`"),
        ({"schema_version": 99}, ValueError, r"newer than this peft-designspace"),
    ],
)
def test_config_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SAMTuningConfig(**kwargs)


def test_budget_above_targeted_count():
    with pytest.raises(ValueError, match=r"`budget` 10000000 is larger than the [\d,]+ targeted parameters"):
        _model(budget=10_000_000)


def test_budget_fraction_selecting_nothing():
    with pytest.raises(ValueError, match=r"selects no entry out of the [\d,]+ targeted parameters; use at least"):
        _model(budget=1e-9)


def test_no_target_matched():
    with pytest.raises(ValueError, match=r"No module of BertForSequenceClassification matched `target_modules`"):
        _model(target_modules=["does_not_exist"])


class _OneShot:
    """An iterator that knows its length (read once, as a generator)."""

    def __init__(self, items):
        self.items = iter(items)
        self.left = len(items)

    def __iter__(self):
        return self

    def __next__(self):
        self.left -= 1
        return next(self.items)

    def __len__(self):
        return self.left


def test_num_batches_larger_than_data():
    model = _model(budget=0.01)
    with pytest.raises(ValueError, match=r"`num_batches` is 5 but the data holds only 3 batches and can be read once"):
        calibrate_sam(model, _OneShot(_batches(3)), num_batches=5)
    with pytest.raises(ValueError, match=r"`num_batches` is 5 but the data yielded only 3 batches"):
        calibrate_sam(model, iter(_batches(3)), num_batches=5, show_progress=False)
    with pytest.raises(ValueError, match=r"`num_batches` must be a positive int or None"):
        calibrate_sam(model, _batches(3), num_batches=0)
    assert not model.peft_config["default"].calibrated, "a failed calibration must not mark the adapter calibrated"


def test_calibrating_twice_needs_force():
    model = _model(budget=0.01)
    calibrate_sam(model, _batches(), show_progress=False)
    first = model.base_model.selection()
    with pytest.raises(ValueError, match=r"already has a selection .* pass `force=True`"):
        calibrate_sam(model, _batches(), show_progress=False)
    calibrate_sam(model, _batches(2), force=True, show_progress=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "samtuning_weight_values" in name:
                param.fill_(0.5)  # "trained" values that a recalibration would reset
    with pytest.raises(TypeError, match=r"`force` must be True or False, got 'no'"):  # not read as True
        calibrate_sam(model, _batches(2), force="no", show_progress=False)
    assert all(
        bool((p == 0.5).all()) for n, p in model.named_parameters() if "samtuning_weight_values" in n and p.numel()
    )
    assert set(model.base_model.selection()) == set(first)


def test_data_needed_for_gradient_scores():
    with pytest.raises(ValueError, match=r"`score='sam'` needs calibration data"):
        calibrate_sam(_model(budget=0.01))
    calibrate_sam(_model(budget=0.01, score="magnitude"), show_progress=False)  # data-free scores need none


def test_batches_without_labels():
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in _batches()]
    with pytest.raises(ValueError, match=r"no `.loss`.*include the targets \(`labels`\)"):
        calibrate_sam(_model(budget=0.01), batches, show_progress=False)
    with pytest.raises(TypeError, match=r"batches must be dicts"):
        calibrate_sam(_model(budget=0.01), [torch.zeros(2)], show_progress=False)


def test_other_methods_are_refused():
    model = get_peft_model(make_model("bert", "SEQ_CLS"), DesignSpaceConfig(task_type="SEQ_CLS", budget=0.05))
    with pytest.raises(TypeError, match=r"needs a model made by `get_peft_model\(model, SAMTuningConfig"):
        calibrate_sam(model, _batches())


def test_uncalibrated_adapter_is_not_saved(tmp_path):
    model = _model(budget=0.01)
    with pytest.raises(ValueError, match=r"was never calibrated.*calibrate_sam"):
        model.save_pretrained(tmp_path / "adapter")
    files = set((tmp_path / "adapter").iterdir()) if (tmp_path / "adapter").exists() else set()
    assert not {p.name for p in files} & {"adapter_model.safetensors", "adapter_config.json"}


def test_adapter_for_another_model_is_refused(tmp_path):
    model = _model(budget=0.01, init_weights=False)
    model.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel

    with pytest.raises(ValueError, match=r"`nnz_pattern` does not fit LlamaForCausalLM"):
        PeftModel.from_pretrained(make_model("llama", "CAUSAL_LM"), tmp_path / "adapter")


def test_saved_adapter_card_summarises_the_selection(tmp_path):
    model = _model(budget=0.01, init_weights=False)
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    total = sum(model.peft_config["default"].nnz_pattern.values())
    assert "library_name: peft" in card and "samtuning" in card and "import peft_designspace" in card
    assert f"{total:,} selected entries in 48 tensors" in card
    assert "| `bert.encoder.layer.*.attention.self.query.weight` | 8 |" in card


def test_num_batches_past_the_data_reads_it_again_as_the_reference_did():
    # the reference draws its 599 calibration batches across epochs (more than CoLA's 481 of 16)
    batches = _batches(3)
    cycled, repeated, once = _model(budget=0.01).eval(), _model(budget=0.01).eval(), _model(budget=0.01).eval()
    assert all(torch.equal(a, b) for a, b in zip(cycled.parameters(), repeated.parameters()))  # seeded alike
    calibrate_sam(cycled, batches, num_batches=7, show_progress=False)
    calibrate_sam(repeated, [batches[i % 3] for i in range(7)], show_progress=False)
    calibrate_sam(once, batches, show_progress=False)
    assert cycled.base_model._sam_last_calibration["batches"] == 7
    assert _selected(cycled) == _selected(repeated)
    assert _selected(cycled) != _selected(once)  # the 4th batch onwards counted


def _selected(model):
    return {key: flat.tolist() for key, flat in model.base_model.selection().items()}


def test_fisher_curvature_needs_two_batches():
    # with one batch h = g², so every entry scores 1 and the tie-break picked the first entries in module order
    model = _model(budget=0.01, curvature="fisher")
    with pytest.raises(ValueError, match=r"`curvature='fisher'` needs at least 2 calibration batches, got 1"):
        calibrate_sam(model, _batches(1), show_progress=False)
    assert not model.peft_config["default"].calibrated
    calibrate_sam(model, _batches(2), show_progress=False)
    assert model.peft_config["default"].calibrated
