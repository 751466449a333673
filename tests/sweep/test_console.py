"""What the console says of a job: the figures that matter for its mode, a warning when its timing is noisy, and
signs of life while a long job times."""

import contextlib
import re

import pytest
import torch

from flopsweep.config.resolve import resolve
from flopsweep.core.result import Result
from flopsweep.core.text import format_metric, job_lines, spread_warning, summary_table
from flopsweep.measure.timing import TICK, time_step
from flopsweep.run.job import run_job
from flopsweep.sweep.progress import Ticker, _duration
from tests.helpers import compose_config

TINY = ["model=gpt2_small", "model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.vocab_size=97",
        "model.max_positions=64", "batch.size=2", "batch.seq_len=16", "tracking=none", "device=meta"]


def job(*overrides):
    result = run_job(resolve(compose_config(*TINY, *overrides)), {})
    assert result.status == "ok", result.error
    return result


def said(result):
    return "\n".join(job_lines(result))


def test_each_mode_shows_the_figure_that_matters():
    full, lora = said(job()), said(job("train=lora"))
    assert "size/params_trainable" not in full and "size/params_trainable" in lora   # LoRA: what trains
    assert "size/params_active" not in full  # a dense model's are all of them
    moe = said(run_job(resolve(compose_config(
        "model=hf", "model.model_type=mixtral", "+model.hidden_size=64", "+model.num_attention_heads=4",
        "+model.num_hidden_layers=2", "+model.num_key_value_heads=2", "+model.intermediate_size=128",
        "+model.num_local_experts=4", "+model.num_experts_per_tok=2", "+model.vocab_size=128", "batch.seq_len=16",
        "batch.size=1", "device=meta", "tracking=none")), {}))
    assert "size/params_active" in moe  # a mixture of experts: what a token uses, beside all it has
    layout = said(job("parallel.tp=2", "predict.hardware=H100"))  # a layout: a GPU's share and its step
    assert "parallel/memory_per_gpu_bytes" in layout and "speed/tokens_per_s_per_gpu_predicted" in layout
    assert "flops/backward" not in layout  # the whole model's, on one device: not what a layout is asked for
    assert "size/step_peak_bytes" in full                                             # meta: the memory it needs
    assert "flops/optimizer_mean" in said(job("optimizer=galore_adamw", "optimizer.rank=4"))  # not the SVD step
    generation = said(job("workload=generate", "generate.new_tokens=8"))
    assert "flops/prefill" in generation and "size/kv_cache_bytes" in generation and "flops/backward" not in generation
    chosen = job("batch.size=max", "batch.memory_budget_gib=0.01")
    assert f"batch.size=max chose {chosen.info['batch_search']['chosen']}" in said(chosen)
    per_block = said(job("device=cpu", "measure.timing=per_block", "measure.repeats=2", "measure.warmup=0"))
    assert "times extrapolated (measure.timing=per_block)" in per_block and "blocks x2" in per_block


def test_a_noisy_timing_is_said_with_what_to_do():
    steady = Result("ok", None, {}, {"time/step_s": 1.0, "time/step_iqr_s": 0.05})
    noisy = Result("ok", None, {}, {"time/step_s": 1.0, "time/step_iqr_s": 0.44})
    assert spread_warning(steady) is None
    assert "44% of its median" in spread_warning(noisy) and "measure.repeats" in spread_warning(noisy)
    assert job_lines(noisy)[-1] == f"warning: {spread_warning(noisy)}"
    assert not any(line.startswith("warning") for line in job_lines(steady))


