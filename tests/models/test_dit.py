"""``model=dit`` and ``model=mmdit``: diffusion transformers built by diffusers, trained one denoising step on a batch
of latents. DiT-XL/2 against the paper's table 4 (Peebles & Xie 2023: 675M parameters, 118.6 Gflops a forward at 256 x
256), Stable Diffusion 3 Medium's MMDiT against its published parameter count, a tiny one of each against a closed form
written from its shapes on meta and on the CPU, low-rank adapters, and bad input named in one line."""

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


@pytest.mark.slow
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
    counted_alike_on_meta(result, *TINY)


def counted_alike_on_meta(result, *overrides: str) -> None:
    """Every op of the step counted, and a job counted on the CPU counted as the same job on meta."""
    assert not result.breakdown["uncounted_ops"]
    assert result.metrics["flops/forward_analytic"] == result.metrics["flops/forward"]
    if result.config["device"]["type"] == "cpu":
        meta = measured(*overrides)
        for key in ("flops/backward", "flops/forward_elementwise", "flops/backward_elementwise", "flops/optimizer",
                    "size/params"):
            assert result.metrics[key] == meta.metrics[key], key


# --- Stable Diffusion 3 Medium's MMDiT (model=mmdit) -----------------------------------------------------------------


@pytest.mark.slow  # builds the 2B transformer
def test_sd3_medium_has_its_published_2_028_328_000_parameters():
    """stabilityai/stable-diffusion-3-medium-diffusers' transformer as loaded from its checkpoint and counted in
    NVIDIA AITune's inspect guide (docs/aot_inspect.md: "transformer ... 2028328000"); the paper's "2B"."""
    model = build(resolve(compose_config("model=sd3_medium", "device=meta", "batch.size=1"))).model
    assert sum(p.numel() for p in model.parameters()) == 2_028_328_000


# A tiny MMDiT: an 8 x 8 x 4 latent in patches of 2 (16 image tokens) beside 5 text tokens of 24, 2 blocks of 2 heads
# of 16 (width 32), the pooled text of 12, 4 channels predicted
TINY_MMDIT = ["model=sd3_medium", "model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=16",
              "model.caption_projection_dim=32", "model.in_channels=4", "model.out_channels=4",
              "model.joint_attention_dim=24", "model.pooled_projection_dim=12", "model.pos_embed_max_size=8",
              "batch.image_size=8", "batch.seq_len=5", "batch.size=3"]


def tiny_mmdit_macs(dual_blocks: int = 0) -> int:
    """Multiply-adds of one sample's forward, from the MMDiT's shapes (Esser et al. 2024, figure 2): width d = 32,
    N = 16 image tokens, L = 5 text tokens, both streams attending together over N + L = 21 tokens."""
    d, n, text, both = 32, 16, 5, 21
    patches = n * (4 * 2 * 2) * d                       # the 2 x 2 x 4 patches to d (a convolution of stride 2)
    conditioning = 256 * d + d * d + 12 * d + d * d     # the timestep's 256 frequencies, the pooled text: two layers
    context = text * 24 * d                             # the text encoders' 24 to d
    block = (2 * d * 6 * d                              # both streams' adaLN-Zero: 6 modulations of d each
             + both * 3 * d * d + both * d * d          # q, k, v and out of both streams (each its own weights)
             + 2 * both * both * d                      # Q K^T and the weighted values over all 21 tokens
             + both * 2 * d * 4 * d)                    # both streams' MLPs, d -> 4d -> d
    last = (d * 6 * d + d * 2 * d                       # the image's adaLN-Zero, the text's scale and shift only
            + both * 3 * d * d + n * d * d              # q, k, v of both; out of the image only
            + 2 * both * both * d
            + n * 2 * d * 4 * d)                        # the image's MLP only: the text's output is not used
    dual = d * 3 * d + n * 4 * d * d + 2 * n * n * d    # SD3.5: 3 more modulations, attention over the image alone
    final = d * 2 * d + n * d * (2 * 2 * 4)             # the final scale and shift, then to 2 x 2 x 4 values a token
    return patches + conditioning + context + block + last + dual_blocks * dual + final


@pytest.mark.parametrize("device", ["meta", "cpu"])
@pytest.mark.parametrize("dual", [False, True])
def test_a_small_mmdit_counts_its_closed_form_the_same_on_meta_and_on_the_cpu(device, dual):
    """Two FLOPs a multiply-add, three samples. With SD3.5's dual attention in the first block and its RMS-normed
    queries and keys (no matmul), that block's second attention and modulations too."""
    tiny = [*TINY_MMDIT, *(["model.dual_attention_layers=[0]", "model.qk_norm=rms_norm"] if dual else [])]
    result = measured(*tiny, device=device)
    assert result.metrics["flops/forward"] == 3 * 2 * tiny_mmdit_macs(dual_blocks=int(dual))
    assert result.metrics["flops/backward"] > result.metrics["flops/forward"]
    counted_alike_on_meta(result, *tiny)


