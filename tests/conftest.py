"""Test-suite guards: no network (sockets refused except loopback), offline hub, fixed seeds, 2 threads."""

import os
import random
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from tiny_models import make_model  # noqa: E402

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _real_connect(self, address)
    raise RuntimeError(f"Tests must not touch the network (tried to connect to {address!r}).")


socket.socket.connect = _guarded_connect
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# shared by the command-line tests (test_cli.py, test_cli_review_fixes.py) --------------------------------------------

WORDS = ["good", "bad", "film", "great", "awful", "fine", "dull", "the", "a", "is", "movie", "plot"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny BERT with a word-level tokenizer (ids inside its 128-token vocabulary) and a tiny SST-2 folder."""
    root = tmp_path_factory.mktemp("tiny")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "model")
    make_model("bert", "SEQ_CLS", layers=4).save_pretrained(root / "model")
    rng = random.Random(0)
    (root / "SST-2").mkdir()
    for split, n in (("train", 48), ("dev", 8)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            word = rng.choice(["good", "great", "fine"] if i % 2 else ["bad", "awful", "dull"])
            lines.append(f"the {rng.choice(['film', 'movie', 'plot'])} is {word}\t{i % 2}")
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any transformers model or tokenizer is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were validated")

    for name in ("AutoModelForSequenceClassification", "AutoTokenizer", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)
