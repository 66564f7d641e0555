"""Regression tests for the review of `adapters_hub`: a filled-in PEFT card template is kept, pushes keep the card
already on the Hub, plain-PEFT exports get a card without the pack, base models load from safetensors only, the
heatmap image is written atomically, invalid card metadata gives one clear error, and a missing local subfolder is
named. Hub tests run against the local Hub server (`tests/hub_server.py`).
"""

import errno
import io
import json
import os
import re

import matplotlib
import pytest
import torch
from hub_server import WRITE_TOKEN, serve_hub
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file
from tiny_models import make_model
from transformers import AutoModelForSequenceClassification

from adapters_hub import AdapterLoadError, load_adapter, push_adapter, push_folder, write_model_card
from adapters_hub.card import BEGIN
from adapters_hub.export import export_to_peft
from adapters_hub.report import adapter_structure, plot_heatmap
from peft_designspace import DesignSpaceConfig, SAMTuningConfig

WRITE = WRITE_TOKEN
USER_TEXT = "Trained by ACME on our internal support tickets; do NOT use for medical advice."
PACK_HINTS = ("peft_designspace", "pip install peft-designspace", "does not know this method", "adapters_hub")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with serve_hub(monkeypatch, tmp_path / "hf_home") as server:
        yield server


def designspace_model(preset="s4"):
    base = make_model("bert", "SEQ_CLS", layers=4)
    config = DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, preset=preset, budget=0.05)
    return get_peft_model(base, config)


def plain_lora_model():
    base = make_model("bert", "SEQ_CLS", layers=4)
    return get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))


def hub_card(hub, repo_id, branch="main"):
    return hub.repo(repo_id).resolve(branch).files["README.md"].data.decode()


def edit_hub_card(repo_id, text, branch="main"):
    from huggingface_hub import HfApi

    HfApi(token=WRITE).upload_file(
        path_or_fileobj=io.BytesIO(text.encode()),
        path_in_repo="README.md",
        repo_id=repo_id,
        revision=branch,
        commit_message="edit the card on the Hub",
    )


def owner_edits(card):
    """What an owner adds in the Hub's web editor: a license, datasets metadata and a text section."""
    card = card.replace("library_name: peft", "library_name: peft\nlicense: apache-2.0\ndatasets:\n- nyu-mll/glue", 1)
    return card + "\n\n## Evaluation\n\nSST-2 dev accuracy 91.3 (owner's notes).\n"


def assert_owner_edits_kept(card):
    assert "license: apache-2.0" in card and "- nyu-mll/glue" in card and "(owner's notes)" in card
    assert card.count(BEGIN) == 1


# 1. a filled-in PEFT template is kept --------------------------------------------------------------------------------
def test_filled_in_peft_template_is_kept_and_an_unedited_one_is_replaced(tmp_path):
    plain_lora_model().save_pretrained(tmp_path / "peft")  # PEFT writes its card template (no pack hook on LoRA)
    template = (tmp_path / "peft" / "README.md").read_text()
    assert "[More Information Needed]" in template and "<!-- Provide a longer summary" in template

    for name in ("untouched", "filled"):
        designspace_model().save_pretrained(tmp_path / name)
    (tmp_path / "untouched" / "README.md").write_text(template)
    untouched = write_model_card(tmp_path / "untouched").read_text()
    assert "[More Information Needed]" not in untouched and BEGIN in untouched  # nothing of a person's was there

    description = "<!-- Provide a longer summary of what this model is. -->\n"
    filled = template.replace(description, description + "\n" + USER_TEXT + "\n", 1)
    filled = filled.replace("- **License:** [More Information Needed]", "- **License:** proprietary, see LICENSE.txt")
    (tmp_path / "filled" / "README.md").write_text(filled)
    first = write_model_card(tmp_path / "filled").read_text()
    assert USER_TEXT in first and "- **License:** proprietary, see LICENSE.txt" in first
    assert first.index(USER_TEXT) < first.index(BEGIN)  # the pack's section is appended after the person's text
    assert write_model_card(tmp_path / "filled").read_text() == first  # and updated in place afterwards
    assert first.count(BEGIN) == 1


