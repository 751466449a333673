"""ResNet-BK: the BK-Core against a dense inverse, the parameter count, fixed-shape MoE routing (k experts
per token, also on meta), the reference analytic counter, presets and validation."""

from __future__ import annotations

import pytest
import torch

from flopsweep.config.resolve import resolve
from flopsweep.core.errors import ConfigError
from flopsweep.models import resnet_bk as rb
from tests.models import resnet_bk_reference as ref
from flopsweep.models.base import BatchShape, language_model_inputs
from tests.helpers import MatmulFlops, compose_config

SMALL = dict(vocab_size=1000, d_model=32, n_layers=2, n_seq=16, num_experts=2, top_k=1)


def dense_resolvent_diagonal(v: torch.Tensor) -> torch.Tensor:
    """diag((H - iI)^-1), H = tridiag(1, -2 + v, 1), by a dense complex inverse."""
    n = v.shape[-1]
    off = torch.ones(*v.shape[:-1], n - 1, dtype=torch.complex128)
    h = torch.diag_embed(v.to(torch.complex128) - 2) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.linalg.inv(h - 1j * torch.eye(n, dtype=torch.complex128)).diagonal(dim1=-2, dim2=-1)


def theta_phi_resolvent_diagonal(v: torch.Tensor) -> torch.Tensor:
    """The spec's literal theta/phi recurrences in complex128, for one sequence."""
    a = v.to(torch.complex128) - 2 - 1j
    n = a.shape[0]
    theta = [torch.tensor(1, dtype=torch.complex128), a[0]]
    for i in range(1, n):
        theta.append(a[i] * theta[i] - theta[i - 1])
    phi = [torch.tensor(0, dtype=torch.complex128)] * n
    phi[n - 1] = torch.tensor(1, dtype=torch.complex128)
    if n > 1:
        phi[n - 2] = a[n - 1]
    for i in range(n - 3, -1, -1):
        phi[i] = a[i + 1] * phi[i + 1] - phi[i + 2]
    return torch.stack(theta[:-1]) * torch.stack(phi) / theta[n]


# -- BK-Core ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 8, 16])
def test_bk_core_matches_dense_inverse(n):
    v = torch.empty(3, n, dtype=torch.float64).uniform_(-3, 3, generator=torch.Generator().manual_seed(n))
    g_re, g_im = rb.resolvent_diagonal(v)
    expected = dense_resolvent_diagonal(v)
    torch.testing.assert_close(g_re, expected.real, rtol=0, atol=1e-13)
    torch.testing.assert_close(g_im, expected.imag, rtol=0, atol=1e-13)
    features = rb.BKCore(feature_clamp=10.0)(v)
    torch.testing.assert_close(features, torch.stack([expected.real, expected.imag], -1), rtol=0, atol=1e-13)


def test_bk_core_matches_theta_phi_recurrences():
    v = torch.empty(64, dtype=torch.float64).uniform_(-3, 3, generator=torch.Generator().manual_seed(0))
    g_re, g_im = rb.resolvent_diagonal(v.unsqueeze(0))
    expected = theta_phi_resolvent_diagonal(v)
    torch.testing.assert_close(torch.complex(g_re[0], g_im[0]), expected, rtol=1e-10, atol=1e-13)


def test_bk_core_gradient():
    v = torch.empty(2, 8, dtype=torch.float64).uniform_(-3, 3, generator=torch.Generator().manual_seed(1))
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: rb.resolvent_diagonal(x), (v,))
    # dG_ii/dv_j = -G_ij G_ji = -G_ij^2 (H symmetric): the exact derivative, from the dense inverse
    jac_re, jac_im = torch.autograd.functional.jacobian(lambda x: rb.resolvent_diagonal(x[0]), v.detach()[:1])
    n = v.shape[1]
    off = torch.ones(n - 1, dtype=torch.complex128)
    h = torch.diag(v.detach()[0].to(torch.complex128) - 2) + torch.diag(off, 1) + torch.diag(off, -1)
    g = torch.linalg.inv(h - 1j * torch.eye(n, dtype=torch.complex128))
    expected = -(g * g)
    torch.testing.assert_close(jac_re.reshape(n, n), expected.real, rtol=0, atol=1e-12)
    torch.testing.assert_close(jac_im.reshape(n, n), expected.imag, rtol=0, atol=1e-12)


