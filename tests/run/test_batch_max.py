"""``batch.size=max``: the largest batch whose training peak, estimated on meta, fits a memory
budget; on a real device confirmed by running it, stepping down after an out-of-memory error; recorded and
logged like any other job, with the batch it chose."""

import json
from pathlib import Path

import pytest
import torch

from flopsweep.config.resolve import resolve
from flopsweep.core.errors import ConfigError
from flopsweep.run.fit import MetaEstimate, largest_fitting_batch
from flopsweep.run.job import run_job

from tests.helpers import BUILT_ON, F, compose_config, custom_model, pretend_gpu, run_app, sgd_peak

MIB = 2**20
LINEAR = [*custom_model("torch.nn.Linear", f"[{{name:input,shape:[batch,{F}]}}]", in_features=F, out_features=F),
          "optimizer=sgd"]


def job(*overrides: str):
    return run_job(resolve(compose_config(*overrides)), {"batch": {"size": "max"}})


def largest_by_hand(budget: int) -> int:
    """The largest B with sgd_peak(B) = 4 (2 (F*F + F) + 2 B F + 2) <= budget."""
    return (budget // 4 - 2 * (F * F + F) - 2) // (2 * F)


def test_a_budget_in_gib_is_read_to_the_nearest_byte_and_echoed_as_given():
    result = job(*LINEAR, "device=meta", "batch.size=max", "batch.memory_budget_gib=0.001")
    search = result.info["batch_search"]  # 1,073,741.824 bytes: truncated, it was echoed as 0.000999999
    assert search["budget_bytes"] == 1_073_742 and search["budget_source"] == "batch.memory_budget_gib=0.001"


def test_the_batch_of_a_linear_model_worked_by_hand():
    budget = MIB  # 1 MiB: (262144 - 8320 - 2) // 128 = 1982 samples
    result = job(*LINEAR, "device=meta", "batch.size=max", f"batch.memory_budget_gib={budget / 2**30}")
    chosen = largest_by_hand(budget)
    assert chosen == 1982
    assert result.status == "ok", result.error
    assert result.metrics["config/batch_size"] == chosen and result.config["batch"]["size"] == chosen
    search = result.info["batch_search"]
    assert search["chosen"] == chosen and search["budget_bytes"] == budget
    assert search["confirmed"] == "estimated on meta, not run: device=meta runs nothing"  # no 'no: ...'
    assert search["estimated_peak_bytes"] == sgd_peak(chosen) <= budget < sgd_peak(chosen + 1)
    assert search["next_estimated_peak_bytes"] == sgd_peak(chosen + 1)
    assert dict(map(tuple, search["estimates"])) == {b: sgd_peak(b) for b, _ in search["estimates"]}
    assert len(search["estimates"]) <= 16  # doubling to 2048 (12), the secant's guess and its neighbour
    # the job at that batch is a counted meta job like any other
    assert result.metrics["flops/forward"] == 2 * chosen * F * F
    assert result.metrics["size/train_peak_bytes"] == 4 * (2 * (F * F + F) + chosen * F)


def test_a_decoder_fits_at_its_batch_and_not_at_one_more():
    """A small GPT with AdamW: checked through fresh estimates of fixed-batch jobs, not the search's own."""
    model = ["model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=2", "model.vocab_size=512",
             "batch.seq_len=32", "device=meta", "tracking=none"]
    budget_gib = 0.01
    result = job(*model, "batch.size=max", f"batch.memory_budget_gib={budget_gib}")
    assert result.status == "ok", result.error
    chosen = result.metrics["config/batch_size"]
    assert chosen > 2

    def estimate(batch: int) -> int:
        return MetaEstimate(resolve(compose_config(*model, f"batch.size={batch}"))).peak(batch)

    assert estimate(chosen) <= budget_gib * 2**30 < estimate(chosen + 1)
    fixed = run_job(resolve(compose_config(*model, f"batch.size={chosen}")), {})
    assert fixed.metrics["size/train_peak_bytes"] == result.metrics["size/train_peak_bytes"] <= budget_gib * 2**30
    assert fixed.metrics["flops/step"] == result.metrics["flops/step"]


def test_on_a_device_the_chosen_batch_is_run_and_stepped_down_after_an_oom():
    """PretendGPU on the CPU holds 1000 samples; the meta estimate of a 1 MiB budget says 1982. The run at 1982
    runs out of memory, then 3/4 of it each time until one fits."""
    capacity_mib = 1000 * F * 4 / MIB
    BUILT_ON.clear()
    result = job(*pretend_gpu(capacity_mib=capacity_mib), "optimizer=sgd", "device=cpu", "batch.size=max",
                 f"batch.memory_budget_gib={1 / 1024}", "measure.warmup=0", "measure.repeats=1")
    tried = [largest_by_hand(MIB)]
    while tried[-1] > 1000:
        tried.append(tried[-1] * 3 // 4)
    assert tried == [1982, 1486, 1114, 835]
    assert result.status == "ok", result.error
    search = result.info["batch_search"]
    assert [a["batch"] for a in search["attempts"]] == tried
    assert [a["status"] for a in search["attempts"]] == ["oom"] * (len(tried) - 1) + ["ok"]
    assert all("out of memory at batch.size" in a["error"] for a in search["attempts"][:-1])
    assert search["chosen"] == tried[0] and search["confirmed"].startswith(f"yes: batch {tried[-1]} ran on cpu")
    assert result.config["batch"]["size"] == result.metrics["config/batch_size"] == tried[-1]
    assert result.metrics["time/step_s"] > 0
    assert BUILT_ON == ["meta"] + ["cpu"] * len(tried)


def test_the_default_budget_is_a_share_of_the_memory_available():
    share = 1e-4  # of the machine's MemAvailable: a few MiB
    result = job(*LINEAR, "device=cpu", "batch.size=max", f"measure.memory_share={share}", "measure.warmup=0",
                 "measure.repeats=1")
    assert result.status == "ok", result.error
    search = result.info["batch_search"]
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    assert search["budget_bytes"] == pytest.approx(share * available, rel=0.2)
    assert "measure.memory_share=0.0001" in search["budget_source"]
    assert search["chosen"] == largest_by_hand(search["budget_bytes"])
    assert search["confirmed"] == f"yes: batch {search['chosen']} ran on cpu"
    assert result.info["memory_check"]["fits"]  # the budget is the pre-check's limit: the batch passes it


def test_an_explicit_budget_over_what_is_there_is_stopped_by_the_pre_check():
    # a million GiB allows the search's cap; the CPU has far less, and the memory pre-check says so before any run
    result = job(*LINEAR, "device=cpu", "batch.size=max", "batch.memory_budget_gib=1e6", "measure.memory_share=1e-6",
                 "measure.warmup=0", "measure.repeats=1")
    assert result.status == "skipped", result.error
    assert result.info["memory_check"]["fits"] is False and "batch_search" in result.info
    assert "attempts" not in result.info["batch_search"]  # nothing ran on the CPU


def test_a_budget_too_small_for_one_sample_is_skipped():
    budget = 4 * 2 * (F * F + F)  # the weights and their gradients, and not a byte for the batch
    result = job(*LINEAR, "device=meta", "batch.size=max", f"batch.memory_budget_gib={budget / 2**30}")
    assert result.status == "skipped"
    assert "batch.size=max: even batch 1 needs" in result.error and "batch.memory_budget_gib" in result.error
    assert result.info["batch_search"]["chosen"] == 0
    assert result.metrics["size/params"] == F * F + F


PEAKS = {"affine": lambda b: 100 + 7 * b,
         "optimizer step first": lambda b: max(500, 100 + 7 * b),  # AdamW's temporaries, then the activations
         "quadratic": lambda b: 100 + b * b,
         "flat": lambda b: 10}


@pytest.mark.parametrize("shape", PEAKS)
def test_the_search_ends_at_the_last_batch_that_fits(shape):
    peak, limit = PEAKS[shape], 4096
    for budget in (5, 106, 107, 499, 500, 600, 10**5, 10**9):
        tried = set()
        chosen, capped = largest_fitting_batch(lambda b: tried.add(b) or peak(b), budget, limit)
        expected = max((b for b in range(1, limit + 1) if peak(b) <= budget), default=0)
        assert chosen == expected, budget
        assert capped == (expected == limit)
        assert len(tried) <= 2 * 12 + 4  # doubling to 4096, then at most a bisection of the last bracket


@pytest.mark.parametrize("overrides,key", [
    (["batch.size=maxx"], "batch.size"),
    (["batch.size=1.5"], "batch.size"),
    (["batch.size=true"], "batch.size"),
    (["batch.size=max", "device=meta"], "batch.memory_budget_gib"),
    (["batch.size=max", "batch.memory_budget_gib=-1"], "batch.memory_budget_gib"),
    (["batch.size=max", "batch.memory_budget_gib=inf"], "batch.memory_budget_gib"),
    (["batch.size=max", "workload=inference"], "batch.size"),
    (["batch.size=max", "dtype=int8"], "batch.size"),
    (["measure.memory_share=0"], "measure.memory_share"),
    (["measure.memory_share=1.5"], "measure.memory_share"),
])
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*overrides))
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_the_command_line_records_and_logs_the_chosen_batch(tmp_path):
    """Through ``flopsweep`` and the local MLflow store: the progress line names the request (``bmax``); the job
    folder, the run's name, params and metrics the batch chosen."""
    overrides = [o for o in LINEAR if o != "tracking=none"]
    out = run_app(*overrides, "device=meta", "batch.size=max", f"batch.memory_budget_gib={1 / 1024}",
                  "tracking.experiment=batch_max", "hydra.run.dir=job", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None})
    assert out.returncode == 0, out.stderr[-3000:]
    chosen = largest_by_hand(MIB)
    assert "[job] custom:Linear|bmax|float32|meta|sgd" in out.stdout
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["config"]["batch"]["size"] == chosen and result["metrics"]["config/batch_size"] == chosen
    assert result["info"]["tracking"]["logged"], result["info"]["tracking"]

    from flopsweep import load_runs

    runs = load_runs(experiment="batch_max", store_dir=tmp_path / "outputs")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["run_name"] == f"custom:Linear|b{chosen}|float32|meta|sgd"  # its optimizer, not AdamW
    assert run["batch.size"] == chosen and run["config/batch_size"] == chosen
    assert run["batch.memory_budget_gib"] == pytest.approx(1 / 1024)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_largest_batch_runs_within_the_budget():
    result = job("model=gpt2_small", "batch.seq_len=512", "dtype=bfloat16", "device=cuda", "batch.size=max",
                 "batch.memory_budget_gib=8", "measure.warmup=1", "measure.repeats=2", "tracking=none")
    assert result.status == "ok", result.error
    search = result.info["batch_search"]
    assert search["confirmed"].startswith("yes") and search["chosen"] > 1
    assert result.metrics["size/measured_peak_bytes"] <= 8 * 2**30 * 1.1