def test_a_timing_taken_on_a_loaded_machine_is_said_so():
    """Issue 30 item 10: a load average over the cores as the timing began (other work beside the job) is said,
    however steady the timing looked; a timed job records both."""
    from flopsweep.core.result import TimingInfo

    steady = {"time/step_s": 1.0, "time/step_iqr_s": 0.05}
    loaded, quiet = (Result("ok", None, {}, dict(steady)) for _ in range(2))
    loaded.timing = TimingInfo("full", 10, 2, "cpu", load_average=3.4, cores=2)
    quiet.timing = TimingInfo("full", 10, 2, "cpu", load_average=1.2, cores=2)
    assert spread_warning(loaded) == ("the machine was loaded when this job timed its step (load average 3.4 over 2 "
                                      "cores): its times are likely slower than the model's; time it on a quieter "
                                      "machine")
    assert spread_warning(quiet) is None and job_lines(loaded)[-1] == f"warning: {spread_warning(loaded)}"
    noisy = Result("ok", None, {}, {"time/step_s": 1.0, "time/step_iqr_s": 1.08})  # a compiled step's, loaded
    noisy.timing = loaded.timing
    assert spread_warning(noisy).endswith("time it on a quieter machine; its step time varies by 108% of its median "
                                          "(IQR)")  # the load hid it
    noisy.timing = TimingInfo("loop", 10, 2, "cpu")  # your own loop's meter: no sweep keys to raise
    assert spread_warning(noisy).endswith("for steadier figures time more steps inside the meter, or use a quieter "
                                          "machine")
    timed = job("device=cpu", "measure.repeats=2")
    assert timed.timing.load_average >= 0 and timed.timing.cores == __import__("os").cpu_count()
    assert timed.timing.other_cores is not None and timed.timing.other_cores >= 0
    # what other processes did while it timed decides, not the load average, which counts a sweep's previous job
    # and the pip install before a demo (4 of its 5 jobs warned)
    after_pip = Result("ok", None, {}, dict(steady))
    after_pip.timing = TimingInfo("full", 10, 2, "cpu", load_average=2.6, cores=2, other_cores=0.1)
    assert spread_warning(after_pip) is None
    beside = Result("ok", None, {}, dict(steady))
    beside.timing = TimingInfo("full", 10, 2, "cpu", load_average=0.4, cores=2, other_cores=1.3)
    assert spread_warning(beside) == ("the machine was loaded when this job timed its step (other processes kept 1.3 "
                                      "of its 2 cores busy): its times are likely slower than the model's; time it on "
                                      "a quieter machine")
    # a core kept busy beside a timing whose threads needed both: 50x slow (1.12 s, 22 ms quiet) and not said
    beside.timing = TimingInfo("full", 10, 2, "cpu", load_average=0.4, cores=2, other_cores=0.99999)
    assert spread_warning(beside).startswith("the machine was loaded when this job timed its step (other processes "
                                             "kept 1.0 of its 2 cores busy)")
    beside.timing = TimingInfo("full", 10, 1, "cpu", load_average=0.4, cores=2, other_cores=0.99999)  # a core free
    assert spread_warning(beside) is None


def test_the_summary_table_says_what_matters_for_the_sweeps_jobs():
    meta, generation = job(), job("device=cpu", "workload=generate", "generate.new_tokens=4", "measure.repeats=2")
    mixed = summary_table([("0", meta), ("1", generation)]).splitlines()
    header = re.split(r"\s{2,}", mixed[0])
    # the peak the memory pre-check and batch.size=max use, labelled as estimated; training's columns
    assert "est. peak" in header and "step FLOPs" in header and "TTFT" not in header
    first, second = (re.split(r"\s{2,}", line) for line in mixed[2:4])
    peak = meta.metrics["size/step_peak_bytes"]
    assert first[header.index("est. peak")] == format_metric("size/step_peak_bytes", peak)
    assert second[header.index("tokens/s")] != "-"  # the generation's output tokens per second
    # a meta sweep: no timing columns it has no figure for
    alone = re.split(r"\s{2,}", summary_table([("0", meta)]).splitlines()[0])
    assert not {"step time", "tokens/s", "MFU", "measured peak"} & set(alone)
    # a generation sweep: its own columns, not training's
    gen = re.split(r"\s{2,}", summary_table([("1", generation)]).splitlines()[0])
    assert {"prefill FLOPs", "FLOPs/token", "KV/token", "TTFT", "TPOT", "out tokens/s"} <= set(gen)
    assert "step FLOPs" not in gen and "MFU" not in gen
    # a sweep of layouts: a GPU's figures (it showed "-" under the whole model's)
    layout = job("parallel.tp=2", "predict.hardware=H100")
    lines = summary_table([("0", layout)]).splitlines()
    header, row = (re.split(r"\s{2,}", line) for line in (lines[0], lines[2]))
    assert {"GPUs", "step FLOPs/GPU", "memory/GPU", "tokens/s/GPU", "MFU", "fits"} <= set(header)
    assert "params" not in header and row[header.index("fits")] == "yes"  # the table said ok of 239 that did not fit
    assert row[header.index("memory/GPU")] == format_metric("parallel/memory_per_gpu_bytes",
                                                             layout.metrics["parallel/memory_per_gpu_bytes"])


def test_a_mixture_of_experts_shows_its_active_parameters_in_the_summary():
    dense = Result("ok", None, {"model": {"name": "d"}}, {"size/params": 8e9, "size/params_active": 8e9})
    moe = Result("ok", None, {"model": {"name": "m"}}, {"size/params": 46.7e9, "size/params_active": 12.9e9})
    assert "active" not in summary_table([("0", dense)]).splitlines()[0]
    lines = summary_table([("0", dense), ("1", moe)]).splitlines()
    header = re.split(r"\s{2,}", lines[0])
    assert re.split(r"\s{2,}", lines[3])[header.index("active")] == format_metric("size/params_active", 12.9e9)


