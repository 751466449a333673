"""Faults inside a job: running out of memory anywhere in a job is a result, ``oom`` with the
batch size, whatever was measured before it is kept, the memory is released and the sweep goes on; a real job
whose training peak, estimated on meta, would not fit in ``measure.memory_share`` of the memory available is
``skipped`` before anything is built at full size.

Without a GPU, :class:`tests.helpers.PretendGPU` stands in for one: a linear layer that, off meta, raises the
``torch.OutOfMemoryError`` the CUDA caching allocator raises when a step needs more than its pretend capacity.
It goes through the real path (``model=custom`` builds any ``_target_``); the product has no test hook.
The CPU allocator's own failure is real: a 2**60-byte embedding, which no machine can map."""

import json

import pytest
import torch

from flopsweep.config.resolve import resolve
from flopsweep.run.job import run_job
from tests.helpers import ALIVE, BUILT_ON, F, compose_config, custom_model, pretend_gpu, run_app, sgd_peak

MIB = 2**20


def job(*overrides: str):
    return run_job(resolve(compose_config(*overrides)), {})


@pytest.fixture(autouse=True)
def _clear_registry():
    BUILT_ON.clear()
    ALIVE.clear()


FAST = ["device=cpu", "measure.warmup=0", "measure.repeats=1"]


@pytest.mark.parametrize("at,phase", [("build", "build"), ("forward", "count"), ("backward", "count"),
                                      ("time", "time")])
def test_out_of_memory_anywhere_is_an_oom_result_and_the_memory_is_released(at, phase):
    batch = 4096  # 4096 x 64 float32 = 1 MiB of output and of gradient: over a 0.5 MiB pretend GPU
    result = job(*pretend_gpu(capacity_mib=0.5 if at != "build" else 0.01, at=at), f"batch.size={batch}", *FAST)
    assert result.status == "oom", result.error
    assert result.info["batch_size"] == batch and result.info["oom_phase"] == phase
    assert result.error.startswith(f"out of memory at batch.size={batch} ({phase}): OutOfMemoryError: CUDA out of")
    assert "\n" not in result.error
    assert result.metrics["config/batch_size"] == batch
    if at == "time":  # the counted step finished before the timed one ran out: its numbers are kept
        assert result.metrics["flops/forward"] == 2 * batch * F * F
        assert result.metrics["size/params"] == F * F + F
        assert "time/step_s" not in result.metrics
        assert result.breakdown["ops"]
    else:
        assert "flops/forward" not in result.metrics
    # nothing holds the model of the failed job: its memory is free for the next one
    assert ALIVE and all(ref() is None for ref in ALIVE)
    assert BUILT_ON[-1] == "cpu"


@pytest.mark.slow  # jobs after a real out-of-memory
def test_the_next_job_in_the_process_runs_after_an_oom():
    assert job(*pretend_gpu(capacity_mib=0.5), "batch.size=4096", *FAST).status == "oom"
    after = job(*pretend_gpu(capacity_mib=0.5), "batch.size=2048", *FAST)  # 0.5 MiB: fits exactly
    assert after.status == "ok", after.error
    assert after.metrics["time/step_s"] > 0 and after.metrics["flops/forward"] == 2 * 2048 * F * F


def test_a_sweep_goes_on_after_an_oom(tmp_path):
    """A real multirun: the first job runs out of memory, the second (same process) runs; the command exits
    non-zero at the end with one line for the error, and both job folders are written."""
    out = run_app("-m", *pretend_gpu(capacity_mib=0.5), "batch.size=8192,2", *FAST, "hydra.sweep.dir=sweep",
                  cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("flopsweep: error:")]
    assert errors == [errors[0]] and "out of memory at batch.size=8192 (count)" in errors[0]
    results = [json.loads((tmp_path / "sweep" / f"{n}_custom-PretendGPU" / "result.json").read_text())
               for n in (0, 1)]  # a custom model's folder named by its class, as its run
    assert [r["status"] for r in results] == ["oom", "ok"]
    assert results[0]["info"]["batch_size"] == 8192 and results[1]["metrics"]["config/batch_size"] == 2
    assert "1 ok" in out.stdout and "1 oom" in out.stdout


