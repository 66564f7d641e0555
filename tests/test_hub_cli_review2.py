"""Regression tests for the second review of `adapters_hub` (loading, export, CLI):

- `export` builds the base model as `load_adapter` does: safetensors only (a pickle-only base is refused, also on
  the Hub, where transformers' outside conversion service is never asked), at the revision the adapter records
  (unless --model is given), with the tokenizer from the same revision;
- the saved head's `num_labels` is recovered for SEQ_CLS adapters (load_adapter and export);
- `--overwrite` refuses a previous output that now holds files the pack did not write (or that changed);
- `push` option errors exit 2 naming the option, and a 401 gets a hint about --token / `hf auth login`;
- `~` is expanded in path options only; `report --plot` replaces an existing file only with --overwrite;
- `load_adapter` refuses unknown keyword arguments and warns about `revision` with a local folder.

Hub tests run against the local Hub server (`tests/hub_server.py`); the CLI runs in-process through `main`.
"""

import json
import re
import shutil

import pytest
import torch
import transformers
from hub_server import WRITE_TOKEN, serve_hub
from peft import get_peft_model
from safetensors.torch import load_file
from tiny_models import make_inputs, make_model

from adapters_hub import AdapterLoadError, load_adapter
from adapters_hub._files import MARKER, atomic_output_dir, check_output_dir
from adapters_hub.cli import main
from peft_designspace import DesignSpaceConfig

INPUTS = {k: v for k, v in make_inputs("bert", "SEQ_CLS").items() if k != "labels"}


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with serve_hub(monkeypatch, tmp_path / "hf_home") as server:
        yield server


def upload(folder, repo_id, create=True):
    from huggingface_hub import HfApi

    api = HfApi(token=WRITE_TOKEN)
    if create:
        api.create_repo(repo_id)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder)).oid


def save_lora_adapter(base_dir, out, num_labels=None, base_name=None, revision=None):
    """A LoRA-only design-space adapter (exportable as plain PEFT) on the base saved in `base_dir`."""
    extra = {} if num_labels is None else {"num_labels": num_labels}
    base = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir, **extra)
    config = DesignSpaceConfig(task_type="SEQ_CLS", preset="lora", budget=0.05, init_weights=False)
    model = get_peft_model(base, config).eval()
    model.save_pretrained(out)
    if base_name is not None or revision is not None:
        path = out / "adapter_config.json"
        saved = json.loads(path.read_text())
        saved.update({"base_model_name_or_path": base_name or saved["base_model_name_or_path"], "revision": revision})
        path.write_text(json.dumps(saved))
    return model


def logits(model):
    with torch.no_grad():
        return model(**INPUTS).logits