def test_a_job_says_which_of_its_two_peak_estimates_is_the_summarys_est_peak():
    """Two memory metrics, neither always the larger: the job's lines say which one the summary's est. peak (and the
    memory check) took, so the two consoles agree."""
    for step, static, which in ((2.04 * 2**30, 1.7 * 2**30, "simulated step's"), (65.3 * 2**30, 77.4 * 2**30,
                                                                                   "static sum's")):
        result = Result("ok", None, {"model": {"name": "m"}}, {"size/step_peak_bytes": step,
                                                               "size/train_peak_bytes": static})
        line = next(line for line in job_lines(result) if line.startswith("est. peak"))
        shown = format_metric("size/step_peak_bytes", max(step, static))
        assert line.startswith(f"est. peak {shown} (the {which}, the larger)")
        row = re.split(r"\s{2,}", summary_table([("0", result)]).splitlines()[2])
        assert shown in row


def test_a_long_timing_says_how_far_it_is(capsys):
    model = torch.nn.Linear(8, 8)
    token = TICK.set(Ticker(every=0.0))
    try:
        time_step(model, {"input": torch.randn(2, 8)}, None, contextlib.nullcontext, "cpu", warmup=1, repeats=3,
                  training=False)
    finally:
        TICK.reset(token)
    lines = [line for line in capsys.readouterr().out.splitlines() if "timing the step: run" in line]
    assert [line.split("run ")[1].split(" (")[0] for line in lines] == ["1 of 4", "2 of 4", "3 of 4", "4 of 4"]


def test_a_timing_of_several_loops_says_which_it_is_in(capsys):
    """measure.timing=per_block times the first block of each stack, then the optimizer's step: the count of runs
    started again without saying why (a newcomer read it as the job restarting)."""
    from flopsweep.measure.timing import time_per_block

    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)]))
    model.forward = lambda x: model[0][1](model[0][0](x)).sum()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    token = TICK.set(Ticker(every=0.0))
    try:
        time_per_block(model, {"x": torch.randn(2, 8)}, optimizer, contextlib.nullcontext, "cpu", warmup=0, repeats=2)
    finally:
        TICK.reset(token)
    said = [line.split(": run")[0] for line in capsys.readouterr().out.splitlines() if ": run " in line]
    assert said == ["  ... timing 0.0 (one of 2 alike)"] * 2 + ["  ... timing the optimizer's step"] * 2


@pytest.mark.slow  # a timed job
def test_a_job_announces_each_phase_and_a_long_one_is_said_with_how_long(capsys):
    import time

    from flopsweep.core import progress

    seen = []
    token = progress.LISTENER.set(seen.append)
    try:
        job("device=cpu", "measure.repeats=1")
        job("device=meta")
    finally:
        progress.LISTENER.reset(token)
    cpu, meta = seen[:seen.index("build", 2)], seen[seen.index("build", 2):]
    assert cpu == ["memory check", "build", "count", "size", "time"]  # a real device is pre-checked on meta first
    assert meta == ["build", "count", "size"]
    ticker = Ticker(every=0.3)
    try:
        ticker.entered("count")
        time.sleep(0.9)
        ticker.entered("time")  # the timing loop says how far it is itself; the watcher only where it has not
        capsys.readouterr()
        for run in range(1, 7):
            time.sleep(0.1)
            ticker(run, 12)
        said = capsys.readouterr().out.splitlines()
        time.sleep(0.7)  # a timed run that takes long (a warm-up)
    finally:
        ticker.close()
    assert said and all(line.startswith("  ... timing the step: run ") for line in said), said
    # the watcher's, while run 7 takes long: which run (it said "timing the step" five times over a minute)
    assert capsys.readouterr().out.startswith("  ... timing the step: run 7 of 12 under way, ")
    ticker = Ticker(every=0.2)
    try:
        ticker.entered("build")
        time.sleep(0.7)
    finally:
        ticker.close()
    assert "  ... building the model, 0 s into the job" in capsys.readouterr().out
    ticker = Ticker(every=60.0, first=0.3)  # the first sign of life comes after first, the next no sooner
    try:
        ticker.entered("count")
        time.sleep(0.5)
    finally:
        ticker.close()
    assert capsys.readouterr().out.splitlines() == ["  ... counting its ops, 0 s into the job"]


def test_signs_of_life_come_a_third_of_the_time_run_apart_from_5_to_15_s():
    """A CPU ResNet-50 said one line at 6 s and none in the 12 s after it (every 15 s): the gap is a third of the
    time the job has run, 5 s at least, 15 s at most."""
    ticker = Ticker()
    ticker.close()
    for last, now, due in ((0, 4.9, False), (0, 5, True), (5, 9.9, False), (5, 10, True), (15, 21.6, False),
                           (15, 22.5, True), (45, 59.9, False), (45, 60, True), (600, 614.9, False), (600, 615, True)):
        ticker.last = ticker.started + last
        assert ticker._due(ticker.started + now) is due, (last, now)