def test_an_mmdit_records_its_shape_and_runs_333_text_tokens_of_a_1024_pixel_image_unless_told():
    shape = measured(*TINY_MMDIT).info["shape"]
    assert (shape["width"], shape["layers"], shape["heads"], shape["head_dim"]) == (32, 2, 2, 16)
    assert shape["causal_lm"] is False and shape["experts"] is None
    spec = resolve(compose_config("model=sd3_medium", "device=meta", "batch.size=1"))
    assert (spec.batch.seq_len, spec.batch.image_size) == (333, 128)  # CLIP's 77 and T5's 256; 128 x 8 pixels


def test_an_mmdit_frozen_backbone_trains_its_last_block_and_final_layer():
    frozen = measured(*TINY_MMDIT, "train=frozen_backbone", "train.trainable_layers=1")
    assert 0 < frozen.metrics["size/params_trainable"] < frozen.metrics["size/params"]


# --- both families ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tiny,targets,adapted", [
    (TINY, "[to_q,to_v]", 2 * 2),                                         # 2 layers a block, 2 blocks
    (TINY_MMDIT, "[to_q,to_v,add_q_proj,add_v_proj]", 2 * 4),             # the image's and the text's q and v
])
def test_a_diffusion_transformer_trains_low_rank_adapters_on_its_attention(tiny, targets, adapted):
    """train=lora on linear layers of 32 -> 32: r (32 + 32) each; no weight gradients for the frozen model."""
    r = 4
    lora = measured(*tiny, "train=lora", f"train.rank={r}", f"train.targets={targets}")
    full = measured(*tiny)
    assert lora.metrics["size/params_trainable"] == adapted * r * (32 + 32)
    assert lora.metrics["size/params"] == full.metrics["size/params"] + lora.metrics["size/params_trainable"]
    assert lora.metrics["size/grads_bytes"] == 4 * lora.metrics["size/params_trainable"]
    assert lora.metrics["flops/backward"] < full.metrics["flops/backward"]


@pytest.mark.parametrize("preset,overrides,key", [
    ("dit_xl_2", ["batch.image_size=9"], "batch.image_size=9"),          # not a whole number of patches of 2
    ("dit_xl_2", ["model.out_channels=5"], "model.out_channels=5"),      # neither the noise (4) nor with its variance
    ("dit_xl_2", ["model.num_layers=0"], "model.num_layers=0"),
    ("sd3_medium", ["batch.image_size=9"], "batch.image_size=9"),
    ("sd3_medium", ["batch.image_size=400"], "batch.image_size=400"),    # 200 patches a side: the table holds 192
    ("sd3_medium", ["model.caption_projection_dim=1152"], "model.caption_projection_dim=1152"),  # not the image's 1536
    ("sd3_medium", ["model.dual_attention_layers=[24]"], "model.dual_attention_layers=[24]"),    # no block 24 of 24
    ("sd3_medium", ["model.qk_norm=l2"], "model.qk_norm='l2'"),
    ("sd3_medium", ["batch.seq_len=0"], "batch.seq_len=0"),
])
def test_a_bad_diffusion_transformer_value_names_its_key_in_one_line(preset, overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(f"model={preset}", *overrides, "device=meta"))
    assert str(err.value).startswith(key) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("preset,family", [("dit_xl_2", "dit"), ("sd3_medium", "mmdit")])
def test_without_diffusers_a_diffusion_transformer_is_one_line_saying_how_to_install_it(monkeypatch, preset, family):
    """As the checkout's make installs it: torch pinned as installed (pip resolved it again), flopsweep editable."""
    import os
    import sys

    import torch

    from tests.helpers import REPO

    monkeypatch.chdir(REPO.parent)  # the checkout named by its path from elsewhere
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers raises ImportError
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(f"model={preset}", "device=meta"))
    said, python = str(err.value), str(err.value).split(": ")[-1].split(" -m pip ")[0]
    assert os.path.samefile(python, sys.executable), said  # this environment's interpreter, as typed from here
    assert said == (f"model.family='{family}': needs diffusers: {python} -m pip install "
                    f"'torch=={torch.__version__.split('+')[0]}' -e '{REPO}[diffusion]'")  # the checkout's