def test_bk_core_long_sequence_is_finite():
    # the literal theta recurrence overflows float32 near N=128 and float64 near N=1000; the ratios never do
    v = torch.empty(2, 2048).uniform_(-3, 3, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    features = rb.BKCore(feature_clamp=10.0)(v)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert features.abs().max() <= 1.0 + 1e-6  # |G_ii| <= 1 / Im(z) = 1
    features.square().sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


# -- parameters and routing ------------------------------------------------------------------------

def spec_params(V, D, L, n_seq, E) -> int:
    return V * D + n_seq * D + L * (2 * D + E * (4 * D * D + 3 * D) + (D * E + E) + (D + 1) + 3 * D + 1) \
        + 2 * D + (D * V + V)


@pytest.mark.parametrize("fields", [{}, SMALL], ids=["defaults", "small"])
def test_parameter_count_matches_spec_formula(fields):
    cfg = rb.Config(**fields)
    with torch.device("meta"):
        model = rb.Model(cfg)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == spec_params(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_seq, cfg.num_experts)
    if not fields:
        assert n == 4_146_120  # 62_191_800 / 15, the reference's published AdamW step count
    assert n == ref.trainable_params(ref.dims_of(cfg, BatchShape(2, cfg.n_seq)))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_routes_to_top_k_experts(top_k):
    torch.manual_seed(0)
    moe = rb.MoE(d=8, num_experts=3, top_k=top_k, dropout_p=0.1).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    tokens = x.reshape(-1, 8)
    logits = moe.gate(tokens)
    expected = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        top, idx = logits[t].topk(top_k)
        for weight, e in zip(top.softmax(-1), idx.tolist()):
            hidden = torch.relu(tokens[t] @ moe.w1[e] + moe.b1[e])
            expected[t] += weight * (hidden @ moe.w2[e] + moe.b2[e])
    torch.testing.assert_close(moe(x), expected.view_as(x))


# -- building and running --------------------------------------------------------------------------

@pytest.mark.parametrize("device,fields", [("meta", {}), ("cpu", {}), ("meta", SMALL), ("cpu", SMALL),
                                           ("cpu", {**SMALL, "top_k": 2})],
                         ids=["meta-defaults", "cpu-defaults", "meta-small", "cpu-small", "cpu-small-top2"])
def test_forward_backward(device, fields):
    torch.manual_seed(0)
    cfg = rb.Config(**fields)
    batch = cfg.resolve_batch(2, None, None)
    cfg.validate(batch)
    with torch.device(device):
        model = rb.Model(cfg)
    loss = model(**language_model_inputs(cfg, batch, device))
    assert loss.shape == () and loss.device.type == device
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    if device == "cpu":
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
        assert model.blocks[0].layer.bk_scale.grad != 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_charges_k_experts_per_token(top_k):
    B, N, D, E = 2, 128, 64, 4
    with torch.device("meta"):
        moe = rb.MoE(D, E, top_k, dropout_p=0.1)
        x = torch.randn(B, N, D)
    with MatmulFlops() as mode:
        moe(x)
    assert mode.flops == 2 * B * N * top_k * (D * 2 * D + 2 * D * D) + 2 * B * N * D * E


def test_model_matmul_flops():
    cfg = rb.Config(top_k=2)
    B, N, D, E, V, L = 2, cfg.n_seq, cfg.d_model, cfg.num_experts, cfg.vocab_size, cfg.n_layers
    batch = BatchShape(B, N)
    with torch.device("meta"):
        model = rb.Model(cfg)
    inputs = language_model_inputs(cfg, batch, "meta")
    with MatmulFlops() as mode:
        model(**inputs)
    T = B * N
    per_layer = 2 * T * 2 * (4 * D * D) + 2 * T * D * E + 2 * T * D * 1 + 2 * T * 2 * D  # experts, gate, v, out
    assert mode.flops == L * per_layer + 2 * T * D * V


# -- the reference counter -------------------------------------------------------------------------

def test_reference_counter_small_case():
    # B=2, N=4 (T=8), D=8, L=2, E=2, K=1, V=10, by hand from the table:
    #   embedding 8*8 = 64 / 64;  layernorm 5*8*8 = 320 / 320
    #   MoE 2*8*8*2 + 3*8*2 + 8*1*(8*64 + 16) = 256 + 48 + 4224 = 4528 / 9056
    #   BK-Core 34*8 = 272 / 26*8 = 208;  Linear(2, 8) 2*8*2*8 = 256 / 512
    #   layer 320 + 4528 + 272 + 256 = 5376 / 320 + 9056 + 208 + 512 = 10096
    #   lm_head 2*8*8*10 = 1280 / 2560
    #   forward 64 + 2*5376 + 320 + 1280 = 12416;  backward 64 + 2*10096 + 320 + 2560 = 23136
    #   P = 80 + 32 + 2*(16 + 2*(256 + 24) + 18 + 9 + 24 + 1) + 16 + 90 = 1474
    d = ref.Dims(batch_size=2, seq_len=4, d_model=8, n_layers=2, num_experts=2, top_k=1, vocab_size=10)
    count = ref.count(d, "adamw")
    assert list(count.breakdown) == ["embedding", "layer_0", "layer_1", "final_layernorm", "lm_head"]
    assert count.breakdown["embedding"] == ref.Flops(64, 64)
    assert count.breakdown["layer_1"] == ref.Flops(5376, 10096)
    assert count.breakdown["final_layernorm"] == ref.Flops(320, 320)
    assert count.breakdown["lm_head"] == ref.Flops(1280, 2560)
    assert ref.moe(d) == ref.Flops(4528, 9056) and ref.bk_core(d) == ref.Flops(272, 208)
    assert (count.forward, count.backward, count.params) == (12416, 23136, 1474)
    assert count.optimizer == 15 * 1474
    assert count.total == 12416 + 23136 + 22110
    assert count.training_cost(10) == 10 * 57662
    assert ref.count(d, "sgd").optimizer == 2 * 1474
    assert ref.count(d, "sgd_momentum").optimizer == 2 * 1474  # the reference's fallback
    name, flops, share = count.top_bottlenecks(1)[0]
    assert (name, flops) in {("layer_0", 5376), ("layer_1", 5376)} and share == pytest.approx(5376 / 12416)


def test_reference_counter_matches_published_baseline():
    # flops_baseline.json of the reference snapshot: the default model, batch 32, AdamW
    cfg, batch = rb.Config(), BatchShape(32, 128)
    count = ref.count(ref.dims_of(cfg, batch), "adamw")
    assert (count.forward, count.backward, count.optimizer, count.total) == \
        (16_287_760_384, 32_568_016_896, 62_191_800, 48_917_969_080)
    assert count.breakdown["layer_3"].forward == 139_386_880
    assert count.breakdown["lm_head"].forward == 15_728_640_000
    assert rb.analytic_forward_flops(cfg, batch) == 16_287_760_384
    top = count.top_bottlenecks(3)
    assert top[0][0] == "lm_head" and top[0][2] == pytest.approx(0.966, abs=5e-4)  # "LM Head: 96.6%"
    half = ref.count(ref.dims_of(cfg, BatchShape(16, 128)), "adamw")
    speedup = ref.compare(half, count)
    assert speedup.forward == 2.0 and speedup.backward == 2.0 and 1.9 < speedup.total < 2.0


# -- presets and validation ------------------------------------------------------------------------

def test_presets_resolve():
    base = resolve(compose_config("model=resnet_bk_baseline"))
    full = resolve(compose_config("model=resnet_bk_full"))  # the reference's name for the same model
    assert base.batch.seq_len == 128
    strip = lambda c: {**vars(c), "name": None}  # noqa: E731
    assert strip(base.model) == strip(full.model) == strip(rb.Config())


def test_batch_seq_len_builds_the_model_for_that_length():
    spec = resolve(compose_config("model=resnet_bk_baseline", "batch.seq_len=64"))
    assert spec.model.n_seq == 64 and spec.batch.seq_len == 64


@pytest.mark.parametrize("preset,field,batch_key", [("resnet_bk_baseline", "n_seq", "seq_len"),
                                                    ("vit_b16", "image_size", "image_size")])
def test_a_model_length_typed_beside_another_batch_length_is_refused_naming_both(preset, field, batch_key):
    """model.n_seq=256 batch.seq_len=512 built a model of 512 tokens without a word; the same value, or the field
    alone (a sweep over batch.seq_len of a preset whose file sets n_seq), is taken."""
    typed = [f"model.{field}=256", f"batch.{batch_key}=512"]
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(f"model={preset}", *typed), given=[k.split("=")[0] for k in typed])
    assert str(err.value).startswith(f"model.{field}=256: differs from batch.{batch_key}=512, which sets it")
    same = [f"model.{field}=256", f"batch.{batch_key}=256"]
    assert getattr(resolve(compose_config(f"model={preset}", *same), given=[k.split("=")[0] for k in same]).model,
                   field) == 256
    file_set = resolve(compose_config(f"model={preset}", f"batch.{batch_key}=512"), given=[f"batch.{batch_key}"])
    assert getattr(file_set.model, field) == 512


BAD = [
    (["model.top_k=5"], "model.top_k"),
    (["model.num_experts=0"], "model.num_experts"),
    (["model.n_seq=0"], "model.n_seq"),
    (["model.dropout_p=1.0"], "model.dropout_p"),
    (["model.v_max=-1"], "model.v_max"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve(compose_config("model=resnet_bk_baseline", *overrides))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_validate_seq_len_directly():
    with pytest.raises(ConfigError, match="batch.seq_len"):
        rb.Config().validate(BatchShape(2, 127))
    rb.Config(n_seq=16).validate(rb.Config(n_seq=16).resolve_batch(2, None, None))
