"""Regression tests for the Hub fixes: pickle-only adapters refused, `push_adapter(adapter_name=...)` uploads that
adapter only, `push_folder` checks before creating the repository, the adapter's token reaches a private base model,
nested subfolders resolve their commit. Everything runs against the local Hub server (`tests/hub_server.py`).
"""

import json

import common
import pytest
import torch
from hub_server import READ_TOKEN, WRITE_TOKEN, serve_hub
from peft import get_peft_model
from tiny_models import make_inputs, make_model
from transformers import AutoModelForSequenceClassification

from adapters_hub import AdapterLoadError, load_adapter, push_adapter, push_folder
from peft_designspace import DesignSpaceConfig

WRITE, READ = WRITE_TOKEN, READ_TOKEN
INPUTS = make_inputs("bert", "SEQ_CLS")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with serve_hub(monkeypatch, tmp_path / "hf_home") as server:
        yield server


def adapted(adapter_name="default", preset="s4"):
    base = make_model("bert", "SEQ_CLS")
    config = DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, preset=preset, budget=0.05)
    return get_peft_model(base, config, adapter_name=adapter_name)


def upload(folder, repo_id, private=False):
    from huggingface_hub import HfApi

    api = HfApi(token=WRITE)
    api.create_repo(repo_id, private=private)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder))


def repo_exists(repo_id):
    from huggingface_hub import HfApi

    return HfApi(token=WRITE).repo_exists(repo_id)


# 1. pickle weights ---------------------------------------------------------------------------------------------------
def refuse_torch_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("torch.load must not be called on adapter weights")

    monkeypatch.setattr(torch, "load", fail)


PICKLE_MESSAGE = r"only the pickle weights file 'adapter_model\.bin'.*safetensors.*save_file"


def test_pickle_only_adapter_folder_is_refused(tmp_path, monkeypatch):
    adapted().save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert (tmp_path / "adapter" / "adapter_model.bin").is_file()
    refuse_torch_load(monkeypatch)
    with pytest.raises(AdapterLoadError, match=PICKLE_MESSAGE):
        load_adapter(tmp_path / "adapter", base_model=make_model("bert", "SEQ_CLS"))


def test_pickle_only_adapter_on_the_hub_is_refused(hub, tmp_path, monkeypatch):
    adapted().save_pretrained(tmp_path / "adapter", safe_serialization=False)
    upload(tmp_path / "adapter", "tester/pickled")
    refuse_torch_load(monkeypatch)
    with pytest.raises(AdapterLoadError, match=r"'tester/pickled'.*" + PICKLE_MESSAGE):
        load_adapter("tester/pickled", base_model=make_model("bert", "SEQ_CLS"))
    assert "adapter_model.bin" not in "".join(p.name for p in (tmp_path / "hf_home").rglob("*"))


# 2. push_adapter(adapter_name=...) -----------------------------------------------------------------------------------
def test_push_adapter_uploads_only_the_selected_adapter(hub):
    model = adapted(preset="lora")
    model.add_adapter("second", DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, preset="s4", budget=0.05))
    model.set_adapter("second")
    expected = common.outputs(model, INPUTS)
    model.set_adapter("default")

    push_adapter(model, "tester/two", token=WRITE, adapter_name="second", revision="v1")
    files = hub.repo("tester/two").resolve("v1").files
    assert sorted(files) == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads(files["adapter_config.json"].data)["preset"] == "s4"
    card = files["README.md"].data.decode()
    assert "`preset` | `s4`" in card and "`preset` | `lora`" not in card
    assert str(model.base_model.budget_report("second")) in card

    loaded = load_adapter("tester/two", base_model=make_model("bert", "SEQ_CLS"), revision="v1")
    torch.testing.assert_close(common.outputs(loaded, INPUTS), expected, atol=1e-6, rtol=0)


def test_push_adapter_without_a_default_adapter(hub):
    model = adapted(adapter_name="sst2")
    expected = common.outputs(model, INPUTS)
    push_adapter(model, "tester/sst2", token=WRITE)  # the active adapter, "sst2"
    assert "adapter_model.safetensors" in hub.repo("tester/sst2").resolve("main").files
    loaded = load_adapter("tester/sst2", base_model=make_model("bert", "SEQ_CLS"))
    torch.testing.assert_close(common.outputs(loaded, INPUTS), expected, atol=1e-6, rtol=0)


def test_push_adapter_unknown_name_creates_no_repository(hub):
    with pytest.raises(ValueError, match=r"adapter_name='nope'.*\['default'\]"):
        push_adapter(adapted(), "tester/never", token=WRITE, adapter_name="nope")
    assert not repo_exists("tester/never")


