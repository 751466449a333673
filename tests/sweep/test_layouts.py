"""Layouts searched as a sweep (sweep/layouts.py): the enumeration (every layout's product is the world size, invalid
ones absent), the states' lower bound against ZeRO's closed form and against what jobs count (it never exceeds a
job's peak, so it never prunes a layout that fits), and a small real sweep whose console ranks its layouts."""

from __future__ import annotations

import re

import pytest

from flopsweep.core import metrics as M
from flopsweep.core.result import Result
from flopsweep.measure.layout import Layout
from flopsweep.sweep.layouts import SearchModel, enumerate_layouts, factorizations, states_lower_bound
from tests.helpers import run_app
from tests.run.test_parallel_job import SMALL, job
from tests.measure.test_ranks import decoder_params

TINY = SearchModel(heads=4, kv_heads=2, layers=3, params=1000, batch_size=8, seq_len=32, weight_bytes=4,
                   optimizer_states=2)


@pytest.mark.parametrize("n", [1, 7, 12, 64])
def test_factorizations_are_every_ordered_triple(n):
    brute = {(a, b, c) for a in range(1, n + 1) for b in range(1, n + 1) for c in range(1, n + 1) if a * b * c == n}
    found = list(factorizations(n))
    assert len(found) == len(set(found)) and set(found) == brute


def test_every_layout_has_the_world_size_and_the_invalid_ones_are_absent():
    found = enumerate_layouts(8, TINY)
    assert found and all(l.dp * l.tp * l.pp * l.cp * l.ep == 8 for l in found)
    assert all(l.cp == 1 and l.ep == 1 and l.vpp == 1 for l in found)
    assert {l.tp for l in found} == {1, 2}          # tp must divide the 2 KV heads
    assert {l.pp for l in found} == {1, 2}          # pp 4 and 8 leave a stage without one of the 3 layers
    assert all(8 % (l.dp * l.micro_batch_size) == 0 for l in found)  # dp x micro-batch divides the batch
    assert all(l.zero == 0 for l in found if l.dp == 1)
    assert {l.recompute for l in found} == {"none", "selective", "full"} and {l.zero for l in found} == {0, 1, 2, 3}
    assert Layout(dp=8, micro_batch_size=1) in found and Layout(dp=4, tp=2, zero=3, micro_batch_size=2) in found
    assert Layout(dp=4, pp=2, micro_batch_size=4) not in found  # 4 x 4 does not divide 8
    assert len(found) == len(set(found))


def test_context_parallel_sizes_searched_split_the_gpus_and_each_sequence():
    found = enumerate_layouts(8, TINY, cps=(1, 2, 4))
    assert {l.cp for l in found} == {1, 2, 4} and all(l.dp * l.tp * l.pp * l.cp == 8 for l in found)
    assert all(32 % l.cp == 0 for l in found)  # cp divides the sequence
    assert Layout(cp=2, tp=2, pp=2, micro_batch_size=1) in found
    assert any(l.dp == 1 and l.cp == 2 and l.zero == 3 for l in found)  # ZeRO shards over dp x cp: 2 ranks here
    assert [l for l in enumerate_layouts(8, TINY, cps=(3,))] == []  # 3 divides no 8 GPUs
    assert states_lower_bound(Layout(dp=2, cp=4, zero=3), TINY) == states_lower_bound(Layout(dp=8, zero=3), TINY)


def test_expert_parallel_sizes_searched_split_a_mixture_of_experts_within_its_data_parallel_ranks():
    moe = SearchModel(**{**TINY.__dict__, "experts": 4, "expert_params": 600})
    found = enumerate_layouts(8, moe, eps=(1, 2, 4))
    assert {l.ep for l in found} == {1, 2, 4} and {l.tp for l in found} == {1, 2}  # tp: 4 heads, 8 GPUs
    assert (2, 2, 2) in {(l.dp, l.tp, l.ep) for l in found}  # experts split over ep and each over tp
    assert all((l.dp * l.cp) % l.ep == 0 for l in found)
    # 16 bytes a parameter: the 400 dense ones whole without ZeRO, the 600 experts' ep-th
    assert states_lower_bound(Layout(dp=4, ep=2), moe) == 4 * (2 + 2) * (400 + 600 / 2)
    assert states_lower_bound(Layout(dp=4, ep=2, zero=3), moe) == 4 * (2 + 2) * 1000 / 4


