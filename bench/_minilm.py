"""The MiniLM-L6-shaped BERT the benchmarks under `bench/` train: built from a config, random init, no download."""

from __future__ import annotations

from suite.plan import method_params  # noqa: F401  (re-exported: one trainable-count rule for every bench)

MODEL_SHAPE = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}


def build_base(seed: int):
    """`BertForSequenceClassification` (2 labels) of `MODEL_SHAPE`, seeded."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**MODEL_SHAPE, num_labels=2))


def meta_base():
    """The model of `build_base` on the meta device: its modules and counts without memory or init time, to check
    options against before any real model is built."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        return BertForSequenceClassification(BertConfig(**MODEL_SHAPE, num_labels=2))


def check_seq_len(parser, seq_len: int) -> None:
    """`--seq-len` must fit the position embeddings (BERT fails deep in its forward otherwise)."""
    limit = MODEL_SHAPE["max_position_embeddings"]
    if seq_len > limit:
        parser.error(f"--seq-len must be <= {limit} (the model's max_position_embeddings), got {seq_len}")


def encoder_linear_names(base) -> list[str]:
    """The last name parts of the `nn.Linear` modules of the encoder, sorted (the classifier head is trained in full
    by every method, not adapted)."""
    from torch import nn

    return sorted({name.rsplit(".", 1)[-1] for name, m in base.bert.named_modules() if isinstance(m, nn.Linear)})


def make_batch(batch_size: int, seq_len: int, seed: int) -> dict:
    """Random token ids, a full attention mask and random labels."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    return {
        "input_ids": torch.randint(0, MODEL_SHAPE["vocab_size"], (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=generator),
    }


def lora_cost_per_rank(base, targets: list[str]) -> int:
    """Trainable parameters that one unit of LoRA rank costs on the `nn.Linear` modules named `targets`."""
    from torch import nn

    cost = 0
    for name, module in base.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            cost += module.in_features + module.out_features
    if cost == 0:
        raise ValueError(f"No nn.Linear named {targets} in the base model.")
    return cost
