"""The command line, end to end: single runs, multiruns, presets, the job folder. The first test runs the command in a
new interpreter (the process contract); the others run the same app in this one."""

import json
from pathlib import Path

import pytest

from tests.helpers import run_app, run_cli

TINY = ["model.n_layer=2", "batch.seq_len=32"]
CONTRACT_METRICS = ["flops/forward", "flops/backward", "flops/optimizer", "flops/step", "flops/forward_elementwise",
                    "flops/backward_elementwise", "macs/forward", "flops/forward_analytic", "size/params",
                    "size/params_trainable", "size/params_embedding", "size/weights_bytes", "size/buffers_bytes",
                    "size/grads_bytes", "size/optimizer_state_bytes", "size/activations_bytes",
                    "size/train_peak_bytes"]
TIME_METRICS = ["time/forward_s", "time/backward_s", "time/optimizer_s", "time/step_s", "speed/samples_per_s",
                "speed/tokens_per_s", "speed/flops_per_s"]


def job_folders(root: Path) -> list[Path]:
    """Job folders under root, not the copies logged as MLflow artifacts."""
    return sorted(p.parent for p in root.rglob("result.json") if "mlartifacts" not in p.parts)


@pytest.mark.slow  # a new interpreter (the process contract is kept fast by test_config_errors.py's first case)
def test_single_meta_run_writes_the_contract(tmp_path):
    proc = run_cli("model=gpt2_small", "device=meta", "batch.size=2", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = job_folders(tmp_path / "outputs" / "runs")
    result = json.loads((folder / "result.json").read_text())
    assert set(result) >= {"status", "error", "config", "metrics", "breakdown"}
    assert result["status"] == "ok" and result["error"] is None
    assert result["config"]["model"]["name"] == "gpt2_small" and result["config"]["batch"]["size"] == 2
    for key in CONTRACT_METRICS:
        assert isinstance(result["metrics"][key], (int, float)), key
    for key in TIME_METRICS:  # meta: timings do not apply, so they are absent, never 0
        assert result["metrics"].get(key) is None
    assert result["metrics"]["flops/forward"] == result["metrics"]["flops/forward_analytic"]
    stats = (folder / "stats.txt").read_text()
    for label in ("Forward Flops:", "Backward Flops:", "Model Size (Bytes):", "Average Forward Time (s):",
                  "Average Backward Time (s):"):
        assert label in stats
    assert f"Forward Flops: {result['metrics']['flops/forward']}" in stats
    assert (folder / "modules.csv").exists() and (folder / "ops.csv").exists()
    assert "flops/forward" in proc.stdout


@pytest.mark.slow  # a new interpreter timing a step (tests/measure/test_timing.py times steps in-process, fast)
def test_single_cpu_run_times_the_step(tmp_path):
    proc = run_app("model=gpt2_small", "device=cpu", "batch.size=1", *TINY, "measure.warmup=1",
                   "measure.repeats=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = job_folders(tmp_path)
    m = json.loads((folder / "result.json").read_text())["metrics"]
    for key in TIME_METRICS:
        assert m[key] > 0, key
    assert m["speed/tokens_per_s"] == pytest.approx(32 / m["time/step_s"])
    assert m["speed/mfu"] is None  # no peak is known for this CPU and none was given


@pytest.mark.slow
def test_multirun_goes_on_after_a_failed_job_and_exits_nonzero(tmp_path):
    proc = run_app("-m", "model=gpt2_small", "device=meta", *TINY, "model.n_head=4,7", cwd=tmp_path)
    assert proc.returncode == 1
    folders = job_folders(tmp_path / "outputs" / "sweeps")
    assert len(folders) == 2
    statuses = sorted(json.loads((f / "result.json").read_text())["status"] for f in folders)
    assert statuses == ["failed", "ok"]
    failed = next(json.loads((f / "result.json").read_text()) for f in folders
                  if json.loads((f / "result.json").read_text())["status"] == "failed")
    assert "model.n_head" in failed["error"]
    assert "Traceback" not in proc.stderr
    # the summary table lists both jobs, under the key the sweep varies (it was left out with one job measured), and
    # the refused job has its progress line too
    assert "2 jobs: 1 ok, 1 failed" in proc.stdout
    assert "[job 1/2] gpt2_small: n_head=4" in proc.stdout and "[job 2/2] gpt2_small: n_head=7" in proc.stdout
    header, _, *rows = [line.split() for line in proc.stdout.split("\n\njob ")[1].splitlines()[:4] if line.strip()]
    column = ["job", *header].index("model.n_head")
    assert [row[column] for row in rows] == ["4", "7"] and [row[6] for row in rows] == ["ok", "failed"]


@pytest.mark.slow  # two gpt3 presets at full size on meta: some 5 s
def test_sweep_preset_runs_as_multirun(tmp_path):
    proc = run_app("+sweep=gpt3_family", "model=gpt3_small,gpt3_medium", "batch.seq_len=64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads((f / "result.json").read_text()) for f in job_folders(tmp_path / "outputs" / "sweeps")]
    assert sorted(r["config"]["model"]["name"] for r in results) == ["gpt3_medium", "gpt3_small"]
    assert all(r["config"]["device"]["type"] == "meta" for r in results)


def test_causal_half_option_is_recorded(tmp_path):
    proc = run_app("model=gpt2_small", "device=meta", *TINY, "measure.causal_attention=half", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = job_folders(tmp_path)
    result = json.loads((folder / "result.json").read_text())
    assert result["info"]["causal_attention"] == "half"
    assert result["metrics"]["flops/forward"] < result["metrics"]["flops/forward_analytic"]


@pytest.mark.slow  # a sweep of three families, each built
def test_a_sweep_can_mix_text_and_image_models(tmp_path):
    # batch.seq_len applies to the text model, batch.image_size to the image model
    proc = run_app("-m", "model=gpt2_small,vit_b16", "device=meta", "model.n_layer=1", "batch.seq_len=64",
                   "batch.image_size=96", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = {r["config"]["model"]["name"]: r for r in
               (json.loads((f / "result.json").read_text()) for f in job_folders(tmp_path))}
    assert results["gpt2_small"]["metrics"]["config/seq_len"] == 64
    assert results["vit_b16"]["metrics"]["config/seq_len"] is None
    assert results["vit_b16"]["metrics"]["size/params"] < 86_567_656  # fewer position embeddings at 96 px


def test_result_records_the_model_as_built(tmp_path):
    spec = tmp_path / "model.json"
    spec.write_text(json.dumps({"embed_dim": 256, "num_heads": 4, "num_encoder_blocks": 1}))
    proc = run_app("model=generic", f"model.json_file={spec}", "device=meta", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_app("model=vit_b16", "model.n_layer=1", "batch.image_size=96", "device=meta", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    models = {r["config"]["model"]["name"]: r["config"]["model"] for r in
              (json.loads((f / "result.json").read_text()) for f in job_folders(tmp_path / "outputs" / "runs"))}
    assert models["generic"]["embed_dim"] == 256 and models["generic"]["num_encoder_blocks"] == 1
    assert models["vit_b16"]["image_size"] == 96


def test_the_command_gives_deep_autograd_graphs_a_256_mib_stack(tmp_path):
    """Freeing a long autograd chain recurses once per node: ResNet-BK at N >= 3500 overflowed the default 8 MiB
    stack and the process died of a segfault, taking the sweep with it (``benchmarks/bench_meta_count.py`` counts it
    at N = 4096). The command raises its stack's soft limit before anything runs, from 8 MiB here."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_STACK)
    unlimited = resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_STACK, (8 << 20 if before[1] == unlimited else min(8 << 20, before[1]),
                                               before[1]))
    try:
        run_app("--help", cwd=tmp_path)
        soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, before)
    wanted = 256 << 20 if hard == unlimited else min(256 << 20, hard)
    assert soft == unlimited or soft >= wanted, (soft, hard)


def test_flopsweep_version_is_flopsweeps(tmp_path):
    """--version printed Hydra's (Hydra 1.3.8), not flopsweep's."""
    import torch

    from flopsweep.core import __version__

    out = run_app("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith(f"flopsweep {__version__} (PyTorch {torch.__version__}, ")


def test_flopsweep_help_says_what_it_does_its_public_options_and_the_other_commands(tmp_path):
    from flopsweep.config.compose import public_options
    from tests.helpers import compose_config

    out = run_app("--help", cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == ""
    text = out.stdout
    assert text.startswith("usage: flopsweep") and "Measures models' FLOPs" in text
    assert "gpt2_small" in text and " _decoder" not in text and " _bert" not in text  # not the families' templates
    assert "+sweep=gpt3_family" in text and "Every GPT-3 size" in text
    for command in ("flopsweep-project", "flopsweep-sync", "flopsweep-report", "flopsweep-calibrate",
                    "flopsweep-server"):
        assert f"  {command} " in text
    assert all(len(line) <= 120 for line in text.splitlines())
    # each sweep preset said whole (cut at 91 characters, the layouts' lost its half), no markdown backticks
    assert "`" not in text and " ..." not in text.split("+sweep=")[-1].split("\n\n")[0]
    assert "are left out first" in " ".join(text.split())
    for group, options in public_options().items():  # every option it lists composes (models: test_presets.py)
        if group not in ("sweep", "batch", "model"):
            for name, _ in options:
                compose_config(f"{group}={name}")


@pytest.mark.parametrize("command", [["flopsweep-project"], ["flopsweep-project", "serve"], ["flopsweep-sync"],
                                     ["flopsweep-report"], ["flopsweep-calibrate"]], ids=" ".join)
def test_each_commands_help_renders_without_rest_markup(command, tmp_path):
    import importlib

    module = {"flopsweep-project": "flopsweep.cli.project", "flopsweep-sync": "flopsweep.cli.sync",
              "flopsweep-report": "flopsweep.cli.report", "flopsweep-calibrate": "flopsweep.cli.calibrate"}
    from tests.helpers import run_main

    main = importlib.import_module(module[command[0]]).main
    out = run_main(main, *command[1:], "--help", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("usage:")
    assert "``" not in out.stdout and ":func:" not in out.stdout and ":class:" not in out.stdout
    wide = run_main(main, *command[1:], "--help", cwd=tmp_path, env={"COLUMNS": "200"}).stdout
    assert max(len(line) for line in wide.splitlines()) <= 120  # argparse filled a 160-column terminal's 158


@pytest.mark.slow
def test_a_single_run_of_a_preset_with_fields_of_its_own_is_named_with_them(tmp_path):
    from mlflow import MlflowClient

    out = run_app("model=gpt2_small", "model.n_layer=1", "++model.n_head=4", "batch.seq_len=16", "device=meta",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    name = "gpt2_small(n_layer=1,n_head=4)|b1|s16|float32|meta"
    assert f"[job] {name}" in out.stdout.splitlines()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("flopsweep").experiment_id])
    assert run.info.run_name == name
    # its last line says where it was logged (a single job said nothing of it)
    assert out.stdout.strip().splitlines()[-1] == \
        f"MLflow: run {run.info.run_id} in experiment 'flopsweep' (sqlite:///{tmp_path / 'outputs' / 'mlflow.db'})"
    plain = run_app("model=gpt2_small", "batch.seq_len=16", "device=meta", "tracking=none", cwd=tmp_path)
    assert "[job] gpt2_small|b1|s16|float32|meta" in plain.stdout.splitlines()


@pytest.mark.slow  # a sweep of four jobs
def test_a_sweeps_lines_and_table_show_the_keys_it_varies(tmp_path):
    out = run_app("-m", "model=gpt2_small", "model.n_layer=1", "batch.seq_len=16", "device=meta",
                  "optimizer=adamw,sgd", "train=full,lora", "tracking=none", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("[job ")] == [
        "[job 1/4] gpt2_small: adamw|full", "[job 2/4] gpt2_small: adamw|lora", "[job 3/4] gpt2_small: sgd|full",
        "[job 4/4] gpt2_small: sgd|lora"]
    header = next(line for line in lines if line.startswith("job "))
    assert header.split()[:9] == ["job", "model", "batch", "seq", "dtype", "device", "status", "optimizer", "train"]
    assert any(line.split()[7:9] == ["sgd", "lora"] for line in lines if line.startswith("3_"))


@pytest.mark.slow  # 10 s: four commands through bash pipes, two sweeps
def test_output_piped_into_head_ends_quietly_and_a_sweep_still_measures_every_job(tmp_path):
    """``| head -1``: the reader leaves after a line. A projection ends with no BrokenPipeError traceback; a sweep's
    later lines go nowhere while it measures and records every job (it died on its next line)."""
    import shlex
    import subprocess
    import sys

    from tests.helpers import child_env

    def piped(*command: str) -> str:
        line = " ".join(map(shlex.quote, command))
        done = subprocess.run(["bash", "-c", f"{line} 2>err.txt | head -1"], cwd=tmp_path, env=child_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.count("\n") == 1, done
        return (tmp_path / "err.txt").read_text()

    err = piped(sys.executable, "-m", "flopsweep.cli.project", "train", "--model", "gpt2_small", "--gpu", "H100",
                "--tokens", "1e9", "--mfu", "0.4", "--no-log")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    for launcher in ([], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]):  # the sweep's process, its workers
        err = piped(sys.executable, "-m", "flopsweep", "-m", "model=gpt2_small", "device=meta", "model.n_layer=1",
                    "batch.seq_len=16,32,64", "tracking=none", *launcher)
        assert "Traceback" not in err and "BrokenPipe" not in err and "Logging error" not in err, err
    results = (tmp_path / "outputs" / "sweeps").rglob("result.json")
    assert [json.loads(p.read_text())["status"] for p in results] == ["ok"] * 6


def test_a_hint_names_a_command_as_it_can_be_typed_where_the_user_is(tmp_path, monkeypatch):
    """'`flopsweep-sync DIR` logs it later' named a command that is not on the PATH until the venv is activated."""
    import sys
    from pathlib import Path

    from flopsweep.core.errors import command

    monkeypatch.chdir(Path(sys.executable).parent.parent.parent)  # beside the environment, as README's user is
    here = command("flopsweep-sync")
    assert not Path(here).is_absolute() and here.endswith("bin/flopsweep-sync") and Path(here).is_file()
    monkeypatch.chdir(tmp_path)  # elsewhere: the whole path
    assert Path(command("flopsweep-sync")).is_absolute() and Path(command("flopsweep-sync")).is_file()
    assert command("no-such-command") == "no-such-command"


@pytest.mark.parametrize("module, args, said", [
    ("flopsweep.cli.report", ["--sweep", "nosuch"], "flopsweep-report: error: give an EXPERIMENT, or --profile RUN"),
    ("flopsweep.cli.report", ["x", "--sweep", "s", "--all"],  # its usage said [--sweep SWEEP | --all]; --all ignored
     "flopsweep-report: error: argument --all: not allowed with argument --sweep"),
    ("flopsweep.cli.sync", [], "flopsweep-sync: error: the following arguments are required: path"),
    ("flopsweep.cli.calibrate", ["--bogus"], "flopsweep-calibrate: error: unrecognized arguments: --bogus"),
])
def test_every_commands_usage_error_is_one_line(module, args, said, tmp_path):
    """flopsweep-report --sweep nosuch printed argparse's usage block above its error (flopsweep-project's did not)."""
    import importlib

    from tests.helpers import run_main

    out = run_main(importlib.import_module(module).main, *args, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.splitlines() == [f"{said} (see {said.split(':')[0]} --help)"]


@pytest.mark.parametrize("module, args", [
    ("flopsweep.cli.sync", ["."]),
    ("flopsweep.cli.report", ["flopsweep"]),
    ("flopsweep.cli.project", ["train", "--model", "gpt2_small", "--tokens", "1B", "--gpu", "H100", "--mfu", "0.4"]),
])
def test_a_store_path_given_for_a_uri_is_one_line_naming_the_uri_it_means(module, args, tmp_path):
    """flopsweep-sync --uri outputs/mlflow.db printed MLflow's traceback (its file store 'in maintenance mode'),
    --uri ftp://x another; the report said MLflow's paragraph."""
    import importlib

    from tests.helpers import run_main

    out = run_main(importlib.import_module(module).main, *args, "--uri", "outputs/mlflow.db", cwd=tmp_path)
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert line.endswith(f"'outputs/mlflow.db': not a store MLflow opens: the scheme must be one of http, https, "
                         f"sqlite, postgresql, mysql, mssql, file, databricks (did you mean sqlite:///"
                         f"{tmp_path.resolve() / 'outputs' / 'mlflow.db'}?)"), line


@pytest.mark.slow  # a job and a report
def test_a_store_folder_given_is_read_over_mlflow_tracking_uri(tmp_path, monkeypatch):
    """flopsweep-report EXP --store-dir outputs read the server MLFLOW_TRACKING_URI names all the same ('experiment
    is not in the store http://...'), as load_runs(store_dir=...) did; the variable is read where no folder is given."""
    import flopsweep
    from flopsweep.cli.report import main as report
    from flopsweep.sinks.target import target_at
    from tests.helpers import run_main

    done = run_app("model=gpt2_small", "model.n_layer=1", "device=meta", "tracking.experiment=here", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # no server there
    out = run_main(report, "here", "--store-dir", str(tmp_path / "outputs"), cwd=tmp_path)
    assert out.returncode == 0 and "127.0.0.1" not in out.stdout + out.stderr, out.stderr
    assert len(flopsweep.load_runs("here", store_dir=tmp_path / "outputs")) == 1
    assert target_at(None, None, "here").uri == "http://127.0.0.1:9"