def test_mixed_precision_leaves_only_sharded_layouts():
    found = enumerate_layouts(4, SearchModel(**{**TINY.__dict__, "mixed_precision": True}))
    assert found and all(l.zero >= 1 and l.dp > 1 for l in found)


def test_the_bound_is_zeros_16_bytes_a_parameter():
    """Rajbhandari et al. 2020 (ZeRO), section 5: weights, gradients and Adam's two moments in float32 are 16 bytes a
    parameter: all of it on each GPU without ZeRO, 1/Nd of it under stage 3; a 70B model needs more than 8 H100s."""
    seventy = SearchModel(64, 8, 80, 70 * 10**9, 64, 4096, 4, 2)
    assert states_lower_bound(Layout(dp=8, zero=3), seventy) == 16 * 70e9 / 8
    assert states_lower_bound(Layout(dp=8, zero=0), seventy) == 16 * 70e9
    assert states_lower_bound(Layout(dp=2, tp=4, pp=8, zero=1), seventy) == 16 * 70e9 / 64


@pytest.mark.parametrize("overrides", [
    ("parallel.dp=2",), ("parallel.dp=2", "parallel.zero=3"), ("parallel.pp=2",),
    ("parallel.dp=2", "parallel.tp=2", "parallel.zero=1"),
    ("parallel.dp=2", "parallel.tp=2", "parallel.pp=2", "parallel.zero=3", "parallel.recompute=full"),
])
def test_the_bound_never_exceeds_what_a_job_counts(overrides):
    """A layout is pruned only if the bound exceeds the part's memory: then the job's counted peak does too."""
    layers = 2
    result = job(layers, "batch.size=8", *overrides)
    layout = Layout(**{k.split(".")[1]: int(v) if v.isdigit() else v for k, v in (o.split("=") for o in overrides)})
    model = SearchModel(4, 4, layers, decoder_params(layers), 8, 32, 4, 2)
    bound = states_lower_bound(layout, model)
    assert 0 < bound <= result.metrics[M.PARALLEL_MEMORY_PER_GPU]
    assert bound <= result.metrics[M.PARALLEL_STATES_PER_GPU]
    if layout.tp == layout.pp == 1 and layout.zero == 3:  # not vacuous: FSDP's padding and step counters are small
        assert bound >= 0.9 * result.metrics[M.PARALLEL_STATES_PER_GPU]


