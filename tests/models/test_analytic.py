"""The closed form of every transformer family equals the counted matmul FLOPs of forward, over a grid."""

import contextlib

import pytest

from flopsweep.build.model import build
from flopsweep.config.resolve import resolve
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU
from tests.helpers import compose_config

GRID = [
    ("gpt2_small", ["model.d_model=96", "model.n_head=3", "model.n_layer=2", "model.vocab_size=300",
                    "batch.seq_len=40"]),
    ("gpt2_small", ["model.d_model=128", "model.n_head=8", "model.n_layer=1", "model.d_ff=200", "batch.seq_len=7"]),
    ("llama2_7b", ["model.d_model=128", "model.n_head=8", "model.n_kv_head=2", "model.n_layer=2", "model.d_ff=344",
                   "model.vocab_size=500", "batch.seq_len=33"]),
    ("qwen2_5_0_5b", ["model.d_model=112", "model.n_head=14", "model.n_kv_head=7", "model.n_layer=1",
                      "model.d_ff=64", "model.vocab_size=99", "batch.seq_len=16"]),
    ("bert_base", ["model.d_model=64", "model.n_head=4", "model.n_layer=2", "model.d_ff=100", "batch.seq_len=24"]),
    ("vit_b16", ["model.d_model=64", "model.n_head=4", "model.n_layer=2", "model.d_ff=128", "model.patch_size=8",
                 "batch.image_size=32", "model.num_classes=10"]),
    ("vit_h14", ["model.d_model=48", "model.n_head=3", "model.n_layer=1", "model.d_ff=96", "batch.image_size=56"]),
    ("t5_small", ["model.d_model=64", "model.d_kv=16", "model.n_head=4", "model.n_layer=2", "model.d_ff=96",
                  "model.vocab_size=200", "batch.seq_len=20"]),
    ("t5_small", ["model.d_model=64", "model.n_layer=1", "model.vocab_size=50", "batch.seq_len=12",
                  "model.target_len=5"]),
    ("transformer_base", ["model.d_model=64", "model.n_head=4", "model.n_layer=2", "model.d_ff=96",
                          "model.vocab_size=300", "batch.seq_len=18", "model.target_len=9"]),
    ("generic", ["model.embed_dim=64", "model.num_heads=4", "model.ff_dim=96", "model.memory_seq_len=10",
                 "batch.seq_len=14"]),
    ("generic", ["model.embed_dim=64", "model.num_heads=2", "model.ff_dim=80", "model.num_decoder_blocks=0",
                 "batch.seq_len=30"]),
    ("generic", ["model.embed_dim=32", "model.num_heads=2", "model.ff_dim=80", "model.num_encoder_blocks=0",
                 "model.memory_seq_len=0", "batch.seq_len=9"]),
    ("generic", ["model.embed_dim=32", "model.num_heads=2", "model.ff_dim=80", "model.num_encoder_blocks=0",
                 "model.memory_seq_len=6", "batch.seq_len=9"]),
]


@pytest.mark.parametrize("preset,overrides", GRID, ids=[f"{p}-{i}" for i, (p, _) in enumerate(GRID)])
@pytest.mark.parametrize("batch,device", [(1, "meta"), (3, "meta"), (1, "cpu"),
                                          pytest.param(3, "cpu", marks=pytest.mark.slow)],  # the CPU: batch 1 fast
                         ids=["1-meta", "3-meta", "1-cpu", "3-cpu"])
def test_closed_form_equals_count(preset, overrides, device, batch):
    spec = resolve(compose_config(f"model={preset}", f"device={device}", f"batch.size={batch}", *overrides))
    built = build(spec)
    with MetaLikeCPU() if device == "meta" else contextlib.nullcontext():
        counted = count_step(built.model, built.inputs, built.optimizer)
    assert counted.forward.matmul == spec.family.forward_flops(spec.model, spec.batch)
    assert not counted.uncounted