@pytest.mark.slow
def test_a_job_skipped_for_memory_is_logged_and_not_taken_for_measured(tmp_path):
    """A real sweep: the job that would not fit is logged like any other (its reason, the sizes estimated on meta),
    as KILLED, not FINISHED: the same command with skip_existing=true tries it again rather than skip it as done."""
    from mlflow.tracking import MlflowClient

    command = ["-m", *pretend_gpu(), "tracking=local", "tracking.experiment=skips", "optimizer=sgd", *FAST,
               "batch.size=64,2", "measure.memory_share=1e-12"]
    for attempt, extra in enumerate([[], ["skip_existing=true"]]):
        out = run_app(*command, *extra, f"hydra.sweep.dir=sweep{attempt}", cwd=tmp_path,
                      env={"MLFLOW_TRACKING_URI": None})
        assert out.returncode == 0, out.stderr[-3000:]  # skipping is not failing
        results = [json.loads((tmp_path / f"sweep{attempt}" / f"{n}_custom-PretendGPU" / "result.json").read_text())
                   for n in (0, 1)]
        assert [r["status"] for r in results] == ["skipped", "skipped"]
        assert all("memory_check" in r["info"] and r["info"]["tracking"]["logged"] for r in results)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("skips").experiment_id],
                              filter_string="tags.`flopsweep.kind` = 'job'")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"KILLED"}  # two attempts of two jobs
    assert {r.data.tags["status"] for r in runs} == {"skipped"}
    assert all("measure.memory_share=1e-12" in r.data.tags["error"] for r in runs)
    assert {r.data.metrics["size/train_peak_bytes"] for r in runs} == {4 * (2 * (F * F + F) + b * F) for b in (64, 2)}


# --- the memory pre-check --------------------------------------------------------------------------------------

def test_a_job_that_would_not_fit_is_skipped_before_it_is_built():
    share = 1e-9  # of some GiB: a few bytes
    result = job(*pretend_gpu(), "optimizer=sgd", "batch.size=64", "device=cpu", f"measure.memory_share={share}")
    assert result.status == "skipped"
    assert BUILT_ON == ["meta"]  # the estimate's build only: nothing was built on the CPU
    check = result.info["memory_check"]
    assert check["estimated_bytes"] == sgd_peak(64)
    assert check["limit_bytes"] == int(share * check["available_bytes"]) < check["estimated_bytes"]
    reason = result.info["skipped"]
    assert reason == result.error and "\n" not in reason
    for part in (f"{sgd_peak(64):,} bytes", f"{check['available_bytes']:,} bytes", "measure.memory_share=1e-09",
                 "measure.memory_check=false", "on cpu"):
        assert part in reason
    assert "use a smaller batch.size" in reason and "raise measure.memory_share" in reason
    huge = job(*pretend_gpu(), "optimizer=sgd", "batch.size=1000000000", "device=cpu")  # 512 GB: over all of it
    assert huge.status == "skipped" and huge.info["memory_check"]["estimated_bytes"] == sgd_peak(10**9)
    assert "measure.memory_share" in huge.info["skipped"] and "raise measure.memory_share" not in huge.info["skipped"]
    one = job(*pretend_gpu(), "optimizer=sgd", "batch.size=1", "device=cpu", f"measure.memory_share={share}")
    assert "batch.size" not in one.info["skipped"] and "device=meta" in one.info["skipped"]  # none smaller than 1
    # the sizes estimated on meta are kept, as a run would report them
    assert result.metrics["size/params"] == F * F + F
    assert result.metrics["size/train_peak_bytes"] == 4 * (2 * (F * F + F) + 64 * F)


