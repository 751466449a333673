"""Counted FLOPs: device parity, closed-form agreement, causal halving, backward and optimizer costs."""

import contextlib

import pytest
import torch

from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU
from flopsweep.models import decoder
from flopsweep.models.base import BatchShape, language_model_inputs

TINY = dict(d_model=64, n_layer=2, n_head=4, vocab_size=97, max_positions=64)
LLAMA_TINY = dict(d_model=64, n_layer=2, n_head=8, n_kv_head=2, d_ff=160, vocab_size=97, max_positions=64,
                  norm="rmsnorm", act="swiglu", positions="rope", bias=False, qkv_bias=True, tie_embeddings=False)


def count(cfg, batch, device, optimizer="adamw", foreach=True, **kw):
    torch.manual_seed(0)
    with torch.device(device):
        model = decoder.Model(cfg)
    params = list(model.parameters())
    opt = {"adamw": lambda: torch.optim.AdamW(params, weight_decay=0.01, foreach=foreach),
           "sgd": lambda: torch.optim.SGD(params, lr=0.1, foreach=True)}[optimizer]()
    inputs = language_model_inputs(cfg, batch, device)
    with MetaLikeCPU() if device == "meta" else contextlib.nullcontext():
        return count_step(model, inputs, opt, **kw), model


@pytest.mark.parametrize("fields", [TINY, LLAMA_TINY], ids=["gpt", "llama_gqa"])
def test_cpu_and_meta_counts_are_identical(fields):
    cfg, batch = decoder.Config(**fields), BatchShape(2, 16)
    cpu, _ = count(cfg, batch, "cpu")
    meta, _ = count(cfg, batch, "meta")
    for phase in ("forward", "backward", "optimizer"):
        a, b = cpu.phases()[phase], meta.phases()[phase]
        assert (a.matmul, a.elementwise) == (b.matmul, b.elementwise), phase
        assert a.matmul + a.elementwise > 0
    assert cpu.module_table(3) == meta.module_table(3)


def megatron_forward(B, s, l, h, V):
    # Megatron-LM / Korthikanti et al. (references.md): 24*B*s*l*h^2 * (1 + s/(6h) + V/(12*l*h))
    return 24 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))


@pytest.mark.parametrize("B,s,l,h,heads,V", [(1, 8, 1, 32, 2, 50), (2, 32, 3, 64, 4, 101), (3, 64, 2, 96, 6, 257),
                                               (1, 128, 4, 128, 8, 1000)])
def test_gpt_forward_equals_megatron_formula(B, s, l, h, heads, V):
    cfg = decoder.Config(d_model=h, n_layer=l, n_head=heads, vocab_size=V, max_positions=s)
    counted, _ = count(cfg, BatchShape(B, s), "meta")
    assert counted.forward.matmul == pytest.approx(megatron_forward(B, s, l, h, V), rel=1e-12)
    assert counted.forward.matmul == decoder.analytic_forward_flops(cfg, BatchShape(B, s))


@pytest.mark.parametrize("fields", [TINY, LLAMA_TINY], ids=["gpt", "llama_gqa"])
def test_backward_matmuls_are_twice_forward(fields):
    # every matmul's backward computes a gradient for its input and for its weight (the first layer's
    # input is the embedding output, which needs one), and attention's backward is dQ, dK, dV, dP
    counted, _ = count(decoder.Config(**fields), BatchShape(2, 16), "meta")
    assert counted.backward.matmul == 2 * counted.forward.matmul