def test_the_summarys_estimated_peak_is_the_larger_estimate_as_the_memory_checks_use_it():
    """A newcomer's batch.size=max chose batch 4 for a training peak of 77.4 GiB while the table said 65.3 GiB (the
    simulated step's): the column is the larger of the two, as run/fit.py's check reads them. A job cut short shows
    the sequence it was asked for."""
    gib = 2**30
    training_larger = Result("ok", None, {"batch": {"size": 4, "seq_len": 8}},
                             {"size/step_peak_bytes": 65 * gib, "size/train_peak_bytes": 77 * gib,
                              "config/seq_len": 8})
    step_larger = Result("ok", None, {"batch": {"size": 1, "seq_len": 8}},
                         {"size/step_peak_bytes": 5 * gib, "size/train_peak_bytes": 3 * gib, "config/seq_len": 8})
    cut = Result("interrupted", "interrupted by SIGINT before the job finished", {"batch": {"size": 2, "seq_len": 64}})
    rows = [line.split() for line in summary_table([("0_a", training_larger), ("1_a", step_larger), ("2_a", cut)])
            .splitlines()[2:]]
    assert [" ".join(row[-2:]) for row in rows[:2]] == ["77 GiB", "5 GiB"] and rows[2][3] == "64"
    assert format_metric("size/kv_cache_bytes_per_token", 131072) == "128 KiB"


def test_a_duration_under_ten_minutes_keeps_its_seconds():
    """It said '2 min' at 98 s, after '80 s'; then '82 s' after '1 min 31 s'."""
    assert [_duration(t) for t in (45, 59.4, 82, 98, 119.7, 600, 7200)] == \
        ["45 s", "59 s", "1 min 22 s", "1 min 38 s", "2 min 0 s", "10 min", "2.0 h"]


def test_a_parallel_sweeps_eta_counts_the_jobs_over_and_its_pace_from_the_first_jobs_start(tmp_path, monkeypatch):
    """Early in a joblib sweep it said 'about 9 min 43 s left' of a 38 s sweep: it took the job's number for the
    jobs over (two run side by side) and the workers' start-up for the jobs' pace."""
    import os
    import time

    from flopsweep.sweep.progress import progress_line
    from flopsweep.sweep.state import CONTEXT_ENV, SweepContext

    monkeypatch.delenv(CONTEXT_ENV, raising=False)
    now = time.time()
    SweepContext(total=10, start=now - 100, swept=("batch.size",), at_once=2).publish()
    (tmp_path / "0_a" / ".hydra").mkdir(parents=True)
    os.utime(tmp_path / "0_a" / ".hydra", (now - 20, now - 20))  # the first job started 80 s into the sweep
    config = {"model": {"name": "gpt2_small"}, "batch": {"size": 4}}
    second = progress_line(1, config, folder=tmp_path / "1_a")  # started beside job 0: no job is over yet
    assert second.startswith("[job 2/10] ") and second.endswith("elapsed 1 min 40 s"), second
    # job 3 starts as job 0 ends: 2 jobs over (0 and 1, side by side) in the 20 s since they started, 8 to go
    assert progress_line(3, config, folder=tmp_path / "3_a").endswith("elapsed 1 min 40 s, about 1 min 20 s left")
    assert progress_line(3, config).endswith("about 6 min 40 s left")  # no folder: the pace from the sweep's start


def test_an_image_models_speed_is_said_in_samples_a_second():
    """A ViT's or a ResNet's job said no speed at all (tokens/s is a language model's)."""
    from flopsweep.core.result import Result
    from flopsweep.core.text import job_lines, summary_columns

    image = Result("ok", None, {}, {"size/params": 1e6, "time/step_s": 0.5, "speed/samples_per_s": 16.0})
    text = Result("ok", None, {}, {"size/params": 1e6, "time/step_s": 0.5, "speed/samples_per_s": 16.0,
                                   "speed/tokens_per_s": 2048.0})
    assert "speed/samples_per_s  16" in job_lines(image)
    assert not any(line.startswith("speed/samples_per_s") for line in job_lines(text))
    assert ("samples/s", "speed/samples_per_s") in summary_columns([image, text])
    assert "samples/s" not in dict(summary_columns([text]))


def test_a_job_timed_beside_spinning_processes_says_the_machine_was_loaded():
    """Real other work while the step is timed: processes that spin on every core."""
    import os

    from tests.helpers import other_work

    cores = os.cpu_count() or 1
    with other_work(2 * cores):
        loaded = job("device=cpu", "measure.repeats=5")
    assert loaded.timing.other_cores > cores / 2, loaded.timing
    assert spread_warning(loaded).startswith("the machine was loaded when this job timed its step (other processes "
                                             f"kept {loaded.timing.other_cores:.1f} of its {cores} cores busy)")
