"""Registry contracts: every optimizer, train mode and model family registered is a job that builds, counts and sizes
on meta, parametrized over the registries themselves (a new entry is tested without a line here), and each has its
preset under conf/. Every model preset is built, counted and sized by tests/models/test_presets.py."""

import pytest
from omegaconf import OmegaConf

from flopsweep.build.optimizers import OPTIMIZERS
from flopsweep.build.train_modes import OLD_SPELLINGS, TRAIN_MODES, Workload
from flopsweep.config.resolve import job_config, resolve
from flopsweep.config.schema import CONF_DIR
from flopsweep.core.result import Result
from flopsweep.models import FAMILIES
from flopsweep.run.job import run_job
from tests.helpers import compose_config, model_presets

TINY = ["model=gpt2_small", "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.vocab_size=100",
        "batch.size=2", "batch.seq_len=8", "optimizer.rank=4", "train.rank=2"]  # ranks: GaLore's, LoRA's, DoRA's
TEMPLATES = ("hf", "custom")  # model presets that build nothing until the user names a model type, a _target_
FLOAT32 = 4


def meta_job(*overrides: str) -> Result:
    cfg = compose_config(*overrides, "device=meta", "tracking=none")
    spec = resolve(cfg)
    result = run_job(spec, job_config(cfg, spec))
    assert result.status == "ok", result.error
    assert not result.info.get("uncounted_ops"), result.info["uncounted_ops"]
    return result


def preset_family(name: str) -> str:
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").family


@pytest.mark.parametrize("group,registered", [("optimizer", OPTIMIZERS), ("train", [*TRAIN_MODES, *OLD_SPELLINGS])])
def test_a_group_has_one_preset_per_registered_name(group, registered):
    assert sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) == sorted(registered)


def test_every_family_has_a_preset_that_builds_a_model():
    covered = {preset_family(p) for p in model_presets() if p not in TEMPLATES}
    assert covered == set(FAMILIES)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_an_optimizer_is_built_counted_and_sized_on_meta(name):
    m = meta_job(*TINY, f"optimizer={name}").metrics
    assert m["flops/forward"] > 0 and m["flops/backward"] > m["flops/forward"]
    assert m["size/grads_bytes"] == FLOAT32 * m["size/params"]  # every parameter trains, its gradient kept
    if name == "none":  # forward and backward only: no step, no state
        assert not m.get("flops/optimizer") and m["size/optimizer_state_bytes"] == 0
    else:
        assert m["flops/optimizer"] > 0
    assert m["size/step_peak_bytes"] >= m["size/weights_bytes"] + m["size/grads_bytes"] + \
        m["size/optimizer_state_bytes"]


@pytest.mark.parametrize("name", list(TRAIN_MODES))
def test_a_train_mode_is_built_counted_and_sized_on_meta(name):
    mode = TRAIN_MODES[name]
    m = meta_job(*TINY, f"train={name}").metrics
    assert m["flops/forward"] > 0 and m["flops/backward"] > 0 and m["size/activations_bytes"] > 0
    assert m["size/weights_bytes"] == FLOAT32 * m["size/params"] and m["size/step_peak_bytes"] > 0
    assert m["size/grads_bytes"] == FLOAT32 * m["size/params_trainable"] > 0
    assert (m["size/params_trainable"] < m["size/params"]) == mode.freezes  # what it declares it freezes
    if mode.adapter is not None:  # the adapters' parameters beside the model's own
        assert m["size/params"] > meta_job(*TINY).metrics["size/params"]


@pytest.mark.parametrize("workload", list(Workload))
def test_a_workload_is_built_counted_and_sized_on_meta(workload):
    m = meta_job(*TINY, f"workload={workload.value}").metrics
    assert m["flops/forward"] > 0
    assert m["size/weights_bytes"] == FLOAT32 * m["size/params"] and m["size/step_peak_bytes"] > 0
    if workload is Workload.train:
        assert m["flops/backward"] > 0 and m["size/grads_bytes"] == FLOAT32 * m["size/params"]
    else:  # a forward pass (or a generation) without gradients
        assert not m.get("flops/backward") and not m.get("size/grads_bytes") and m["size/params_trainable"] == 0
    # a prompt's prefill, then decoding with a KV cache: only a generation
    assert (m.get("flops/decode", 0) > 0 and m.get("size/kv_cache_bytes", 0) > 0) == (workload is Workload.generate)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_family_is_built_counted_and_sized_on_meta(family):
    """Its first preset (its smallest-named), as a job of batch 1: a training step counted, sized and simulated."""
    preset = next(p for p in model_presets() if p not in TEMPLATES and preset_family(p) == family)
    result = meta_job(f"model={preset}", "batch.size=1")
    m = result.metrics
    assert result.config["model"]["family"] == family
    assert m["flops/forward"] > 0 and m["flops/backward"] > m["flops/forward"] and m["flops/optimizer"] > 0
    assert m["size/weights_bytes"] == FLOAT32 * m["size/params"]  # float32, the default dtype
    assert m["size/optimizer_state_bytes"] >= 2 * FLOAT32 * m["size/params"]  # AdamW's two moments, the default
    assert m["size/activations_bytes"] > 0 and m["size/step_peak_bytes"] > m["size/weights_bytes"]
    if FAMILIES[family].forward_flops is not None:  # a family that has a closed form gets it recorded
        assert m["flops/forward_analytic"] > 0
