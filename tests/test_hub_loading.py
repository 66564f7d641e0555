"""`adapters_hub.load_adapter` and `write_model_card` on local folders: each failure gives an actionable message."""

import json
import shutil
import warnings

import common
import pytest
import torch
from peft import get_peft_model
from tiny_models import make_inputs, make_model
from transformers import AutoModelForSequenceClassification

from adapters_hub import (
    AdapterVersionError,
    BaseModelMismatchError,
    CorruptedAdapterError,
    load_adapter,
    report_from_saved,
    write_model_card,
)
from peft_designspace import DesignSpaceConfig

S4 = {"preset": "s4", "budget": 0.05}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny BERT saved as base, an adapter saved from it (base path recorded), and the reference logits."""
    root = tmp_path_factory.mktemp("loading")
    make_model("bert", "SEQ_CLS").save_pretrained(root / "base")
    base = AutoModelForSequenceClassification.from_pretrained(root / "base")
    model = get_peft_model(base, DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, **S4))
    model.save_pretrained(root / "adapter")
    return root, model, common.outputs(model, make_inputs("bert", "SEQ_CLS"))


def copy_adapter(saved, tmp_path, **config_changes):
    folder = tmp_path / "adapter"
    shutil.copytree(saved[0] / "adapter", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(config_changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_base_model_resolved_from_config(saved):
    root, _, expected = saved
    model = load_adapter(root / "adapter")
    assert type(model.get_base_model()).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(common.outputs(model, make_inputs("bert", "SEQ_CLS")), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"is_trainable": "yes"}, r"`is_trainable` must be True or False, got 'yes'"),
        ({"is_trainable": 1}, r"`is_trainable` must be True or False, got 1"),
        ({"adapter_name": 3}, r"`adapter_name` must be a non-empty str, got 3"),
        ({"adapter_name": ""}, r"`adapter_name` must be a non-empty str, got ''"),
        ({"base_model": "bert-base-uncased"}, r"`base_model` must be a torch `nn.Module` or None, got str \(a name"),
        ({"base_model_kwargs": [("dtype", "float16")]}, r"`base_model_kwargs` must be a dict or None, got list"),
    ],
)
def test_bad_arguments_are_named_before_anything_is_loaded(saved, monkeypatch, kwargs, match):
    import adapters_hub.loading as loading

    def no_fetch(*args, **kw):
        raise AssertionError("fetched before the arguments were checked")

    monkeypatch.setattr(loading, "fetch_adapter_files", no_fetch)
    with pytest.raises(ValueError, match=match):
        load_adapter(saved[0] / "adapter", **kwargs)
    with pytest.raises(ValueError, match=r"`path_or_repo` must be a folder or a Hub repository id"):
        load_adapter(None)


def test_unknown_peft_type_names_what_to_install(saved, tmp_path):
    with pytest.raises(AdapterVersionError, match="neither built into peft.*pip install -U peft"):
        load_adapter(copy_adapter(saved, tmp_path, peft_type="FANCYTUNE"))


def test_pack_method_not_installed_names_the_pack(saved, tmp_path):
    folder = copy_adapter(saved, tmp_path, peft_type="FUTURETUNE", pack_version="0.9.0")
    expected = r"part of peft-designspace 0.9.0.*pip install -U 'peft-designspace>=0.9.0'"
    with pytest.raises(AdapterVersionError, match=expected):
        load_adapter(folder)


def test_newer_pack_with_unknown_settings_is_refused(saved, tmp_path):
    folder = copy_adapter(saved, tmp_path, pack_version="9.0.0", gating="soft")
    with pytest.raises(AdapterVersionError, match=r"\['gating'\].*pip install -U 'peft-designspace>=9.0.0'"):
        load_adapter(folder)


def test_newer_pack_without_unknown_settings_loads_with_a_warning(saved, tmp_path):
    folder = copy_adapter(saved, tmp_path, pack_version="9.0.0")
    with pytest.warns(UserWarning, match="newer than the installed"):
        model = load_adapter(folder)
    torch.testing.assert_close(common.outputs(model, make_inputs("bert", "SEQ_CLS")), saved[2], atol=1e-6, rtol=0)


def test_older_or_absent_pack_version_is_silent(saved, tmp_path):
    folder = copy_adapter(saved, tmp_path, pack_version="0.0.1")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*peft-designspace.*")
        load_adapter(folder)


def test_base_model_shape_mismatch_names_both_models_and_the_parameter(saved):
    root = saved[0]
    wider = make_model("bert", "SEQ_CLS", hidden=64)
    before = {n: p.clone() for n, p in wider.state_dict().items()}
    with pytest.raises(BaseModelMismatchError) as info:
        load_adapter(root / "adapter", base_model=wider)
    message = str(info.value)
    assert str(root / "base") in message and "BertForSequenceClassification" in message
    assert "designspace_" in message and "shape" in message
    assert all(torch.equal(p, before[n]) for n, p in wider.state_dict().items())  # base left untouched
    assert type(wider.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear


def test_base_model_missing_modules_is_a_mismatch(saved):
    shallow = make_model("bert", "SEQ_CLS", layers=4)
    with pytest.raises(BaseModelMismatchError, match="lacks"):
        load_adapter(saved[0] / "adapter", base_model=shallow)


def test_head_size_mismatch_mentions_num_labels(saved):
    base = make_model("bert", "SEQ_CLS")
    base = type(base)(type(base.config).from_dict({**base.config.to_dict(), "num_labels": 3}))
    with pytest.raises(BaseModelMismatchError, match="num_labels"):
        load_adapter(saved[0] / "adapter", base_model=base)


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_truncated_safetensors(saved, tmp_path, keep):
    folder = copy_adapter(saved, tmp_path)
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(4, int(len(data) * keep))])
    with pytest.raises(CorruptedAdapterError, match="truncated"):
        load_adapter(folder)


def test_card_has_metadata_snippet_settings_and_report(saved, tmp_path):
    folder = copy_adapter(saved, tmp_path)
    live = saved[1].base_model.budget_report()
    assert str(report_from_saved(folder)) == str(live)
    text = write_model_card(folder, repo_id="tester/bert-s4").read_text()
    head = text.split("---")[1]
    assert "library_name: peft" in head and "- peft-designspace" in head and "- designspace" in head
    assert "base_model:" not in head.replace("base_model:adapter", "")  # a local path is not Hub metadata
    assert "pip install peft-designspace" in text
    assert text.index("import peft_designspace") < text.index('PeftModel.from_pretrained(base, "tester/bert-s4")')
    assert "| `group_strategies` |" in text and "| `budget` | `0.05` |" in text
    assert str(live) in text
    assert "[More Information Needed]" not in text  # PEFT's template body was replaced


def test_card_keeps_user_text_and_metadata(saved, tmp_path):
    folder = copy_adapter(saved, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/tiny-bert"}))
    user_card = "---\nlicense: apache-2.0\ntags:\n- sst2\n---\n\n# My notes\n\nTrained on SST-2.\n"
    (folder / "README.md").write_text(user_card)
    write_model_card(folder)
    first = (folder / "README.md").read_text()
    write_model_card(folder)
    second = (folder / "README.md").read_text()
    assert first == second  # idempotent: the section is replaced, not appended again
    assert "license: apache-2.0" in first and "- sst2" in first and "- designspace" in first
    assert "base_model: org/tiny-bert" in first and "Trained on SST-2." in first
    assert first.count("<!-- peft-designspace:begin -->") == 1


def test_card_drops_base_model_tags_that_name_a_local_folder(saved, tmp_path):
    # PEFT's own card tags the base as `base_model:adapter:<base_model_name_or_path>`; for a local folder that is
    # not valid Hub metadata (the card body names the folder instead). Hub ids and other tags are kept.
    folder = copy_adapter(saved, tmp_path)
    local = str(tmp_path)
    tags = [f"base_model:adapter:{local}", "base_model:adapter:org/base-model", "my-tag"]
    (folder / "README.md").write_text("---\ntags:\n" + "".join(f"- {t}\n" for t in tags) + "---\nbody\n")
    head = write_model_card(folder).read_text().split("---")[1]
    assert local not in head
    assert "- base_model:adapter:org/base-model" in head and "- my-tag" in head


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("{'peft_type': 1", r"adapter_config.json' is not valid JSON"),
        ("[1, 2]", r"adapter_config.json"),
        ('{"peft_type": "DESIGNSPACE", "plan": {"groups": []}}', r"has a `plan` without its list of `layers`"),
    ],
)
def test_a_broken_config_gives_a_card_error_naming_the_file(saved, tmp_path, config, match):
    # a bare JSONDecodeError, an AttributeError on a list, or KeyError: 'layers' (a bad-input fuzz, 2026-11-25)
    folder = copy_adapter(saved, tmp_path)
    (folder / "adapter_config.json").write_text(config)
    readme = (folder / "README.md").read_bytes() if (folder / "README.md").exists() else None
    for call in (report_from_saved, write_model_card):
        with pytest.raises(ValueError, match=match):
            call(folder)
    assert ((folder / "README.md").read_bytes() if (folder / "README.md").exists() else None) == readme