def spy(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


# findings 1 and 2: `export` builds the base as load_adapter does -----------------------------------------------------
@pytest.fixture
def pickle_only_base(tiny, tmp_path):
    """A base folder with only `pytorch_model.bin` (and a tokenizer), and an adapter recording that folder."""
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny / "model", pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    save_lora_adapter(tiny / "model", tmp_path / "adapter", base_name=str(pickled))
    return pickled, tmp_path / "adapter"


def test_export_refuses_a_base_with_only_pickle_weights(pickle_only_base, tmp_path, capsys, monkeypatch):
    _, adapter = pickle_only_base
    loads = spy(monkeypatch, torch, "load")
    code, _, err = run(["export", str(adapter), "--output_dir", str(tmp_path / "out"), "-q"], capsys)
    assert code == 1, err
    assert "only pickle weights" in err and "pytorch_model.bin" in err and "--model" in err, err
    assert loads == []  # nothing was unpickled
    assert not (tmp_path / "out").exists()


def test_export_never_asks_the_conversion_service_for_a_hub_base(hub, pickle_only_base, tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    pickled, adapter = pickle_only_base
    upload(pickled, "tester/pickled-base")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tester/pickled-base"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    conversions = []
    monkeypatch.setattr(modeling_utils, "auto_conversion", lambda *a, **k: conversions.append(a), raising=False)
    loads = spy(monkeypatch, torch, "load")
    code, _, err = run(["export", str(adapter), "--output_dir", str(tmp_path / "out"), "-q"], capsys)
    assert code == 1, err
    assert "'tester/pickled-base'" in err and "only pickle weights" in err, err
    assert conversions == [] and loads == []
    assert not (tmp_path / "out").exists()


@pytest.fixture
def moved_base(hub, tiny, tmp_path):
    """`tester/rb` at commit v1 (the adapter's base, recorded in its config), and `main` since moved to other
    weights; returns (v1, adapter folder, the adapted model on v1)."""
    upload(tiny / "model", "tester/rb")
    v1 = hub.head("tester/rb")
    make_model("bert", "SEQ_CLS", layers=4, seed=7).save_pretrained(tmp_path / "v2")
    upload(tmp_path / "v2", "tester/rb", create=False)
    assert hub.head("tester/rb") != v1
    model = save_lora_adapter(tiny / "model", tmp_path / "adapter", base_name="tester/rb", revision=v1)
    return v1, tmp_path / "adapter", model


def test_export_loads_the_base_and_tokenizer_at_the_recorded_revision(moved_base, tmp_path, capsys, monkeypatch):
    v1, adapter, model = moved_base
    tokenizer_loads = spy(monkeypatch, transformers.AutoTokenizer, "from_pretrained")
    out = tmp_path / "merged"
    code, stdout, err = run(["export", str(adapter), "--output_dir", str(out), "--format", "merged", "-q"], capsys)
    assert code == 0, err
    assert "max_abs_diff=not checked" not in stdout
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    torch.testing.assert_close(logits(merged), logits(model), atol=1e-5, rtol=0)  # the adapter on the v1 base
    assert [(args[0], kwargs.get("revision")) for args, kwargs in tokenizer_loads] == [("tester/rb", v1)]


def test_export_with_model_given_does_not_apply_the_recorded_revision(moved_base, tmp_path, capsys):
    _, adapter, _ = moved_base
    out = tmp_path / "merged"
    argv = ["export", str(adapter), "--output_dir", str(out), "--format", "merged", "--model", "tester/rb", "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    on_main = load_adapter(adapter, base_model=transformers.AutoModelForSequenceClassification.from_pretrained(
        "tester/rb", revision="main"))  # fmt: skip
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    torch.testing.assert_close(logits(merged), logits(on_main), atol=1e-5, rtol=0)


# finding 4: num_labels from the saved head ---------------------------------------------------------------------------
@pytest.fixture
def three_label_adapter(tiny, tmp_path):
    """A 3-label adapter whose config records a plain encoder folder (no head, config with the default 2 labels)."""
    encoder = tmp_path / "encoder"
    transformers.AutoModel.from_pretrained(tiny / "model").save_pretrained(encoder)
    transformers.AutoTokenizer.from_pretrained(tiny / "model").save_pretrained(encoder)
    model = save_lora_adapter(encoder, tmp_path / "adapter", num_labels=3)
    return tmp_path / "adapter", model


def test_load_adapter_recovers_num_labels_from_the_saved_head(three_label_adapter):
    adapter, model = three_label_adapter
    loaded = load_adapter(adapter)
    assert loaded.config.num_labels == 3
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-6, rtol=0)


def test_num_labels_is_recovered_over_a_base_checkpoint_with_another_head(three_label_adapter, tiny):
    adapter, model = three_label_adapter
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny / "model")  # the same encoder, saved with a trained 2-label head
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    loaded = load_adapter(adapter)
    assert loaded.config.num_labels == 3
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-6, rtol=0)


