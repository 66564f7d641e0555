"""Hub round trips of a design-space adapter against the local Hub server (`tests/hub_server.py`).

Pushing runs in this process with a patched client (`HubServer.patch_client`); loading runs in a fresh process with
`HF_ENDPOINT` / `HF_HOME` set before anything is imported (`HubServer.env`), so nothing cached in this process
helps it. The adapter weights go through the LFS path (`.safetensors`), the config and card through regular commits.
"""

import hashlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import common
import pytest
import torch
from hub_server import READ_TOKEN, SOCKET_GUARD, WRITE_TOKEN, serve_hub
from peft import get_peft_model
from tiny_models import make_inputs, make_model
from transformers import AutoModelForSequenceClassification

from adapters_hub import AdapterLoadError, load_adapter
from peft_designspace import DesignSpaceConfig

WRITE, READ = WRITE_TOKEN, READ_TOKEN
S4 = {"preset": "s4", "budget": 0.05}

LOAD_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
import peft_designspace
from peft import PeftModel
from tiny_models import make_inputs
from transformers import AutoModelForSequenceClassification

results = {{}}
for name, kwargs in {loads!r}:
    base = AutoModelForSequenceClassification.from_pretrained({base!r})
    try:
        model = PeftModel.from_pretrained(base, {repo!r}, **kwargs).eval()
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        results[name] = {{"error": type(exc).__name__ + ": " + str(exc), "cause": type(cause).__name__}}
        continue
    with torch.no_grad():
        torch.save(model(**make_inputs("bert", "SEQ_CLS")).logits, {out!r} + name + ".pt")
    results[name] = {{"ok": True}}
