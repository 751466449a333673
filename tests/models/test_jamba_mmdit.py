"""Jamba 1.5 Mini (``model=jamba_1_5_mini``, transformers' ``jamba``: Mamba-1 and attention layers, a mixture of
experts every other layer): its safetensors index's parameter count, the card's active parameters, and a small one's
active parameters and experts as a job records them (its shape is checked beside every preset's in
tests/models/test_shape.py). Stable Diffusion 3 Medium's MMDiT, the other preset of this pair, is tested beside DiT in
tests/models/test_dit.py."""

import pytest

pytest.importorskip("transformers")

from flopsweep.build.model import build  # noqa: E402
from flopsweep.config.resolve import resolve  # noqa: E402
from flopsweep.measure.size import active_parameters  # noqa: E402
from tests.helpers import compose_config  # noqa: E402
from tests.models.test_hf import measured  # noqa: E402

# ai21labs/AI21-Jamba-1.5-Mini's model.safetensors.index.json: total_size 103,140,646,656 bytes, every tensor bf16
PUBLISHED = 103_140_646_656 // 2


@pytest.mark.slow  # builds the 52B model on meta
def test_jamba_1_5_mini_has_its_safetensors_parameter_count_and_its_cards_12b_active():
    """Of its parameters a token uses all but 14 of the 16 experts (gate, up and down of 4,096 x 14,336) in each of its
    16 MoE layers: the card's "12B active"."""
    model = build(resolve(compose_config("model=jamba_1_5_mini", "device=meta", "batch.size=1"))).model
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED
    routed = 16 * 16 * 3 * 4096 * 14336
    assert active_parameters(model) == PUBLISHED - routed + routed * 2 // 16
    assert round(active_parameters(model) / 1e9) == 12


# Jamba cut small, its periods kept: 8 layers of 64, attention in layer 4 (4 heads, 2 KV heads), experts in the odd
# layers (4 of them: 16 experts of 96, 2 a token), Mamba's dt rank 8
JAMBA = ["model=jamba_1_5_mini", "++model.num_hidden_layers=8", "++model.hidden_size=64",
         "++model.intermediate_size=96", "++model.vocab_size=500", "++model.num_attention_heads=4",
         "++model.num_key_value_heads=2", "++model.mamba_dt_rank=8", "batch.seq_len=16", "batch.size=2"]


def test_a_small_jamba_job_records_its_experts_and_its_active_parameters():
    """size/params_active: every parameter but the 14 of 16 experts a token does not use in each of the 4 MoE
    layers (gate, up and down, 64 x 96 each)."""
    result = measured(*JAMBA)
    routed = 4 * 16 * 3 * 64 * 96
    assert result.metrics["size/params_active"] == result.metrics["size/params"] - routed + routed * 2 // 16
    assert (result.info["shape"]["experts"], result.info["shape"]["experts_per_token"]) == (16, 2)
    assert not result.breakdown["uncounted_ops"]