def test_a_job_that_fits_runs_and_records_its_check():
    result = job(*pretend_gpu(), "optimizer=sgd", "batch.size=64", *FAST)
    assert result.status == "ok", result.error
    assert BUILT_ON == ["meta", "cpu"]
    check = result.info["memory_check"]
    assert check["fits"] and check["estimated_bytes"] == sgd_peak(64) <= check["limit_bytes"]
    assert check["share"] == 0.8 and check["available_source"]
    assert result.metrics["size/train_peak_bytes"] == 4 * (2 * (F * F + F) + 64 * F)  # counted on the CPU


def test_memory_check_false_runs_without_an_estimate():
    result = job(*pretend_gpu(), "batch.size=2", *FAST, "measure.memory_check=false")
    assert result.status == "ok" and "memory_check" not in result.info
    assert BUILT_ON == ["cpu"]


HUGE = [*custom_model("torch.nn.Embedding", "[{name:input,shape:[batch,8],dtype:int64}]", loss="mse",
                      num_embeddings=2**58, embedding_dim=1), "batch.size=1", "device=cpu"]


def test_a_model_too_large_for_any_machine_is_skipped_on_its_estimate():
    result = job(*HUGE)
    assert result.status == "skipped"
    assert result.metrics["size/params"] == 2**58
    # AdamW: weights, gradients and two moments of 2**58 float32 values, at the least
    assert result.info["memory_check"]["estimated_bytes"] >= 4 * 2**60


def test_the_cpu_allocator_refusing_is_an_oom_result():
    """With the check off, building the 2**60-byte table really fails: the CPU allocator refuses at once (more
    than any address space), which is out of memory at build, not a crash of the sweep."""
    result = job(*HUGE, "measure.memory_check=false")
    assert result.status == "oom" and result.info["oom_phase"] == "build"
    assert "DefaultCPUAllocator: can't allocate memory" in result.error and "\n" not in result.error


# --- on a GPU ----------------------------------------------------------------------------------------------------

TOO_LARGE = ["model=gpt2_small", "batch.seq_len=1024", "device=cuda", "tracking=none", "measure.warmup=0",
             "measure.repeats=1"]


def _too_large_batch() -> int:
    """A batch whose logits alone (B x 1024 x 50257 float32) exceed the GPU's memory twice over."""
    total = torch.cuda.get_device_properties(0).total_memory
    return 2 * total // (1024 * 50257 * 4) + 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_oom_is_a_result_and_the_next_job_runs():
    first = job(*TOO_LARGE, "batch.size=2")  # also makes what a process keeps (context, cuBLAS workspace)
    assert first.status == "ok", first.error
    # the estimate on meta bounds what the device really held (its peak while timed), allocator rounding apart
    assert first.metrics["size/measured_peak_bytes"] <= first.info["memory_check"]["estimated_bytes"] * 1.2
    allocated, reserved = torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)
    batch = _too_large_batch()
    result = job(*TOO_LARGE, f"batch.size={batch}", "measure.memory_check=false")
    assert result.status == "oom", result.error
    assert result.info["batch_size"] == batch and "CUDA out of memory" in result.error
    # nothing of the failed job is left (its weights and optimizer state alone are 2 GB), and the cache was emptied
    assert torch.cuda.memory_allocated(0) <= allocated + 64 * MIB
    assert torch.cuda.memory_reserved(0) <= reserved + 256 * MIB
    after = job(*TOO_LARGE, "batch.size=2")
    assert after.status == "ok", after.error


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_precheck_skips_without_allocating():
    torch.cuda.reset_peak_memory_stats(0)
    before = torch.cuda.max_memory_allocated(0)
    result = job(*TOO_LARGE, f"batch.size={_too_large_batch()}")
    assert result.status == "skipped"
    assert "torch.cuda.mem_get_info" in result.info["skipped"]
    assert torch.cuda.max_memory_allocated(0) == before