def test_causal_half_counts_only_unmasked_pairs():
    cfg, batch = decoder.Config(**TINY), BatchShape(2, 16)
    full, _ = count(cfg, batch, "meta")
    half, _ = count(cfg, batch, "meta", causal_half=True)
    B, S, d, L = 2, 16, 64, 2
    full_attention = 4 * B * S * S * d * L              # QK^T and PV over all S^2 pairs, every layer
    kept_attention = 4 * B * (S * (S + 1) // 2) * d * L  # the lower triangle, diagonal included
    assert full.forward.matmul - half.forward.matmul == full_attention - kept_attention


def test_optimizer_costs_per_element():
    cfg, batch = decoder.Config(**TINY), BatchShape(2, 16)
    sgd, model = count(cfg, batch, "meta", optimizer="sgd")
    n = sum(p.numel() for p in model.parameters())
    # plain SGD: param += -lr * grad, one fused multiply-add per element, counted as one
    assert sgd.optimizer.elementwise == n
    adamw, _ = count(cfg, batch, "meta", optimizer="adamw")
    # AdamW per element: decay 1 + lerp(m) 3 + v*beta2 1 + addcmul 2 + sqrt 1 + div 1 + add eps 1 + addcdiv 2,
    # plus one add per parameter tensor for its step counter
    tensors = len(list(model.parameters()))
    assert adamw.optimizer.elementwise == 12 * n + tensors


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_adamw_one_tensor_at_a_time_costs_what_its_foreach_path_costs(device):
    """torch's default single-tensor AdamW updates in place (``lerp_``, ``addcmul_``, ``addcdiv_``): each costs what
    its out-of-place and ``_foreach_`` forms cost (it was counted as 1 each: 8 FLOPs a parameter, not 12)."""
    cfg, batch = decoder.Config(**TINY), BatchShape(2, 16)
    one_by_one, model = count(cfg, batch, device, foreach=False)
    grouped, _ = count(cfg, batch, device, foreach=True)
    n, tensors = sum(p.numel() for p in model.parameters()), len(list(model.parameters()))
    assert one_by_one.optimizer.elementwise == grouped.optimizer.elementwise == 12 * n + tensors
    assert not one_by_one.uncounted


def test_the_module_table_carries_each_modules_parameters():
    counted, model = count(decoder.Config(**TINY), BatchShape(2, 16), "meta")
    rows = {r["module"]: r for r in counted.module_table(3, model)}
    d = 64
    assert rows["blocks.0.attn"]["params"] == 3 * d * d + 3 * d + d * d + d  # qkv and out, with their biases
    assert rows["blocks.0.mlp"]["params"] == 2 * 4 * d * d + 4 * d + d
    assert rows["(model)"]["params"] == sum(p.numel() for p in model.parameters())  # the tied head once
    assert rows["(optimizer)"]["params"] is None


def test_module_breakdown_sums_to_totals():
    counted, _ = count(decoder.Config(**TINY), BatchShape(2, 16), "meta")
    rows = counted.module_table(3)
    top = {r["module"]: r for r in rows if r["depth"] == 1}
    root = next(r for r in rows if r["module"] == "(model)")
    for phase in ("forward", "backward"):
        total = getattr(counted, phase).matmul
        assert root[f"{phase}_flops"] == total
        assert sum(r[f"{phase}_flops"] for r in top.values()) <= total
    assert top["lm_head"]["forward_flops"] == 2 * 2 * 16 * 64 * 97
    assert top["lm_head"]["backward_flops"] == 2 * top["lm_head"]["forward_flops"]
    assert top["blocks"]["forward_flops"] == sum(r["forward_flops"] for r in rows if r["depth"] == 2
                                                 and r["module"].startswith("blocks."))
    # the loss is part of forward and visible as a module
    assert top["loss"]["forward_elementwise"] > 0
    assert not counted.uncounted, counted.uncounted


def test_per_module_blocks_are_equal_and_attention_counted_on_cpu():
    counted, _ = count(decoder.Config(**TINY), BatchShape(2, 16), "cpu")
    by_op = counted.forward.by_op
    assert by_op["aten._scaled_dot_product_flash_attention_for_cpu"].matmul == 4 * 2 * 16 * 16 * 64 * 2
    blocks = [r for r in counted.module_table(2) if r["depth"] == 2 and r["module"].startswith("blocks.")]
    assert len({(r["forward_flops"], r["backward_flops"]) for r in blocks}) == 1


@pytest.mark.parametrize("fields", [TINY, LLAMA_TINY], ids=["gpt", "llama_gqa"])
def test_meta_kernel_cache_changes_no_count(fields, monkeypatch):
    from flopsweep.measure import meta

    def counts(step):
        return ({p: (c.matmul, c.elementwise, dict(c.by_op)) for p, c in step.phases().items()},
                step.module_table(3), step.uncounted)

    cfg, batch = decoder.Config(**fields), BatchShape(2, 16)
    monkeypatch.setattr(meta, "_outputs", {})
    monkeypatch.setattr(meta, "_CACHE_LIMIT", 0)
    uncached, _ = count(cfg, batch, "meta")
    assert meta._outputs == {}
    monkeypatch.setattr(meta, "_CACHE_LIMIT", 100_000)
    cold, _ = count(cfg, batch, "meta")
    filled = len(meta._outputs)
    warm, model = count(cfg, batch, "meta")  # every kernel replayed
    assert filled > 20 and len(meta._outputs) == filled
    assert counts(uncached) == counts(cold) == counts(warm)
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_flopsweeps_dispatch_modes_opt_out_of_pytorchs_dynamo_wrapper():
    from torch.utils._python_dispatch import TorchDispatchMode

    from flopsweep.measure.count import Counter
    from flopsweep.measure.meta import _KernelCache
    from flopsweep.measure.size import LiveBytes

    class Plain(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    # PyTorch wraps a mode's __torch_dispatch__ (three calls around every op) unless the mode opts out
    assert hasattr(Plain.__dict__["__torch_dispatch__"], "__wrapped__")
    for mode in (Counter, _KernelCache, LiveBytes):
        assert not hasattr(mode.__dict__["__torch_dispatch__"], "__wrapped__"), mode.__name__


# ---- FP8 matmuls, as torchao's float8 training runs them ----

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def _col_major(t):
    return t.t().contiguous().t()


class _FP8Matmul(torch.autograd.Function):
    """x W^T with x and W cast to float8 (e4m3) and the gradient to e5m2: three ``torch._scaled_mm`` a linear layer
    (forward, input gradient, weight gradient), the recipe torchao's Float8Linear follows (scales of one here)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        one = torch.ones((), device=x.device)
        return torch._scaled_mm(x.to(E4M3), _col_major(w.t().to(E4M3)), one, one, out_dtype=torch.bfloat16)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        one, g = torch.ones((), device=x.device), grad.to(E5M2)
        grad_x = torch._scaled_mm(g, _col_major(w.to(E4M3)), one, one, out_dtype=torch.bfloat16)
        grad_w = torch._scaled_mm(g.t().contiguous(), _col_major(x.to(E4M3)), one, one, out_dtype=torch.bfloat16)
        return grad_x, grad_w


class FP8Linear(torch.nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, k, dtype=torch.bfloat16))

    def forward(self, x):
        return _FP8Matmul.apply(x.flatten(0, -2), self.weight).float().sum()


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_fp8_matmuls_count_their_products_and_run_as_fp8(device):
    from flopsweep.measure.ops import MATMUL

    m, k, n = 2 * 16, 64, 48
    with torch.device(device):
        model, x = FP8Linear(k, n), torch.randn(2, 16, k, dtype=torch.bfloat16)
    with MetaLikeCPU() if device == "meta" else contextlib.nullcontext():
        step = count_step(model, {"x": x}, None)
    assert step.uncounted == {}
    assert step.forward.by_op["aten._scaled_mm"].matmul == step.forward.matmul == 2 * m * k * n
    assert step.backward.by_op["aten._scaled_mm"].calls == 2 and step.backward.matmul == 2 * 2 * m * k * n
    fp8 = [s for s in step.trace.sigs if s.kind == MATMUL]
    assert [s.dims for s in fp8] == [(1, m, k, n), (1, m, n, k), (1, n, m, k)]
    assert {s.dtype for s in fp8} == {"fp8"}  # priced on the part's FP8 curve and peak


class Softplus(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros(n))

    def forward(self, scale):
        return torch.nn.functional.softplus(self.x * scale).sum()


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_softplus_and_its_backward_cost_five_a_element(device):
    """Mamba's time steps: ``log(1 + exp(b x)) / b`` forward, ``sigmoid(b x)`` times the gradient backward."""
    n = 1000
    with torch.device(device):
        model, scale = Softplus(n), torch.ones(())
    with MetaLikeCPU() if device == "meta" else contextlib.nullcontext():
        step = count_step(model, {"scale": scale}, None)
    assert step.uncounted == {}
    assert step.forward.by_op["aten.softplus"].elementwise == 5 * n
    assert step.backward.by_op["aten.softplus_backward"].elementwise == 5 * n


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_any_and_all_cost_one_a_input_element_as_every_reduction(device):
    """A mask's rows tested for any key kept (transformers' cross-attention masks): a reduction, counted, not
    listed as uncounted."""
    from flopsweep.measure.count import count_call

    mask = torch.ones(3, 7, 11, dtype=torch.bool, device=device)
    step, _ = count_call(torch.nn.Identity(), lambda: (mask.any(dim=-1), mask.all(), mask.any()))
    assert step.uncounted == {}
    assert step.forward.by_op["aten.any"].elementwise == 2 * 3 * 7 * 11 and step.forward.by_op["aten.any"].calls == 2
    assert step.forward.by_op["aten.all"].elementwise == 3 * 7 * 11