# 3. push_folder checks first -----------------------------------------------------------------------------------------
def test_push_folder_checks_the_folder_before_creating_the_repository(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_folder(tmp_path / "missing", "tester/c1", token=WRITE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        push_folder(tmp_path / "empty", "tester/c2", token=WRITE)
    adapted().save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        push_folder(tmp_path / "pickled", "tester/c3", token=WRITE)
    assert not any(repo_exists(f"tester/c{i}") for i in (1, 2, 3))


# 4. the adapter's token reaches the base model -----------------------------------------------------------------------
def test_private_base_model_is_downloaded_with_the_adapters_token(hub, tmp_path):
    make_model("bert", "SEQ_CLS").save_pretrained(tmp_path / "base")
    upload(tmp_path / "base", "tester/priv-base", private=True)
    base = AutoModelForSequenceClassification.from_pretrained("tester/priv-base", token=READ)
    model = get_peft_model(base, DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, preset="s4", budget=0.05))
    assert model.peft_config["default"].base_model_name_or_path == "tester/priv-base"
    expected = common.outputs(model, INPUTS)
    model.save_pretrained(tmp_path / "adapter")
    upload(tmp_path / "adapter", "tester/priv-adapter", private=True)

    loaded = load_adapter("tester/priv-adapter", token=READ)
    torch.testing.assert_close(common.outputs(loaded, INPUTS), expected, atol=1e-6, rtol=0)


def test_base_model_kwargs_win_over_the_adapters_hub_arguments(tmp_path, monkeypatch):
    make_model("bert", "SEQ_CLS").save_pretrained(tmp_path / "base")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    get_peft_model(base, DesignSpaceConfig(task_type="SEQ_CLS", preset="s4", budget=0.05)).save_pretrained(
        tmp_path / "adapter"
    )
    seen = []
    original = AutoModelForSequenceClassification.from_pretrained.__func__

    def spy(cls, name, **kwargs):
        seen.append(kwargs)
        return original(cls, name)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))
    load_adapter(tmp_path / "adapter", token=READ, cache_dir=str(tmp_path / "c"), force_download=True)
    load_adapter(tmp_path / "adapter", token=READ, base_model_kwargs={"token": WRITE})
    assert seen == [
        {"token": READ, "cache_dir": str(tmp_path / "c"), "use_safetensors": True},
        {"token": WRITE, "use_safetensors": True},
    ]


# 5. nested subfolder -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("revision", [None, "main"])
def test_nested_subfolder_loads(hub, tmp_path, revision):
    model = adapted()
    expected = common.outputs(model, INPUTS)
    model.save_pretrained(tmp_path / "repo" / "x" / "y")
    commit = upload(tmp_path / "repo", "tester/nested")
    kwargs = {"revision": revision} if revision else {}
    loaded = load_adapter("tester/nested", base_model=make_model("bert", "SEQ_CLS"), subfolder="x/y", **kwargs)
    torch.testing.assert_close(common.outputs(loaded, INPUTS), expected, atol=1e-6, rtol=0)
    assert commit.oid in str(next((tmp_path / "hf_home").rglob("x/y/adapter_config.json")))


# 6. push_folder leaves a Trainer checkpoint's own files out (a review of Trainer features, 2026-11-25) --------------
def test_push_folder_of_a_trainer_checkpoint_uploads_the_adapter_and_not_the_trainer_state(hub, tmp_path):
    from huggingface_hub import HfApi

    folder = tmp_path / "checkpoint-10"
    adapted().save_pretrained(folder)
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (folder / name).write_bytes(b"hub_token=secret")
    (folder / "tokenizer.json").write_text("{}")
    (folder / ".peft-designspace-output").write_text("")  # the pack's own output marker: left out, not named
    with pytest.warns(UserWarning, match=r"leaves out 5 file\(s\).*training_args.bin") as caught:
        push_folder(folder, "tester/ckpt", token=WRITE)
    assert not any("peft-designspace-output" in str(w.message) for w in caught)
    files = set(HfApi(token=WRITE).list_repo_files("tester/ckpt"))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= files
    assert not files & {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}


def test_push_folder_leaves_out_an_export_written_inside_the_adapter_folder(hub, tmp_path):
    # `export adapter --output_dir adapter/merged --format merged` then `push_folder(adapter)` uploaded the whole
    # merged model too (a bad-input fuzz, 2026-11-25)
    from huggingface_hub import HfApi

    from adapters_hub._files import EXPORT_INFO

    folder = tmp_path / "adapter"
    adapted().save_pretrained(folder)
    (folder / "merged").mkdir()  # as an export writes it
    (folder / "merged" / EXPORT_INFO).write_text("{}")
    (folder / "merged" / "model.safetensors").write_bytes(b"a whole merged model")
    (folder / "notes").mkdir()
    (folder / "notes" / "a.txt").write_text("mine")  # a folder of the user's own goes up as before
    with pytest.warns(UserWarning, match=r"leaves out 1 file\(s\).*\['merged'\]"):
        push_folder(folder, "tester/with-export", token=WRITE)
    files = set(HfApi(token=WRITE).list_repo_files("tester/with-export"))
    assert "notes/a.txt" in files and not [f for f in files if f.startswith("merged")]


