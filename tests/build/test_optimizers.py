"""GaLore (optimizer=galore_adamw): its step is low-rank, its vectors step as AdamW's, and what a job counts and sizes
for it follows from the parameter shapes. SGD with momentum: a job counts its step as every later one."""

import pytest
import torch
from omegaconf import OmegaConf

from flopsweep.config.resolve import resolve
from flopsweep.run.job import run_job
from flopsweep.build.galore import GaLoreAdamW
from tests.helpers import compose_config

R = 8
TINY = ["model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.vocab_size=100",
        "model.max_positions=32", "batch.size=2", "batch.seq_len=16", "tracking=none", "optimizer=galore_adamw",
        f"optimizer.rank={R}"]


def test_a_matrix_steps_within_rank_r_and_a_vector_as_adamw():
    torch.manual_seed(0)
    matrix, vector = torch.nn.Parameter(torch.randn(12, 20)), torch.nn.Parameter(torch.randn(20))
    twin = torch.nn.Parameter(vector.detach().clone())
    galore = GaLoreAdamW([matrix, vector], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, rank=3,
                         update_proj_gap=200, scale=0.25)
    adamw = torch.optim.AdamW([twin], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    before = matrix.detach().clone()
    grad = torch.randn(12, 20)
    matrix.grad, vector.grad, twin.grad = grad, torch.randn(20), None
    twin.grad = vector.grad.clone()
    galore.step()
    adamw.step()
    delta = matrix.detach() - before
    assert torch.linalg.matrix_rank(delta) == 3  # the step lives in the gradient's top-3 left singular vectors
    u = torch.linalg.svd(grad, full_matrices=False)[0][:, :3]
    torch.testing.assert_close(u @ (u.T @ delta), delta)
    torch.testing.assert_close(vector, twin)
    state = galore.state[matrix]
    assert state["projector"].shape == (12, 3) and state["exp_avg"].shape == (3, 20)  # the shorter side projected


def _job(device):
    cfg = compose_config(*TINY, f"device={device}", "measure.warmup=0", "measure.repeats=1")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    return result


def test_galore_step_counted_and_sized_from_the_shapes():
    """Every matrix whose shorter side exceeds r is projected: its SVD (Golub and Van Loan's R-SVD count), two
    products with the projector (2*r*m*n each), a projector and two r-rank moments in float32."""
    result = _job("meta")
    d, ff, vocab, positions, layers = 64, 256, 100, 32, 2
    matrices = [(vocab, d), (positions, d)] + layers * [(3 * d, d), (d, d), (ff, d), (d, ff)]  # (out, in)
    others = layers * (3 * d + d + ff + d + 4 * d) + 2 * d  # biases and norms: they take AdamW's moments
    svd = sum(6 * max(m, n) * min(m, n) ** 2 + 11 * min(m, n) ** 3 for m, n in matrices)
    ops = {row["op"]: row for row in result.breakdown["ops"] if row["phase"] == "optimizer"}
    assert ops["aten._linalg_svd"]["calls"] == len(matrices) and ops["aten._linalg_svd"]["flops"] == svd
    assert ops["aten.mm"]["flops"] == sum(4 * R * m * n for m, n in matrices)
    state = sum(4 * (R * min(m, n) + 2 * R * max(m, n)) for m, n in matrices) + 4 * 2 * others
    assert result.metrics["size/optimizer_state_bytes"] == state
    adamw = 8 * result.metrics["size/params_trainable"]
    assert state < adamw / 2  # the point of GaLore: a fraction of AdamW's moments
    # the counted step is the first, SVDs and all; a step on average does them once in update_proj_gap (200)
    mean = result.metrics["flops/optimizer"] - svd * (1 - 1 / 200)
    assert result.metrics["flops/optimizer_mean"] == pytest.approx(mean, rel=1e-12)
    from flopsweep.projection.training import PerToken

    assert PerToken.from_result(result).optimizer_step == result.metrics["flops/optimizer_mean"]  # what projects


def test_galore_counts_the_same_on_cpu_as_on_meta():
    meta, cpu = _job("meta"), _job("cpu")
    for key in ("flops/forward", "flops/backward", "flops/optimizer", "size/optimizer_state_bytes"):
        assert meta.metrics[key] == cpu.metrics[key], key


def test_sgd_momentum_is_counted_as_every_step_after_the_first_and_takes_the_momentum_given(tmp_path):
    """A job counted the first step, where PyTorch's momentum buffer is a copy of the gradient: 1 FLOP a weight, the
    same as plain SGD, where every later step scales the buffer, adds the gradient and steps (3). momentum=0 ran as
    0.9 (a buffer kept, 'momentum': 0.0 recorded)."""
    from flopsweep.core.errors import ConfigError

    cfg = compose_config(*TINY[:-2], "device=meta", "optimizer=sgd_momentum", "optimizer.momentum=0.5")
    spec = resolve(cfg)
    result = run_job(spec, OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    weights = result.metrics["size/params_trainable"]
    assert result.metrics["flops/optimizer"] == 3 * weights
    assert result.metrics["size/optimizer_state_bytes"] == 4 * weights  # the float32 buffer
    assert spec.optimizer.momentum == 0.5
    with pytest.raises(ConfigError, match=r"^optimizer\.momentum=0\.0: must be in \(0, 1\) for sgd_momentum"):
        resolve(compose_config(*TINY[:-2], "optimizer=sgd_momentum", "optimizer.momentum=0"))


def test_an_optimizer_key_the_chosen_optimizer_does_not_read_is_said():
    """optimizer=sgd optimizer.betas=[0.5,0.5] dropped the betas without a word (a train.* key was said)."""
    typed = ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.betas=[0.5,0.5]"]
    spec = resolve(compose_config(*TINY[:-2], *typed), given=[k.split("=")[0] for k in typed])
    assert "optimizer.betas=[0.5, 0.5], optimizer.momentum=0.9 change nothing with optimizer=sgd, which does not " \
           "read it" in spec.notes
    read = ["optimizer=adamw", "optimizer.betas=[0.5,0.5]"]
    assert not resolve(compose_config(*TINY[:-2], *read), given=[k.split("=")[0] for k in read]).notes
