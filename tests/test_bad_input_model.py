"""Errors that need the model: where strategies cannot go, and adapters that do not fit the base model."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_model
from torch import nn

from peft_designspace import DesignSpaceConfig


class _HandAttention(nn.Module):
    """A self-attention that computes scores itself, without transformers' AttentionInterface."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.config = type("Cfg", (), {"_attn_implementation": "sdpa", "num_attention_heads": 2})()
        self.num_heads, self.head_dim = 2, d // 2

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.o_proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.self_attn = _HandAttention(d)
        self.mlp = nn.Module()
        self.mlp.up_proj, self.mlp.down_proj = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp.down_proj(torch.relu(self.mlp.up_proj(x)))


class HandModel(nn.Module):
    def __init__(self, d: int = 16, n: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block(d) for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.filterwarnings("ignore:The realised count:peft_designspace.DesignSpaceWarning")  # tiny: coarse
def test_prefix_on_model_without_attention_interface_names_the_class():
    config = DesignSpaceConfig(preset="prefix", budget=0.05)
    with pytest.raises(ValueError, match="_HandAttention does not use it"):
        get_peft_model(HandModel(), config)


@pytest.mark.filterwarnings("ignore:The realised count:peft_designspace.DesignSpaceWarning")  # tiny: coarse
def test_model_without_prefix_works_on_custom_module_with_known_roles():
    model = get_peft_model(HandModel(), DesignSpaceConfig(preset="lora", budget=0.05))
    report = model.base_model.budget_report()
    assert abs(report.relative_error) <= 0.05
    assert report.per_strategy == {"lora": report.realised}


def test_no_layer_stack_found_says_what_was_searched():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"searched for an nn.ModuleList named one of \['block'"):
        get_peft_model(model, DesignSpaceConfig(preset="lora", budget=0.05))


def test_explicit_layer_stack_missing_names_the_path_and_candidates():
    with pytest.raises(
        ValueError, match=r"`layer_stacks` entry 'encoder.blocks'.*found stacks: \['bert.encoder.layer'\]"
    ):
        get_peft_model(make_model("bert", "SEQ_CLS"), DesignSpaceConfig(layer_stacks=["encoder.blocks"], budget=0.05))


def test_lora_targets_without_match_name_the_layer_and_roles():
    model = HandModel()
    for block in model.layers:  # an unknown name for the query projection
        block.self_attn.wq = block.self_attn.q_proj
        del block.self_attn.q_proj
    with pytest.raises(ValueError, match=r"`lora_targets=\['query'\]` matched no projection in layer 'layers.0'"):
        get_peft_model(model, DesignSpaceConfig(preset="lora", lora_targets=["query"], budget=0.05))


def test_adapter_for_another_base_model_is_refused(tmp_path):
    model = get_peft_model(make_model("bert", "SEQ_CLS"), DesignSpaceConfig(task_type="SEQ_CLS", budget=0.05))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="made for a different base model"):
        PeftModel.from_pretrained(make_model("llama", "SEQ_CLS"), tmp_path)


def test_infeasible_budget_gives_smallest_feasible_budget():
    with pytest.raises(ValueError, match=r"smallest feasible budget is [\d,]+ parameters"):
        get_peft_model(make_model("bert", "SEQ_CLS"), DesignSpaceConfig(task_type="SEQ_CLS", budget=1e-6))


def test_unknown_budget_report_adapter():
    model = get_peft_model(make_model("bert", "SEQ_CLS"), DesignSpaceConfig(task_type="SEQ_CLS", budget=0.05))
    with pytest.raises(ValueError, match=r"`adapter_name` must be one of \['default'\], got 'other'"):
        model.base_model.budget_report("other")