print("RESULTS" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny BERT base and a non-trivial design-space adapter on it, with its reference logits."""
    root = tmp_path_factory.mktemp("tiny")
    make_model("bert", "SEQ_CLS").save_pretrained(root / "base")
    base = AutoModelForSequenceClassification.from_pretrained(root / "base")
    model = get_peft_model(base, DesignSpaceConfig(task_type="SEQ_CLS", init_weights=False, **S4))
    return root, model, common.outputs(model, make_inputs("bert", "SEQ_CLS"))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with serve_hub(monkeypatch, tmp_path / "hf_home_pusher") as server:
        yield server


def load_in_fresh_process(hub, tiny, tmp_path, repo_id, loads, token=None) -> dict:
    """Run `PeftModel.from_pretrained(base, repo_id, **kwargs)` for each `(name, kwargs)` in a new interpreter."""
    root = tiny[0]
    code = SOCKET_GUARD + LOAD_SCRIPT.format(
        tests=str(common.ROOT / "tests"),
        loads=list(loads),
        base=str(root / "base"),
        repo=repo_id,
        out=str(tmp_path / "logits_"),
    )
    env = hub.env(tmp_path / "hf_home_loader", token=token)
    env["PYTHONPATH"] = str(common.ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULTS"))
    return json.loads(line[len("RESULTS") :])


def logits(tmp_path, name) -> torch.Tensor:
    return torch.load(tmp_path / f"logits_{name}.pt")


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_patched_client_talks_to_local_hub(hub):
    from huggingface_hub import HfApi, create_repo, model_info

    url = create_repo("tester/probe", token=WRITE)
    assert url.startswith(hub.url)
    assert model_info("tester/probe", token=WRITE).sha == hub.head("tester/probe")
    assert HfApi().whoami(token=WRITE)["name"] == "tester"
    assert ("POST", "/api/repos/create") in hub.requests


def test_push_then_load_in_fresh_process(hub, tiny, tmp_path):
    _, model, expected = tiny
    commit = model.push_to_hub("tester/bert-s4", token=WRITE)
    files = hub.repo("tester/bert-s4").resolve("main").files
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert files["adapter_model.safetensors"].lfs and not files["adapter_config.json"].lfs
    assert commit.oid == hub.head("tester/bert-s4")
    assert json.loads(files["adapter_config.json"].data)["peft_type"] == "DESIGNSPACE"

    results = load_in_fresh_process(hub, tiny, tmp_path, "tester/bert-s4", [("main", {})])
    assert results == {"main": {"ok": True}}
    torch.testing.assert_close(logits(tmp_path, "main"), expected, atol=1e-6, rtol=0)


def test_revision_branch_and_commit(hub, tiny, tmp_path):
    from huggingface_hub import HfApi

    _, model, expected = tiny
    first = model.push_to_hub("tester/revs", token=WRITE).oid
    HfApi().create_branch("tester/revs", branch="v1", token=WRITE)
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if "designspace_lora" in n}
    try:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in saved:
                    param.add_(0.5)
        changed = common.outputs(model, make_inputs("bert", "SEQ_CLS"))
        second = model.push_to_hub("tester/revs", token=WRITE).oid
    finally:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in saved:
                    param.copy_(saved[name])
    assert first != second and hub.head("tester/revs") == second
    assert not torch.allclose(changed, expected, atol=1e-4)

    loads = [("branch", {"revision": "v1"}), ("sha", {"revision": first}), ("main", {}), ("bad", {"revision": "v9"})]
    results = load_in_fresh_process(hub, tiny, tmp_path, "tester/revs", loads)
    torch.testing.assert_close(logits(tmp_path, "branch"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(tmp_path, "sha"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(tmp_path, "main"), changed, atol=1e-6, rtol=0)
    assert "error" in results["bad"] and results["bad"]["cause"] == "RevisionNotFoundError", results["bad"]


def test_private_repo_needs_token(hub, tiny, tmp_path):
    _, model, expected = tiny
    model.push_to_hub("tester/secret", token=WRITE, private=True)
    assert hub.repo("tester/secret").private

    loads = [("anon", {}), ("token", {"token": READ})]
    results = load_in_fresh_process(hub, tiny, tmp_path, "tester/secret", loads)
    assert results["anon"]["cause"] == "RepositoryNotFoundError", results
    assert results["token"] == {"ok": True}
    torch.testing.assert_close(logits(tmp_path, "token"), expected, atol=1e-6, rtol=0)

    base = AutoModelForSequenceClassification.from_pretrained(tiny[0] / "base")
    with pytest.raises(AdapterLoadError, match="private, pass `token=`"):
        load_adapter("tester/secret", base_model=base)
    loaded = load_adapter("tester/secret", base_model=base, token=READ)
    torch.testing.assert_close(common.outputs(loaded, make_inputs("bert", "SEQ_CLS")), expected, atol=1e-6, rtol=0)


def test_write_needs_write_token(hub, tiny):
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError, match="403 Forbidden"):
        tiny[1].push_to_hub("tester/readonly", token=READ)
    assert ("model", "tester/readonly") not in hub.repos


def test_failures_give_clear_errors_and_leave_local_files_untouched(hub, tiny, tmp_path, monkeypatch):
    root, model, _ = tiny
    model.save_pretrained(tmp_path / "local_adapter")
    local_before = tree_digest(tmp_path / "local_adapter")
    base = AutoModelForSequenceClassification.from_pretrained(root / "base")
    base_before = {n: p.detach().clone() for n, p in base.state_dict().items()}
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)

    with pytest.raises(AdapterLoadError, match="neither a local folder nor a Hub repository"):
        load_adapter("tester/missing", base_model=base)
    hub.repos.clear()
    from huggingface_hub import HfApi

    HfApi().create_repo("tester/empty", token=WRITE)
    with pytest.raises(AdapterLoadError, match="has no 'adapter_config.json'. Is it a PEFT adapter"):
        load_adapter("tester/empty", base_model=base)

    hub.stop()  # server down
    # huggingface_hub retries a refused HEAD 5 times with 1-8 s sleeps (about 23 s): skip the sleeps
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    with pytest.raises(AdapterLoadError, match="Could not reach the Hub"):
        load_adapter("tester/bert-s4", base_model=base)
    with pytest.raises(Exception, match="Connect|connect|refused"):
        model.push_to_hub("tester/down", token=WRITE)

    assert tree_digest(tmp_path / "local_adapter") == local_before
    assert os.listdir(work) == []  # push_to_hub saves into a temporary folder only
    assert all(torch.equal(p, base_before[n]) for n, p in base.state_dict().items())
    assert type(base.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear  # nothing injected
    assert not list((tmp_path / "hf_home_pusher").rglob("*.incomplete"))


def test_corrupted_file_on_hub_is_reported(hub, tiny):
    from adapters_hub import CorruptedAdapterError

    _, model, _ = tiny
    model.push_to_hub("tester/broken", token=WRITE)
    data = hub.repo("tester/broken").resolve("main").files["adapter_model.safetensors"].data
    hub.corrupt("tester/broken", "adapter_model.safetensors", data[: len(data) // 2])
    base = AutoModelForSequenceClassification.from_pretrained(tiny[0] / "base")
    with pytest.raises(CorruptedAdapterError, match="truncated.*force_download=True"):
        load_adapter("tester/broken", base_model=base)


def test_push_adapter_uploads_the_pack_card(hub, tiny, tmp_path):
    from adapters_hub import push_adapter

    _, model, expected = tiny
    commit = push_adapter(model, "tester/carded", token=WRITE, revision="v2")
    assert hub.head("tester/carded", "v2") == commit.oid
    card = hub.repo("tester/carded").resolve("v2").files["README.md"].data.decode()
    assert "library_name: peft" in card and "- peft-designspace" in card and "- designspace" in card
    assert "import peft_designspace" in card and str(model.base_model.budget_report()) in card
    results = load_in_fresh_process(hub, tiny, tmp_path, "tester/carded", [("v2", {"revision": "v2"})])
    assert results == {"v2": {"ok": True}}
    torch.testing.assert_close(logits(tmp_path, "v2"), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["samtuning", "s3pet"])
def test_every_method_round_trips_through_the_hub(hub, tiny, tmp_path, method):
    """SAM (calibrated) and S3PET (applied structure) adapters: push, then load in a fresh process, same logits."""
    from s3pet_helpers import searched_structure

    from peft_designspace import S3PETConfig, SAMTuningConfig, calibrate_sam

    base = AutoModelForSequenceClassification.from_pretrained(tiny[0] / "base")
    if method == "samtuning":
        model = get_peft_model(base, SAMTuningConfig(task_type="SEQ_CLS", budget=0.02))
        calibrate_sam(model, [make_inputs("bert", "SEQ_CLS", seed=s) for s in range(2)], show_progress=False)
        model = common.train_a_little(model, "bert", "SEQ_CLS")
    else:
        structure = searched_structure("bert", "SEQ_CLS")
        model = get_peft_model(base, S3PETConfig(task_type="SEQ_CLS", structure=structure, init_weights=False))
    expected = common.outputs(model, make_inputs("bert", "SEQ_CLS"))
    model.push_to_hub(f"tester/bert-{method}", token=WRITE)
    config = json.loads(hub.repo(f"tester/bert-{method}").resolve("main").files["adapter_config.json"].data)
    assert config["peft_type"] == method.upper()
    results = load_in_fresh_process(hub, tiny, tmp_path, f"tester/bert-{method}", [("main", {})])
    assert results == {"main": {"ok": True}}
    torch.testing.assert_close(logits(tmp_path, "main"), expected, atol=1e-6, rtol=0)