@pytest.mark.slow
def test_a_layout_sweep_ranks_its_jobs_by_predicted_tokens_per_gpu(tmp_path):
    """Four layouts of a tiny decoder on 2 GPUs, each a child run; the console's top list and the MLflow view put the
    fastest first (by the jobs' own results)."""
    import json

    from mlflow.tracking import MlflowClient

    local = [o for o in SMALL if not o.startswith("tracking=")]
    done = run_app("+sweep=layouts", *local, "model.n_layer=2", "batch.size=4", "parallel.gpus=2",
                   "predict.hardware=H100", "hydra.sweeper.micro_batch_sizes=[2]", "hydra.sweeper.recompute=[none]",
                   "hydra.sweeper.zero=[0,3]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "4 to run" in done.stdout  # d2 zero 0, d2 zero 3, t2, p2
    named = [line.split("] ")[1].split("  ")[0] for line in done.stdout.splitlines() if line.startswith("[job ")]
    assert sorted(named) == ["gpt2_small: dp1tp1pp2", "gpt2_small: dp1tp2pp1", "gpt2_small: dp2tp1pp1",
                             "gpt2_small: dp2tp1pp1zero3"]  # its layout as its run names it; it read dp=2|tp=1|...
    summary = done.stdout[:done.stdout.index("4 jobs: 4 ok")].splitlines()
    header = next(line for line in summary if line.startswith("job "))
    assert re.split(r"\s{2,}", header)[6:8] == ["status", "layout"]  # one column, not parallel.dp, parallel.tp, ...
    assert any(re.split(r"\s{2,}", line)[7] == "dp2 tp1 pp1 zero3" for line in summary if line.startswith("1_"))
    assert done.stdout.index("4 jobs: 4 ok") < done.stdout.index("fastest")  # the answer after the summary's rows
    lines = done.stdout[done.stdout.index("fastest"):].splitlines()
    rows = [re.split(r"\s{2,}", line) for line in lines[3:7]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    speeds = []
    for row in rows:
        found = list(tmp_path.glob(f"outputs/sweeps/*/*/{row[1]}/result.json"))
        speeds.append(Result.read(found[0]).metrics[M.TOKENS_PER_S_PER_GPU_PREDICTED])
    assert speeds == sorted(speeds, reverse=True)
    assert {row[2] for row in rows} == {"dp2 tp1 pp1", "dp2 tp1 pp1 zero3", "dp1 tp2 pp1", "dp1 tp1 pp2"}  # as runs
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("layouts")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4
    state = json.loads(json.loads(experiment.tags[f"mlflow.sharedViewState.flopsweep-{parent.info.run_id}"])["state"])
    assert state["orderByKey"] == f"metrics.`{M.TOKENS_PER_S_PER_GPU_PREDICTED}`" and state["orderByAsc"] is False
    metrics = [c[len("metrics.`"):-1] for c in state["selectedColumns"] if c.startswith("metrics.")]
    assert metrics[:3] == [M.TOKENS_PER_S_PER_GPU_PREDICTED, M.MFU_PREDICTED, M.PARALLEL_MEMORY_PER_GPU]


@pytest.mark.slow
def test_a_search_over_two_models_ranks_each_models_layouts_apart(tmp_path):
    """model=a,b ranked every layout of both by tokens/s a GPU in one table without a model column: the smaller
    model's layouts took every place. Each value the sweep varies besides the layout gets its own ranking, named."""
    done = run_app("+sweep=layouts", *SMALL, "model.n_layer=1,2", "batch.size=4", "parallel.gpus=2",
                   "predict.hardware=H100", "hydra.sweeper.micro_batch_sizes=[2]", "hydra.sweeper.recompute=[none]",
                   "hydra.sweeper.zero=[0]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rankings = done.stdout[done.stdout.index("5 jobs: 5 ok"):].split("\n\n")[1:]
    assert [r.split(": The ")[0] for r in rankings] == ["n_layer=1", "n_layer=2"], done.stdout
    for ranking, layers in zip(rankings, (1, 2)):
        jobs = [line.split()[1] for line in ranking.splitlines()[3:]]
        assert len(jobs) == (2 if layers == 1 else 3)  # pp=2 needs two layers
        configs = [Result.read(next(tmp_path.glob(f"outputs/sweeps/*/*/{j}/result.json"))).config for j in jobs]
        assert {c["model"]["n_layer"] for c in configs} == {layers}


def test_a_job_whose_layout_misses_the_searched_world_size_is_refused_by_key():
    from flopsweep.config.resolve import resolve
    from flopsweep.core.errors import ConfigError
    from tests.run.test_parallel_job import small

    with pytest.raises(ConfigError) as err:
        resolve(small(2, "batch.size=4", "parallel.dp=2", "parallel.gpus=4"))
    assert err.value.key == "parallel.gpus" and "\n" not in str(err.value)
    assert resolve(small(2, "batch.size=4", "parallel.dp=2", "parallel.pp=2", "parallel.gpus=4")).parallel.gpus == 4


@pytest.mark.slow
def test_layouts_that_do_not_fit_rank_after_those_that_do_however_fast():
    """A tiny decoder's layout fits an H100; Llama 3.1 70B on one GPU (no parallelism: 140 GB of bfloat16 weights
    alone) does not, and says so by its metric and first in its bottleneck. Ranked, a faster layout that does not fit
    comes after a slower one that does."""
    from tests.helpers import compose_config
    from flopsweep.config.resolve import job_config, resolve
    from flopsweep.run.job import run_job
    from flopsweep.sweep.layouts import ranked, ranked_table

    tiny = job(2, "parallel.tp=2", "predict.hardware=H100")
    cfg = compose_config("model=llama3_1_70b", "dtype=bfloat16", "batch.size=1", "batch.seq_len=512", "device=meta",
                         "tracking=none", "parallel.dp=1", "predict.hardware=H100")
    spec = resolve(cfg)
    big = run_job(spec, job_config(cfg, spec))
    assert big.status == "ok", big.error
    assert (tiny.metrics[M.PARALLEL_FITS], big.metrics[M.PARALLEL_FITS]) == (1.0, 0.0)
    assert big.info["parallel"]["bottleneck"].startswith("does not fit: ")
    fast = Result(big.status, None, big.config, {**big.metrics, M.TOKENS_PER_S_PER_GPU_PREDICTED: 1e12}, {},
                  big.info)
    assert [name for name, _ in ranked([("fast", fast), ("tiny", tiny)])] == ["tiny", "fast"]
    assert "1 do not fit the part's memory, ranked after those that do" in ranked_table([("fast", fast),
                                                                                         ("tiny", tiny)])
    assert ranked_table([("fast", fast)]).splitlines()[0] == \
        "The 1 fastest of 1 layouts predicted (tokens/s a GPU); none fits the part's memory:"  # none ranked after


def test_a_world_size_no_layout_takes_is_one_line_saying_what_must_divide(tmp_path):
    """7 GPUs for a 12-layer, 12-head model at batch 8 in mixed precision: no layout at all, which it said as one that
    cannot fit the part's memory, under a line counting 0 valid layouts. Refused, it leaves no sweep folder and no
    sweep run (it left an empty folder and a FAILED run)."""
    from mlflow import MlflowClient

    done = run_app("+sweep=layouts", "model=gpt2_small", "dtype=mixed_bf16", "batch.size=8", "parallel.gpus=7",
                   "predict.hardware=H100", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "flopsweep: error: parallel.gpus=7: has no layout the model and batch take: dp x micro-batch must divide "
        "batch.size=8, tp its 12 attention heads and 12 KV heads, pp be at most its 12 layers, and mixed precision "
        "needs ZeRO over dp x cp > 1"]
    assert not list(tmp_path.glob("outputs/sweeps/*/*"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert not [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]


SLOW = pytest.mark.slow  # a sweep's start each (some 2 s): the first case is the fast lane's


@pytest.mark.parametrize("setting, line", [
    ("hydra.sweeper.top=abc", "hydra.sweeper.top='abc': must be an integer >= 1"),
    pytest.param("hydra.sweeper.recompute=[full,selectve]", "hydra.sweeper.recompute='selectve': must be one of "
                 "none, selective, full", marks=SLOW),
    pytest.param("hydra.sweeper.zero=[3,7]", "hydra.sweeper.zero=7: must be one of 0, 1, 2, 3", marks=SLOW),
    pytest.param("hydra.sweeper.cp=3", "hydra.sweeper.cp=3: must be a non-empty list, as in sweeps/layouts.yaml",
                 marks=SLOW),
    pytest.param("hydra.sweeper.micro_batch_sizes=[0]", "hydra.sweeper.micro_batch_sizes=0: must be an integer >= 1",
                 marks=SLOW),
])
def test_the_searchs_own_settings_are_checked_before_any_job(tmp_path, setting, line):
    """top=abc ran every job, then ended in a traceback; a recompute or zero value it does not know was left out
    without a word, or blamed on parallel.gpus ("has no layout the model and batch take")."""
    done = run_app("+sweep=layouts", "model=gpt2_small", "dtype=mixed_bf16", "batch.size=8", "parallel.gpus=2",
                   "predict.hardware=H100", setting, cwd=tmp_path, store=False)
    assert done.returncode == 2 and done.stderr.splitlines() == [f"flopsweep: error: {line}"], done.stderr
    assert not list(tmp_path.glob("outputs/sweeps/*/*"))


def test_a_sweep_that_varies_only_zero_names_the_whole_layout():
    """2 GPUs in mixed precision leave dp2 alone, its ZeRO stages varied: the progress lines said 'zero3' and the
    table's layout column 'zero2', dp2 tp1 pp1 unsaid beside the ranking's 'dp2 tp1 pp1' and a zero column."""
    from flopsweep.core.text import summary_table
    from flopsweep.sinks.identity import short_name

    results = [(f"{z}_m", Result("ok", None, {"model": {"name": "m"}, "parallel": {"dp": 2, "tp": 1, "pp": 1,
                                                                                  "zero": z}}, {}))
               for z in (2, 3)]
    assert [short_name(r.config, ["parallel.zero"]) for _, r in results] == ["dp2tp1pp1zero2", "dp2tp1pp1zero3"]
    rows = summary_table(results, ("parallel.zero",)).splitlines()
    assert re.split(r"\s{2,}", rows[0])[7] == "layout" and re.split(r"\s{2,}", rows[3])[7] == "dp2 tp1 pp1 zero3"