def test_export_recovers_num_labels_from_the_saved_head(three_label_adapter, tmp_path, capsys):
    adapter, model = three_label_adapter
    out = tmp_path / "merged"
    code, _, err = run(["export", str(adapter), "--output_dir", str(out), "--format", "merged", "-q"], capsys)
    assert code == 0, err
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert merged.config.num_labels == 3
    torch.testing.assert_close(logits(merged), logits(model), atol=1e-5, rtol=0)


# finding 5: --overwrite keeps what the user added --------------------------------------------------------------------
def test_overwrite_refuses_a_previous_output_holding_the_users_files(tiny, tmp_path, capsys):
    save_lora_adapter(tiny / "model", tmp_path / "adapter")
    out = tmp_path / "export"
    argv = ["export", str(tmp_path / "adapter"), "--output_dir", str(out), "--format", "peft", "-q"]
    assert run(argv, capsys)[0] == 0
    (out / "LICENSE").write_text("my license\n")
    (out / "eval").mkdir()
    (out / "eval" / "results.csv").write_text("acc,0.91\n")
    code, _, err = run([*argv, "--overwrite"], capsys)
    assert code == 2, err
    assert "--output_dir" in err and "'LICENSE'" in err and "'eval/results.csv'" in err, err
    assert (out / "LICENSE").read_text() == "my license\n" and (out / "eval" / "results.csv").is_file()

    (out / "LICENSE").unlink()
    shutil.rmtree(out / "eval")
    with (out / "README.md").open("a") as f:
        f.write("\nMy evaluation notes.\n")  # a file the pack wrote, changed since
    code, _, err = run([*argv, "--overwrite"], capsys)
    assert code == 2 and "'README.md'" in err, err
    assert "My evaluation notes." in (out / "README.md").read_text()

    (out / "README.md").unlink()  # a file of the pack that is gone loses nothing
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert (out / "README.md").is_file()
    for name in (".DS_Store", "._adapter_model.safetensors", "Thumbs.db"):  # a file browser's, not the user's work
        (out / name).write_bytes(b"\0")
    assert run([*argv, "--overwrite"], capsys)[0] == 0


def test_the_marker_lists_the_written_files_and_an_older_marker_still_counts(tmp_path):
    from adapters_hub._files import unrecorded_files

    with atomic_output_dir(tmp_path / "new") as tmp:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "adapter_config.json").write_text("{}")
    recorded = json.loads((tmp_path / "new" / MARKER).read_text())["files"]
    assert set(recorded) == {"adapter/adapter_config.json"} and unrecorded_files(tmp_path / "new") == []
    (tmp_path / "new" / "adapter" / "notes.txt").write_text("mine")
    assert unrecorded_files(tmp_path / "new") == ["adapter/notes.txt"]
    with pytest.raises(FileExistsError, match=re.escape("'adapter/notes.txt'")):
        check_output_dir(tmp_path / "new", overwrite=True, only_pack_outputs=True)

    old = tmp_path / "old"  # written by an earlier version: a marker without a file list
    (old / "adapter").mkdir(parents=True)
    (old / MARKER).write_text(json.dumps({"written_by": "peft-designspace"}) + "\n")
    (old / "adapter" / "adapter_config.json").write_text("{}")
    assert check_output_dir(old, overwrite=True, only_pack_outputs=True) == old


# finding 10: push option errors and the token hint -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value"), [("--revision", ""), ("--revision", " "), ("--commit_message", " "), ("--token", "")]
)
def test_bad_push_options_exit_2_naming_the_option(hub, tiny, tmp_path, capsys, option, value):
    save_lora_adapter(tiny / "model", tmp_path / "adapter")
    code, _, err = run(["push", str(tmp_path / "adapter"), "tester/x", option, value, "-q"], capsys)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(f"peft-designspace push: error: {option} "), err
    assert ("model", "tester/x") not in hub.repos  # nothing was created


