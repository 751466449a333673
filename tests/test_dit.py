"""``model=dit``: a diffusion transformer built by diffusers, trained one denoising step on a batch of latents. DiT-XL/2
against the paper's table 4 (Peebles & Xie 2023: 675M parameters, 118.6 Gflops a forward at 256 x 256), a tiny DiT
against a closed form on meta and on the CPU, low-rank adapters, and bad input named in one line."""

import importlib.util

import pytest

if importlib.util.find_spec("diffusers") is None:  # looked for, not imported: importing it costs every worker 3 s
    pytest.skip("needs diffusers (the diffusion extra)", allow_module_level=True)

from flopsweep.build.model import build  # noqa: E402
from flopsweep.config.resolve import job_config, resolve  # noqa: E402
from flopsweep.core.errors import ConfigError  # noqa: E402
from flopsweep.run.job import run_job  # noqa: E402
from tests.helpers import compose_config  # noqa: E402


def measured(*overrides: str, device: str = "meta"):
    cfg = compose_config(*overrides, f"device={device}", "tracking=none", "measure.time=false")
    spec = resolve(cfg)
    result = run_job(spec, job_config(cfg, spec))
    assert result.status == "ok", result.error
    return result


def test_dit_xl_2_has_the_papers_675m_parameters_and_its_conditioning_embedder_once():
    """Table 4 states 675M (to the million): counted, 674,834,720 rounds to it. diffusers' class gives each of the 28
    blocks its own embedder (the timestep's 256 -> 1152 -> 1152 MLP and the 1,001-row class table, one of them for
    classifier-free guidance); built as the paper's model, one serves all, 27 fewer."""
    import diffusers
    import torch

    model = build(resolve(compose_config("model=dit_xl_2", "device=meta", "batch.size=1"))).model
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6) == 675
    d = 1152
    embedder = 256 * d + d + d * d + d + 1001 * d
    with torch.device("meta"):
        theirs = diffusers.DiTTransformer2DModel(out_channels=8)  # its defaults are DiT-XL/2's
    assert sum(p.numel() for p in theirs.parameters()) == params + 27 * embedder


def test_dit_xl_2_computes_the_papers_118_6_gflops_a_forward_at_256_pixels():
    """Table 4's Gflops are multiply-accumulates of one forward of one 32 x 32 x 4 latent (a 256-pixel image), stated
    to a tenth: half the counted matmul FLOPs round to 118.6 G. Every op of its step is counted."""
    result = measured("model=dit_xl_2", "batch.size=1")
    assert round(result.metrics["flops/forward"] / 2 / 1e9, 1) == 118.6
    assert result.metrics["flops/forward_analytic"] == result.metrics["flops/forward"]
    assert not result.breakdown["uncounted_ops"]
    assert result.metrics["flops/backward"] > result.metrics["flops/forward"]
    assert result.info["shape"]["width"] == 1152 and result.info["shape"]["causal_lm"] is False


# A tiny DiT: an 8 x 8 x 4 latent in patches of 2 (16 tokens), 2 blocks of 2 heads of 16 (width 32), 10 classes,
# the noise and its variance predicted (8 channels)
TINY = ["model=dit_xl_2", "model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=16",
        "model.num_embeds_ada_norm=10", "batch.image_size=8", "batch.size=3"]


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_a_small_dit_counts_its_closed_form_the_same_on_meta_and_on_the_cpu(device):
    """Per sample: the patch embedding (16 tokens x 4 x 2 x 2 x 32), the conditioning once (the timestep's 256
    frequencies x 32, then 32 x 32), per block its adaLN-Zero modulation (32 x 6 x 32), q, k, v and out (16 x 4 x
    32^2), attention (2 x 16^2 x 32 multiply-adds) and the MLP (16 x 2 x 32 x 128); the final layer's modulation (32
    x 64) and its projection to 2 x 2 x 8 values a token. Two FLOPs a multiply-add, three samples."""
    d, tokens = 32, 16
    block = d * 6 * d + tokens * 4 * d * d + 2 * tokens ** 2 * d + tokens * 2 * d * 4 * d
    macs = tokens * 4 * 2 * 2 * d + (256 * d + d * d) + 2 * block + (d * 2 * d + tokens * d * 2 * 2 * 8)
    result = measured(*TINY, device=device)
    assert result.metrics["flops/forward"] == 3 * 2 * macs
    assert not result.breakdown["uncounted_ops"]
    if device == "cpu":
        meta = measured(*TINY)
        for key in ("flops/backward", "flops/forward_elementwise", "flops/backward_elementwise", "flops/optimizer",
                    "size/params"):
            assert result.metrics[key] == meta.metrics[key], key


def test_a_dit_trains_low_rank_adapters_on_its_attention():
    """train=lora on every block's to_q and to_v (32 -> 32): r (32 + 32) each, 2 blocks; no weight gradients for
    the frozen model."""
    r = 4
    lora = measured(*TINY, "train=lora", f"train.rank={r}", "train.targets=[to_q,to_v]")
    full = measured(*TINY)
    assert lora.metrics["size/params_trainable"] == 2 * 2 * r * (32 + 32)
    assert lora.metrics["size/params"] == full.metrics["size/params"] + lora.metrics["size/params_trainable"]
    assert lora.metrics["size/grads_bytes"] == 4 * lora.metrics["size/params_trainable"]
    assert lora.metrics["flops/backward"] < full.metrics["flops/backward"]


@pytest.mark.parametrize("overrides,key", [
    (["batch.image_size=9"], "batch.image_size=9"),        # not a whole number of patches of 2
    (["model.out_channels=5"], "model.out_channels=5"),    # neither the noise (4) nor the noise and its variance
    (["model.num_layers=0"], "model.num_layers=0"),
])
def test_a_bad_dit_value_names_its_key_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve(compose_config("model=dit_xl_2", *overrides, "device=meta"))
    assert str(err.value).startswith(key) and "\n" not in str(err.value), str(err.value)


def test_without_diffusers_model_dit_is_one_line_saying_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers raises ImportError
    with pytest.raises(ConfigError) as err:
        resolve(compose_config("model=dit_xl_2", "device=meta"))
    assert str(err.value) == ("model.family='dit': needs diffusers: "
                              f"{sys.executable} -m pip install 'flopsweep[diffusion]'")
