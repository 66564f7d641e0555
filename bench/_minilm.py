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