def test_push_without_a_token_hints_at_token_and_login(hub, tiny, tmp_path, capsys):
    save_lora_adapter(tiny / "model", tmp_path / "adapter")
    code, _, err = run(["push", str(tmp_path / "adapter"), "tester/x", "-q"], capsys)
    assert code == 1, err
    assert "401" in err and "--token" in err and "hf auth login" in err, err


# finding 12: `~` only in path options --------------------------------------------------------------------------------
def test_a_tilde_in_the_commit_message_is_kept(hub, tiny, tmp_path, capsys):
    save_lora_adapter(tiny / "model", tmp_path / "adapter")
    argv = ["push", str(tmp_path / "adapter"), "tester/tilde", "--commit_message", "~", "--token", WRITE_TOKEN, "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert hub.repo("tester/tilde").resolve("main").title == "~"


def test_a_tilde_in_a_path_option_is_still_expanded(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save_lora_adapter(tiny / "model", tmp_path / "adapter")
    code, _, err = run(["report", "~/adapter", "--plot=~/figure.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "figure.png").is_file()


# finding 13: report --plot does not replace a file without --overwrite -----------------------------------------------
def test_report_plot_replaces_an_existing_file_only_with_overwrite(tiny, tmp_path, capsys):
    save_lora_adapter(tiny / "model", tmp_path / "adapter")
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"my own figure")
    code, _, err = run(["report", str(tmp_path / "adapter"), "--plot", str(figure)], capsys)
    assert code == 2 and "--plot" in err.strip().splitlines()[-1] and "--overwrite" in err, err
    assert figure.read_bytes() == b"my own figure"
    code, _, err = run(["report", str(tmp_path / "adapter"), "--plot", str(figure), "--overwrite"], capsys)
    assert code == 0, err
    assert figure.read_bytes().startswith(b"\x89PNG")
    code, _, err = run(["report", str(tmp_path / "adapter"), "--overwrite"], capsys)
    assert code == 2 and "--overwrite" in err and "--plot" in err, err


# finding 14: load_adapter's keyword arguments ------------------------------------------------------------------------
@pytest.fixture
def saved_adapter(tiny, tmp_path):
    save_lora_adapter(tiny / "model", tmp_path / "adapter")
    return tmp_path / "adapter"


def test_load_adapter_refuses_an_unknown_keyword_argument(saved_adapter, monkeypatch):
    loads = spy(monkeypatch, transformers.AutoModelForSequenceClassification, "from_pretrained")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'revison' \(did you mean 'revision'\?\)"):
        load_adapter(saved_adapter, revison="v2")
    with pytest.raises(TypeError, match=r"'dtype'.*base_model_kwargs"):
        load_adapter(saved_adapter, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"`local_files_only` must be True or False, got 'yes'"):
        load_adapter(saved_adapter, local_files_only="yes")
    assert loads == []  # refused before anything was loaded
    assert load_adapter(saved_adapter, low_cpu_mem_usage=True, torch_device="cpu") is not None  # PEFT's own
    # what PEFT hands to `hf_hub_download`, and the older name of `token`, load as before
    assert load_adapter(saved_adapter, etag_timeout=10, user_agent="me", use_auth_token=None) is not None
    assert load_adapter(saved_adapter, use_safetensors=True) is not None
    with pytest.raises(ValueError, match=r"`use_safetensors` must be True .*got False"):
        load_adapter(saved_adapter, use_safetensors=False)  # PEFT would unpickle an adapter_model.bin


def test_load_adapter_warns_that_revision_does_not_apply_to_a_local_folder(saved_adapter):
    with pytest.warns(UserWarning, match=r"`revision='v2'` is ignored: .* is a local folder"):
        load_adapter(saved_adapter, revision="v2")


def test_load_adapter_still_refuses_a_pickle_only_base_with_its_message(pickle_only_base):
    pickled, adapter = pickle_only_base
    with pytest.raises(AdapterLoadError, match=re.escape(repr(str(pickled))) + r" recorded in the adapter"):
        load_adapter(adapter)
