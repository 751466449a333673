"""Every sweep preset composes and validates for each value it sweeps; one runs for real."""

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from flopsweep.config.resolve import resolve
from flopsweep.config.schema import CONF_DIR, SWEEPS_DIR
from tests.helpers import run_app

PRESETS = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def compose_preset(name: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[f"+sweep={name}", *overrides], return_hydra_config=True)


def test_the_presets_the_docs_promise_exist():
    assert {"quickstart", "gpt3_family", "seq_len_scaling", "dtype_batch_grid", "encoder_decoder",
            "llm_budget"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_swept_value_resolves(name):
    cfg = compose_preset(name)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.tracking.experiment == name
    if cfg.hydra.sweeper.get("params") is None:  # the layout search: its jobs are the layouts it enumerates
        from flopsweep.sweep.layouts import enumerate_layouts, search_model, search_overrides

        chosen = ["parallel.gpus=4", "predict.hardware=H100", "batch.size=8"]
        layouts = enumerate_layouts(4, search_model(compose_preset(name, *chosen)))
        assert layouts
        for layout in {*layouts[::max(1, len(layouts) // 5)], layouts[-1]}:  # a spread of them: each compose costs
            resolve(compose_preset(name, *chosen, *search_overrides(layout)))
        return
    params = {key: str(values).split(",") for key, values in cfg.hydra.sweeper.params.items()}
    for key, values in params.items():
        for value in values:
            others = [f"{k}={v[0]}" for k, v in params.items() if k != key]
            resolve(compose_preset(name, f"{key}={value}", *others))


@pytest.mark.slow
def test_seq_len_scaling_runs(tmp_path):
    proc = run_app("+sweep=seq_len_scaling", "batch.seq_len=128,512", "tracking=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(p.read_text()) for p in Path(tmp_path, "outputs", "sweeps").rglob("result.json")]
    per_token = {(r["config"]["model"]["name"], r["config"]["batch"]["seq_len"]):
                 r["metrics"]["flops/forward"] / r["config"]["batch"]["seq_len"] for r in results}
    assert len(per_token) == 4
    # ResNet-BK is linear in N: the same FLOPs per token at every length
    assert per_token[("resnet_bk_baseline", 512)] == per_token[("resnet_bk_baseline", 128)]
    # attention makes the decoder's cost per token grow with N: 4·L·d·T of about 2N' + 4·L·d·T per token, N' = 124M
    # matmul weights, L·d = 12·768: from 4.7M to 18.9M of 252M
    assert per_token[("gpt3_small", 512)] > 1.05 * per_token[("gpt3_small", 128)]


def test_sweep_size_counts_preset_and_command_line_sweeps():
    from flopsweep.sweep.plan import SweepPlan

    cfg = compose_preset("quickstart")
    assert SweepPlan.of(cfg).size == 5  # the preset's five models
    # what a multirun's callback sees for `flopsweep +sweep=quickstart model=gpt2_small,bert_base batch.size=1,2,4`
    OmegaConf.set_readonly(cfg, False)
    cfg.hydra.overrides.task = ["+sweep=quickstart", "model=gpt2_small,bert_base", "batch.size=1,2,4"]
    assert SweepPlan.of(cfg).size == 6  # the command line's models replace the preset's, times three batch sizes
    cfg.hydra.overrides.task = ["model=glob(*)"]
    assert SweepPlan.of(cfg).size is None  # a glob needs the config repository: no count rather than a wrong one


def test_the_sweeper_checks_every_swept_value_with_few_compositions():
    from flopsweep.sweep.plan import covering_jobs

    product = [["model=gpt2_small", f"model.n_layer={n}", f"batch.size={b}"]
               for n in range(1, 11) for b in range(1, 21)]
    chosen = covering_jobs(product)
    assert set().union(*map(set, chosen)) == set().union(*map(set, product))  # every value, in some job
    assert len(chosen) == 20  # the longest axis: one composition per batch size, the layers along the way
    assert covering_jobs([["device=meta"]]) == [["device=meta"]]


def test_a_swept_value_that_cannot_be_composed_stops_the_sweep_before_any_job(tmp_path):
    # the bad value is in neither of the first two jobs the check picks: only its second pass finds it
    proc = run_app("-m", "model=gpt2_small", "batch.size=1,2", "model.n_layer=1,2,x", "device=meta",
                   "tracking.experiment=bad_value", cwd=tmp_path)
    assert proc.returncode != 0
    assert "model.n_layer" in proc.stderr and "Traceback" not in proc.stderr
    # refused as Hydra's own refusals are: no job started, so no folder and no run is left (an empty folder and a
    # FAILED run were, after a typo)
    assert not list((tmp_path / "outputs" / "sweeps").glob("*/*"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bad_value").experiment_id
    assert client.search_runs([experiment]) == []
    (gone,) = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)
    assert gone.data.tags["flopsweep.kind"] == "sweep" and gone.info.status == "FAILED"  # ended, then deleted


@pytest.mark.slow
def test_a_combination_that_cannot_be_composed_fails_alone_and_the_rest_run(tmp_path):
    """Each value composes with some model (the check passes), but ViT's d_ff cannot be null: that one job is
    recorded failed with Hydra's reason, the job after it still runs, and the sweep's run and exit say failed."""
    proc = run_app("-m", "model=gpt2_small,vit_b16", "model.d_ff=null,128", "model.n_layer=1", "device=meta",
                   "tracking.experiment=combination", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"flopsweep: error: job 2 \(model=vit_b16 model.d_ff=null .*\) cannot be composed: "
                     r"ConfigCompositionException", proc.stderr), proc.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}
    assert {name: r["status"] for name, r in results.items()} == {
        "0_gpt2_small": "ok", "1_gpt2_small": "ok", "2_vit_b16": "failed", "3_vit_b16": "ok"}
    assert "model.d_ff=null" in results["2_vit_b16"]["error"] and results["3_vit_b16"]["config"]["model"]["d_ff"] == 128
    assert "4 jobs: 3 ok, 1 failed" in proc.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("combination").experiment_id])
    (parent,) = [r for r in runs if r.data.tags["flopsweep.kind"] == "sweep"]
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs/failed"] == 1
    assert len(runs) == 4  # the three jobs that ran and the sweep