# 7. Trainer.push_to_hub keeps the pack's card (a review of Trainer features, 2026-11-25) ----------------------------
@pytest.mark.parametrize("method", ["designspace", "s3pet"])
def test_trainer_push_to_hub_keeps_the_pack_model_card(hub, tmp_path, method):
    """transformers' Trainer rewrote README.md with its training summary before the push, and PEFT's card update
    after it added only PEFT's metadata: the card on the Hub named neither the pack nor the method."""
    from huggingface_hub import HfApi
    from test_trainer_quantized import _args, _dataset
    from transformers import Trainer

    from peft_designspace import S3PETConfig

    if method == "designspace":
        model = adapted()
    else:
        model = get_peft_model(make_model("bert", "SEQ_CLS"), S3PETConfig(budget=600, task_type="SEQ_CLS"))
    args = _args(tmp_path / "run", push_to_hub=True, hub_model_id=f"tester/run-{method}", hub_token=WRITE)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset("bert", "SEQ_CLS", n=8))
    trainer.train()
    trainer.push_to_hub()
    card = open(HfApi(token=WRITE).hf_hub_download(f"tester/run-{method}", "README.md")).read()
    assert "import peft_designspace" in card and f"- {method}" in card
    assert "peft-designspace" in card  # the pack's tag


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "adapter_config.json"])
def test_saving_over_an_interrupted_earlier_save_still_works(tmp_path, damaged):
    """PEFT updates the card before writing the new files; the pack's card hook must not read the old ones."""
    adapted().save_pretrained(tmp_path)
    (tmp_path / damaged).write_bytes(b'{"peft_type": "DESIGN')  # truncated by an interrupted save
    model = adapted()
    model.save_pretrained(tmp_path)
    assert "import peft_designspace" in (tmp_path / "README.md").read_text()
    reloaded = load_adapter(str(tmp_path), base_model=make_model("bert", "SEQ_CLS"))
    torch.testing.assert_close(common.outputs(reloaded, INPUTS), common.outputs(model, INPUTS))


@pytest.mark.parametrize(
    ("option", "value", "error", "match"),
    [
        ("revision", "", ValueError, r"`revision` must be None or a non-empty branch name, got ''"),
        ("revision", 5, ValueError, r"`revision` must be None or a non-empty branch name, got 5"),
        ("commit_message", 5, ValueError, r"`commit_message` must be a non-empty string, got 5"),
        ("private", "yes", TypeError, r"`private` must be None, True or False, got 'yes'"),
        ("repo_id", None, ValueError, r"`repo_id` must be a string 'namespace/name', got None"),
    ],
)
def test_bad_push_options_are_refused_before_the_repository_is_created(hub, tmp_path, option, value, error, match):
    """`revision=""` or `commit_message=5` left an empty repository on the Hub, then failed inside huggingface_hub
    (a bad-input review, 2026-11-25)."""
    adapted().save_pretrained(tmp_path / "adapter")
    options = {"repo_id": "tester/opts", "token": WRITE, option: value}
    with pytest.raises(error, match=match):
        push_folder(tmp_path / "adapter", **options)
    with pytest.raises(error, match=match):
        push_adapter(adapted(), **options)
    assert not repo_exists("tester/opts")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"repo_id": "tester/na me"}, r"`repo_id` must be a string 'namespace/name'"),
        ({"repo_id": "tester/-bad"}, r"`repo_id` must be a string 'namespace/name'"),
        ({"repo_id": " tester/ok"}, r"`repo_id` must be a string 'namespace/name'"),
        ({"repo_id": "tester/a--b"}, r"`repo_id` must be a string 'namespace/name'"),
        ({"repo_id": "tester/ok."}, r"`repo_id` must be a string 'namespace/name'"),
        ({"token": ""}, r"`token` must be None, a bool .* or a non-empty string"),
    ],
)
def test_push_names_a_bad_repo_id_or_token_before_anything_is_created(hub, tmp_path, options, match):
    # huggingface_hub's validation error, or httpx's "Illegal header value b'Bearer '" (a fuzz, 2026-11-25)
    from huggingface_hub import HfApi

    folder = tmp_path / "adapter"
    adapted().save_pretrained(folder)
    kwargs = {"repo_id": "tester/fine", "token": WRITE, **options}
    with pytest.raises(ValueError, match=match):
        push_folder(folder, **kwargs)
    assert not HfApi(token=WRITE).repo_exists("tester/fine")