# 2. pushes keep the card already on the Hub -------------------------------------------------------------------------
def test_push_adapter_keeps_the_card_edited_on_the_hub(hub):
    model = designspace_model()
    push_adapter(model, "tester/edited", token=WRITE)
    edit_hub_card("tester/edited", owner_edits(hub_card(hub, "tester/edited")))
    with torch.no_grad():  # another round of training, pushed again
        for name, param in model.named_parameters():
            if "designspace" in name:
                param.add_(0.01)

    push_adapter(model, "tester/edited", token=WRITE, commit_message="new weights")
    card = hub_card(hub, "tester/edited")
    assert_owner_edits_kept(card)
    assert str(model.base_model.budget_report()) in card and "import peft_designspace" in card
    head = hub.repo("tester/edited").resolve("main")
    assert head.title == "new weights"
    uploaded = safetensors_load(head.files["adapter_model.safetensors"].data)
    for key, value in get_peft_model_state_dict(model).items():
        assert torch.equal(uploaded[key], value.detach().cpu()), key  # the new weights went up with the kept card


def test_push_folder_keeps_the_hub_card_also_for_a_new_branch(hub, tmp_path):
    designspace_model().save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "README.md").write_text("---\nlicense: mit\n---\n\nLocal notes.\n")
    push_folder(tmp_path / "adapter", "tester/folder", token=WRITE)  # new repository: the local card is used
    first = hub_card(hub, "tester/folder")
    assert "license: mit" in first and "Local notes." in first and BEGIN in first

    edit_hub_card("tester/folder", owner_edits(first))
    push_folder(tmp_path / "adapter", "tester/folder", token=WRITE)
    assert_owner_edits_kept(hub_card(hub, "tester/folder"))
    push_folder(tmp_path / "adapter", "tester/folder", token=WRITE, revision="v2")  # a new branch starts from main
    assert_owner_edits_kept(hub_card(hub, "tester/folder", "v2"))
    assert (tmp_path / "adapter" / "README.md").read_text() == "---\nlicense: mit\n---\n\nLocal notes.\n"


