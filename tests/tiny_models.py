"""Tiny random transformers models built from configs (no network), keyed by id.

Every factory takes `task` ("SEQ_CLS", "CAUSAL_LM" or "SEQ_2_SEQ_LM") and returns a model in eval mode with
deterministic weights. Special-token ids are set inside the tiny vocabulary. `hidden` can be raised to 128 for
bitsandbytes 4-bit tests, which need it on CPU.
"""

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
    RobertaConfig,
    T5Config,
)

VOCAB = 128


def _config(model_id: str, hidden: int, layers: int):
    heads = 4
    common = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if model_id == "bert":
        return BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=64,
            **common,
        )
    if model_id == "roberta":
        return RobertaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=70,
            **common,
        )
    if model_id == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=64, **common)
    if model_id == "llama":
        return LlamaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **common,
        )
    if model_id == "qwen2":
        return Qwen2Config(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            **common,
        )
    if model_id == "t5":
        return T5Config(
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=2 * hidden,
            num_layers=layers // 2,
            num_decoder_layers=layers // 2,
            num_heads=heads,
            decoder_start_token_id=0,
            **common,
        )
    raise KeyError(model_id)


MODEL_IDS = ("bert", "roberta", "gpt2", "llama", "qwen2", "t5")
DEFAULT_TASK = {
    "bert": "SEQ_CLS",
    "roberta": "SEQ_CLS",
    "gpt2": "CAUSAL_LM",
    "llama": "CAUSAL_LM",
    "qwen2": "CAUSAL_LM",
    "t5": "SEQ_2_SEQ_LM",
}


def make_model(model_id: str, task: str | None = None, hidden: int = 32, layers: int = 8, seed: int = 0):
    """Build a tiny random model; `layers` counts encoder + decoder layers together for T5."""
    task = task or DEFAULT_TASK[model_id]
    config = _config(model_id, hidden, layers)
    torch.manual_seed(seed)
    if task == "SEQ_CLS":
        config.num_labels = 2
        model = AutoModelForSequenceClassification.from_config(config)
    elif task == "CAUSAL_LM":
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForSeq2SeqLM.from_config(config)
    return model.eval()


def make_inputs(model_id: str, task: str | None = None, batch: int = 2, length: int = 7, seed: int = 1) -> dict:
    """Model kwargs with a padded second row, labels included."""
    task = task or DEFAULT_TASK[model_id]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, length - 2 :] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if task == "SEQ_CLS":
        inputs["labels"] = torch.randint(0, 2, (batch,), generator=g)
    elif task == "CAUSAL_LM":
        inputs["labels"] = ids.masked_fill(mask == 0, -100)
    else:
        inputs["labels"] = torch.randint(3, VOCAB, (batch, 5), generator=g)
    return inputs
