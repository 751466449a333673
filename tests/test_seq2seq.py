"""T5 and the Vaswani Transformer: exact parameters, T5's relative position buckets."""

import pytest
import torch

from flopsweep.build import build
from flopsweep.config import resolve
from flopsweep.measure.size import unique_parameters
from flopsweep.models.seq2seq import relative_buckets
from tests.conftest import compose_config


def params(preset: str) -> int:
    model = build(resolve(compose_config(f"model={preset}", "device=meta"))).model
    return sum(p.numel() for p in unique_parameters(model))


@pytest.mark.parametrize("preset,shape", [
    ("t5_small", dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8)),
    ("t5_base", dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12)),
    ("t5_large", dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16)),
])
def test_t5_params_match_hugging_face(preset, shape):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        reference = transformers.T5Model(transformers.T5Config(vocab_size=32128, d_kv=64, **shape))
    assert params(preset) == sum(p.numel() for p in {id(p): p for p in reference.parameters()}.values())


@pytest.mark.parametrize("preset,paper", [("transformer_base", 65e6), ("transformer_big", 213e6)])
def test_vaswani_params_near_the_paper(preset, paper):
    # Vaswani et al. 2017, Table 3: ~65M and ~213M (rounded, with an approximate vocabulary)
    assert abs(params(preset) / paper - 1) < 0.05


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_hugging_face(bidirectional):
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    q, k = 40, 300
    offsets = torch.arange(k)[None, :] - torch.arange(q)[:, None]
    expected = T5Attention._relative_position_bucket(offsets, bidirectional=bidirectional, num_buckets=32,
                                                     max_distance=128)
    assert torch.equal(relative_buckets(q, k, bidirectional, 32, 128, torch.device("cpu")), expected)