def test_push_does_not_overwrite_a_card_edited_during_the_push(hub, tmp_path, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    import adapters_hub.hub as hub_module

    designspace_model().save_pretrained(tmp_path / "adapter")
    push_folder(tmp_path / "adapter", "tester/race", token=WRITE)
    edited = owner_edits(hub_card(hub, "tester/race"))
    original = hub_module.write_model_card

    def card_then_edit_on_the_hub(*args, **kwargs):
        written = original(*args, **kwargs)
        edit_hub_card("tester/race", edited)  # the owner saves in the web editor meanwhile
        return written

    monkeypatch.setattr(hub_module, "write_model_card", card_then_edit_on_the_hub)
    with pytest.raises(HfHubHTTPError, match="parentCommit"):
        push_folder(tmp_path / "adapter", "tester/race", token=WRITE)
    assert hub_card(hub, "tester/race") == edited


def test_push_with_invalid_yaml_in_the_hub_card_uploads_nothing(hub, tmp_path):
    designspace_model().save_pretrained(tmp_path / "adapter")
    push_folder(tmp_path / "adapter", "tester/broken-hub-card", token=WRITE)
    edit_hub_card("tester/broken-hub-card", "---\nlicense: [mit\n---\n\nOwner's notes.\n")
    head = hub.head("tester/broken-hub-card")
    with pytest.raises(ValueError, match=r"README\.md of the Hub repository 'tester/broken-hub-card'.*invalid YAML"):
        push_folder(tmp_path / "adapter", "tester/broken-hub-card", token=WRITE)
    assert hub.head("tester/broken-hub-card") == head


# 3. plain-PEFT adapters get a card without the pack -----------------------------------------------------------------
def assert_plain_peft_card(text, method):
    head, body = text.split("---")[1], text.split("---", 2)[2]
    assert "- peft-designspace" not in head and f"- {method}" in head and "library_name: peft" in head
    assert not [hint for hint in PACK_HINTS if hint in body]
    assert "from peft import PeftModel" in body and "PeftModel.from_pretrained(base," in body


def test_cards_of_plain_peft_exports_do_not_ask_for_the_pack(tmp_path):
    export_to_peft(designspace_model(preset="lora"), tmp_path / "lora")
    sam_config = SAMTuningConfig(task_type="SEQ_CLS", budget=0.01, init_weights=False)  # a selection: exportable
    sam = get_peft_model(make_model("bert", "SEQ_CLS", layers=4), sam_config)
    export_to_peft(sam, tmp_path / "shira")
    for name, method in (("lora", "lora"), ("shira", "shira")):
        assert json.loads((tmp_path / name / "adapter_config.json").read_text())["peft_type"] == method.upper()
        assert_plain_peft_card(write_model_card(tmp_path / name).read_text(), method)


def test_push_adapter_of_a_plain_lora_model_does_not_ask_for_the_pack(hub):
    push_adapter(plain_lora_model(), "tester/plain-lora", token=WRITE)
    assert_plain_peft_card(hub_card(hub, "tester/plain-lora"), "lora")


# 4. base models load from safetensors only ---------------------------------------------------------------------------
@pytest.fixture
def pickle_only_base(tmp_path):
    """A saved base folder with only `pytorch_model.bin`, and an adapter whose config records that folder."""
    make_model("bert", "SEQ_CLS", layers=4).save_pretrained(tmp_path / "safe")
    os.makedirs(tmp_path / "pickled")
    (tmp_path / "pickled" / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    torch.save(load_file(tmp_path / "safe" / "model.safetensors"), tmp_path / "pickled" / "pytorch_model.bin")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "safe")
    model = get_peft_model(base, DesignSpaceConfig(task_type="SEQ_CLS", preset="s4", budget=0.05))
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "pickled")
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "pickled", tmp_path / "adapter"


