"""Module roles of families outside the main test table (found by a review of 20 architectures, 2026-11-25).

Their projections have names of their own (`mlp.fc1`, `query_key_value`, `qkv_proj`, `q_lin`, `Wqkv`, ...); before,
S3PET searched them over norms (and a few projections) only, silently, and S4 refused them.
"""

import pytest
import torch
import transformers as tf
from peft import PeftModel, get_peft_model

from peft_designspace import DesignSpaceConfig, S3PETConfig
from peft_designspace._warnings import DesignSpaceWarning
from peft_designspace.architecture import PROJECTION_ROLES, resolve_architecture

SPECIAL = {"vocab_size": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
DECODER = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 64}
CONFIGS = {
    "phi": lambda: tf.PhiConfig(intermediate_size=64, **DECODER, **SPECIAL),
    "phi3": lambda: tf.Phi3Config(intermediate_size=64, num_key_value_heads=2, **DECODER, **SPECIAL),
    "falcon": lambda: tf.FalconConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, new_decoder_architecture=False, **SPECIAL
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(intermediate_size=64, **DECODER, **SPECIAL),
    "bloom": lambda: tf.BloomConfig(hidden_size=32, n_layer=4, n_head=4, **SPECIAL),
    "distilbert": lambda: tf.DistilBertConfig(
        dim=32, hidden_dim=64, n_layers=4, n_heads=4, max_position_embeddings=64, vocab_size=128, pad_token_id=0
    ),
    "deberta_v2": lambda: tf.DebertaV2Config(intermediate_size=64, **DECODER, **SPECIAL),
    "modernbert": lambda: tf.ModernBertConfig(
        intermediate_size=64,
        global_attn_every_n_layers=2,
        local_attention=16,
        cls_token_id=1,
        sep_token_id=2,
        **DECODER,
        **SPECIAL,
    ),  # fmt: skip
}
ENCODERS = {"distilbert", "deberta_v2", "modernbert"}


def _model(name: str):
    config = CONFIGS[name]()
    torch.manual_seed(0)
    if name in ENCODERS:
        config.num_labels = 2
        return tf.AutoModelForSequenceClassification.from_config(config).eval(), "SEQ_CLS"
    return tf.AutoModelForCausalLM.from_config(config).eval(), "CAUSAL_LM"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_projection_role_is_found(name):
    model, _ = _model(name)
    for layer in resolve_architecture(model).layers:
        assert all(layer.modules_for(role) for role in PROJECTION_ROLES), (layer.path, layer.roles)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.filterwarnings("ignore:The realised count:peft_designspace.DesignSpaceWarning")  # tiny: coarse
def test_lora_preset_and_s3pet_search_train_and_reload(name, tmp_path):
    model, task = _model(name)
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    for kind, config in (
        ("lora", DesignSpaceConfig(preset="lora", budget=0.05, task_type=task, init_weights=False)),
        ("s3pet", S3PETConfig(budget=600, task_type=task, init_weights=False)),
    ):
        base, _ = _model(name)
        peft_model = get_peft_model(base, config)
        labels = torch.tensor([0, 1]) if task == "SEQ_CLS" else ids
        peft_model.train()
        peft_model(input_ids=ids, labels=labels).loss.backward()
        trained = [n for n, p in peft_model.named_parameters() if p.grad is not None]
        assert trained and all(p.requires_grad for n, p in peft_model.named_parameters() if n in trained)
        peft_model.eval()
        with torch.no_grad():
            expected = peft_model(input_ids=ids).logits
        peft_model.save_pretrained(tmp_path / kind)
        reloaded = PeftModel.from_pretrained(_model(name)[0], tmp_path / kind).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_s3pet_warns_when_layers_lack_a_projection_role():
    config = tf.MixtralConfig(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, intermediate_size=64,
                              **DECODER, **SPECIAL)  # fmt: skip
    model = tf.AutoModelForCausalLM.from_config(config)  # the experts are 3-D weights, not linear modules
    with pytest.warns(DesignSpaceWarning, match=r"no module for some projection roles \(ffn_in: 4 of 4 layers"):
        get_peft_model(model, S3PETConfig(budget=300, task_type="CAUSAL_LM"))
