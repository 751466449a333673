"""flopsweep-report on a real timed sweep's store: every file, every plot, one CSV row per run, and the report
among the sweep's parent-run artifacts."""

import csv
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from flopsweep.cli.report import main as report
from tests.helpers import run_app, run_main

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ["flops_vs_seq_len.png", "step_time_vs_batch.png", "memory_breakdown.png", "module_flops.png", "mfu.png",
         "predicted_vs_measured.png"]


@pytest.mark.slow
def test_report_of_a_timed_sweep(tmp_path):
    from flopsweep.measure.calibrate import calibrate

    import torch

    profiles = tmp_path / "calibration"  # the CPU calibrated (coarsely, on the jobs' one thread): they are predicted
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calibrate("cpu", quick=True).save(profiles / "cpu.json")
    finally:
        torch.set_num_threads(threads)
    sweep = run_app("-m", "model=gpt2_small", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
                    "model.vocab_size=500", "batch.size=1,2", "batch.seq_len=16,32", "dtype=float32,bfloat16",
                    "device=cpu", "device.threads=1", "device.peak_tflops=0.5", "measure.warmup=1",
                    "measure.repeats=2", "tracking.experiment=grid", f"predict.hardware={profiles / 'cpu.json'}",
                    cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    out = run_main(report, "grid", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (folder,) = (tmp_path / "outputs" / "reports").iterdir()  # grid_DATE_TIME: the sweep's (its only one)
    assert folder.name.startswith("grid_2") and "its only sweep" in out.stdout
    for name in PLOTS:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    with (folder / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and len({r["run_id"] for r in rows}) == 8
    assert all(float(r["time/step_s"]) > 0 and float(r["speed/mfu"]) > 0 for r in rows)
    assert all(float(r["time/step_predicted_s"]) > 0 for r in rows)
    markdown = (folder / "runs.md").read_text()
    assert markdown.count("\n| b") == 8 and "not drawn" not in markdown  # runs named by what varies: b1\|s16\|...
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("grid")
    parent, = client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in PLOTS + ["runs.csv", "runs.md"]} <= logged


def test_report_of_an_unknown_experiment_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flopsweep.cli.report", "nothing_here"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "'nothing_here'" in out.stderr


@pytest.mark.slow
def test_a_report_is_of_one_sweep_the_latest_unless_told(tmp_path):
    tiny = ["model=gpt2_small", "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.vocab_size=500",
            "device=meta", "tracking.experiment=two"]
    for seq in ("16,32", "64,128,256"):  # a first sweep, then a second of three jobs
        done = run_app("-m", *tiny, f"batch.seq_len={seq}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    out = run_main(report, "two", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3 runs (the latest of 2 sweeps in 'two'" in out.stdout
    (folder,) = (tmp_path / "outputs" / "reports").iterdir()
    with (folder / "runs.csv").open() as handle:
        assert sorted(int(float(r["batch.seq_len"])) for r in csv.DictReader(handle)) == [64, 128, 256]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("two")
    first, latest = client.search_runs([experiment.experiment_id], filter_string="tags.`flopsweep.kind` = 'sweep'",
                                       order_by=["attributes.start_time ASC"])
    assert client.list_artifacts(latest.info.run_id, "report") and not client.list_artifacts(first.info.run_id,
                                                                                              "report")
    every = run_main(report, "two", "--all", "--out", "all", cwd=tmp_path)
    assert every.returncode == 0 and "report of 5 runs of 'two'" in every.stdout, every.stderr
    sweeps = sorted(str(p.relative_to(p.parents[1])) for p in (tmp_path / "outputs" / "sweeps").glob("*/*"))
    wrong = run_main(report, "two", "--sweep", "2020-01-01/00-00-00", cwd=tmp_path)  # it named none of them
    assert wrong.returncode == 2 and wrong.stderr.strip().endswith(f"; its sweeps: {', '.join(sweeps)}")


def test_memory_bars_that_span_decades_get_a_panel_per_scale():
    from flopsweep.analysis.report import _by_scale

    # GPT-3 small and XL, 13B and 175B (GiB): two linear panels, no log axis under stacked bars
    assert _by_scale([1.96, 20.0, 193.0, 2610.0]) == [(0, 2), (2, 4)]
    assert _by_scale([1.0, 2.0, 3.0]) == [(0, 3)]
    assert len(_by_scale([1, 100, 10_000, 1_000_000, 100_000_000])) == 3  # at most three panels


@pytest.mark.slow  # 6 s: a sweep of every family, profiled
def test_every_family_gets_its_module_panel_and_a_batch_plot_needs_two_batches(tmp_path):
    """Four families counted on meta: module_flops.png has a panel for each (a second row of panels, not the
    first three only); timed at one batch size, step_time_vs_batch.png is not drawn, and the report says why."""
    from matplotlib.image import imread

    meta = run_app("-m", "model=gpt2_small,bert_base,vit_b16,t5_small", "batch.seq_len=64", "device=meta",
                   "tracking.experiment=families", cwd=tmp_path)
    assert meta.returncode == 0, meta.stderr
    out = run_main(report, "families", "--out", "families", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    height, width = imread(tmp_path / "families" / "module_flops.png").shape[:2]
    assert height > 1000 and width > 1500  # two rows of three: 4 panels
    timed = run_app("-m", "model=gpt2_small", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
                    "model.vocab_size=500", "batch.size=2", "batch.seq_len=16,32", "device=cpu",
                    "measure.warmup=0", "measure.repeats=1", "tracking.experiment=one_batch", cwd=tmp_path)
    assert timed.returncode == 0, timed.stderr
    out = run_main(report, "one_batch", "--out", "one_batch", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "step_time_vs_batch.png not drawn: no model was timed at two or more batch sizes" in out.stdout
    assert not (tmp_path / "one_batch" / "step_time_vs_batch.png").exists()


def test_runs_md_shows_the_estimated_peak_the_console_shows():
    """runs.md showed size/train_peak_bytes (2.04 GiB) where the sweep's table showed est. peak (2.32 GiB): the larger
    of the two estimates, as the memory checks read them."""
    import pandas as pd

    from flopsweep.analysis.report import TABLE, _markdown_table

    gib = 2**30
    df = pd.DataFrame([{"run_name": "a", "status": "ok", "size/train_peak_bytes": 2 * gib,
                        "size/step_peak_bytes": 3 * gib},
                       {"run_name": "b", "status": "ok", "size/train_peak_bytes": 5 * gib,
                        "size/step_peak_bytes": 4 * gib}])
    header, _, first, second = _markdown_table(df, TABLE).splitlines()
    assert header == "| run_name | status | est. peak |"
    assert first == "| a | ok | 3 GiB |" and second == "| b | ok | 5 GiB |"


def _layouts_report(tmp_path, df):
    from flopsweep.analysis.report import write_report

    drawn = write_report(df, tmp_path / "report", "layouts")
    return drawn, (tmp_path / "report" / "runs.md").read_text()


def test_a_sweep_of_layouts_reports_a_gpus_figures_and_whether_each_fits(tmp_path):
    """flopsweep-report of 312 counted layouts said 'module_flops.png not drawn: no counted runs' and gave runs.md two
    columns (run_name, status): a layout's figures are a GPU's."""
    import pandas as pd

    gib = 2**30
    df = pd.DataFrame([{"run_name": f"d{d}", "status": "ok", "predict.hardware": "H100", "parallel/gpus": 8,
                        "flops/step_per_gpu": 1e15 / d, "parallel/memory_per_gpu_bytes": memory * gib,
                        "time/step_predicted_s": 1.0 / d, "speed/tokens_per_s_per_gpu_predicted": 1000.0 * d,
                        "speed/mfu_predicted": 0.1 * d, "parallel/fits": float(memory < 74)}
                       for d, memory in ((1, 40), (2, 60), (4, 90))])
    drawn, markdown = _layouts_report(tmp_path, df)
    assert drawn == {"layouts.png": "drawn"}  # the whole-model plots are not listed as missing
    assert (tmp_path / "report" / "layouts.png").read_bytes().startswith(PNG)
    header, _, *rows = markdown.split("\n\n")[2].splitlines()
    assert header.split(" | ")[2:] == ["parallel/gpus", "flops/step_per_gpu", "parallel/memory_per_gpu_bytes",
                                       "time/step_predicted_s", "speed/tokens_per_s_per_gpu_predicted",
                                       "speed/mfu_predicted", "parallel/fits |"]
    assert [row.split(" | ")[0] for row in rows] == ["| d2", "| d1", "| d4"]  # those that fit first, fastest first
    assert rows[2] == "| d4 | ok | 8 | 250T | 90 GiB | 250 ms | 4,000 | 40.0% | no |"
    assert "not drawn" not in markdown


@pytest.mark.slow
def test_report_of_a_real_layouts_sweep(tmp_path):
    sweep = run_app("+sweep=layouts", "model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=2",
                    "model.vocab_size=500", "batch.size=2", "batch.seq_len=32", "parallel.gpus=2",
                    "predict.hardware=H100", "tracking.experiment=lay", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    out = run_main(report, "lay", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (folder,) = (tmp_path / "outputs" / "reports").iterdir()
    assert (folder / "layouts.png").read_bytes().startswith(PNG)
    markdown = (folder / "runs.md").read_text()
    assert "not drawn" not in markdown and markdown.count("| yes |") >= 10  # every layout of a toy fits an H100