def spy_torch_load(monkeypatch):
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("f"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_base_model_with_only_pickle_weights_is_refused(pickle_only_base, monkeypatch):
    base_dir, adapter = pickle_only_base
    calls = spy_torch_load(monkeypatch)
    pattern = re.escape(repr(str(base_dir))) + r".*only pickle weights.*pytorch_model\.bin.*base_model="
    with pytest.raises(AdapterLoadError, match=pattern):
        load_adapter(adapter)
    with pytest.raises(ValueError, match=r"base_model_kwargs\['use_safetensors'\]=False is not allowed"):
        load_adapter(adapter, base_model_kwargs={"use_safetensors": False})
    assert calls == []  # nothing was unpickled


def test_base_model_on_the_hub_with_only_pickle_weights_is_refused(hub, pickle_only_base, monkeypatch):
    from huggingface_hub import HfApi

    base_dir, adapter = pickle_only_base
    api = HfApi(token=WRITE)
    api.create_repo("tester/pickled-base")
    api.upload_folder(repo_id="tester/pickled-base", folder_path=str(base_dir))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tester/pickled-base"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    calls = spy_torch_load(monkeypatch)
    with pytest.raises(AdapterLoadError, match=r"'tester/pickled-base'.*only pickle weights \('pytorch_model\.bin'\)"):
        load_adapter(adapter, token=WRITE)
    assert calls == []


# 5. the heatmap image is replaced atomically -------------------------------------------------------------------------
def test_plot_heatmap_failing_midway_keeps_the_previous_image(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    designspace_model().save_pretrained(tmp_path / "adapter")
    structure = adapter_structure(tmp_path / "adapter")
    image = tmp_path / "plots" / "structure.png"
    image.parent.mkdir()
    written = plot_heatmap(structure, image)
    assert written == image and image.read_bytes().startswith(b"\x89PNG")
    umask = os.umask(0)
    os.umask(umask)
    assert image.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not the temp file's private ones
    previous = image.read_bytes()

    def disk_full(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(previous[:100])  # part of the image, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(OSError, match="No space left"):
        plot_heatmap(structure, image)
    assert image.read_bytes() == previous
    assert sorted(p.name for p in image.parent.iterdir()) == ["structure.png"]  # no temporary file left
    assert matplotlib.get_backend().lower() == "agg"


# 6. invalid YAML metadata: one clear error, nothing changed ----------------------------------------------------------
BROKEN = "---\nlicense: [mit\n---\n\n# My adapter\n\nHand-written notes.\n"


def test_invalid_yaml_metadata_gives_one_clear_error_and_changes_nothing(tmp_path, hub):
    designspace_model().save_pretrained(tmp_path / "adapter")
    readme = tmp_path / "adapter" / "README.md"
    readme.write_text(BROKEN)
    before = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}
    pattern = re.escape(str(readme)) + r" has invalid YAML metadata at line 2 \(while parsing a flow sequence.*Fix"
    with pytest.raises(ValueError, match=pattern):
        write_model_card(tmp_path / "adapter")
    with pytest.raises(ValueError, match=pattern):  # the user's file is named, not the temporary copy
        push_folder(tmp_path / "adapter", "tester/broken-yaml", token=WRITE)
    assert {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()} == before
    from huggingface_hub import HfApi

    assert not HfApi(token=WRITE).repo_exists("tester/broken-yaml")

    readme.write_text("---\n- a list\n---\nnotes\n")
    with pytest.raises(ValueError, match=re.escape(str(readme)) + r" has unusable metadata.*YAML mapping"):
        write_model_card(tmp_path / "adapter")


def test_invalid_yaml_metadata_writes_no_structure_image(tmp_path):
    from s3pet_helpers import searched_structure

    from adapters_hub.card import STRUCTURE_IMAGE
    from peft_designspace import S3PETConfig

    structure = searched_structure("bert", "SEQ_CLS")
    model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(task_type="SEQ_CLS", structure=structure))
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / STRUCTURE_IMAGE).unlink()
    (tmp_path / "adapter" / "README.md").write_text(BROKEN)
    with pytest.raises(ValueError, match="invalid YAML metadata"):
        write_model_card(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / STRUCTURE_IMAGE).exists()
    assert (tmp_path / "adapter" / "README.md").read_text() == BROKEN


# 7. a missing local subfolder is named -------------------------------------------------------------------------------
def test_missing_subfolder_of_a_local_folder_names_both(tmp_path):
    designspace_model().save_pretrained(tmp_path / "art" / "adapter")
    base = make_model("bert", "SEQ_CLS", layers=4)
    for folder, subfolder in ((tmp_path / "art", "adaptr"), (tmp_path / "art" / "adapter", "nested/x")):
        pattern = (
            f"local folder {re.escape(repr(str(folder)))} has no subfolder {re.escape(repr(subfolder))}.*"
            + re.escape(repr(str(folder / subfolder)))
        )
        with pytest.raises(AdapterLoadError, match=pattern):
            load_adapter(folder, base_model=base, subfolder=subfolder)


def test_push_folder_leaves_the_packs_output_marker_behind(hub, tmp_path):
    from adapters_hub._files import MARKER

    designspace_model().save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / MARKER).write_text("{}\n")  # as export_to_peft's output folders hold
    push_folder(tmp_path / "adapter", "tester/with-marker", token=WRITE)
    files = hub.repo("tester/with-marker").resolve("main").files
    assert "adapter_config.json" in files and MARKER not in files
