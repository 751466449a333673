"""``flopsweep-project`` as subcommands: old spellings mapped onto them with a note, flags of another subcommand
refused in one line, each help readable, and the MFU a run predicted used where none is given (a FLOPs budget's a
default else); a skipped job followed to the run that measured it, a bad layout named by its flag, and where each
projection was logged said."""

import json
import re

import pytest

from flopsweep.cli.project import main
from flopsweep.cli.project.legacy import translate
from tests.helpers import run_main

N, T, B = 100_000_000, 128, 4       # a hand-written run: 100M parameters, 4 sequences of 128 tokens a step
FORWARD = 2 * N * B * T + 1.5e11    # its counted forward (the matmuls and some attention), backward twice that
A100_BF16 = 312e12                  # NVIDIA's A100 datasheet: dense bfloat16 tensor-core peak


def hand_run(folder, predicted=None, training=True, **config) -> str:
    """A job's folder holding a result.json written here: a training step counted (or a forward only), and
    ``speed/mfu_predicted``."""
    folder.mkdir()
    info = config.pop("info", {})
    metrics = {"config/seq_len": T, "config/batch_size": B, "size/params": N, "flops/forward": FORWARD}
    if training:
        metrics.update({"flops/backward": 2 * FORWARD, "flops/optimizer": 12 * N})
    if predicted is not None:
        metrics["speed/mfu_predicted"] = predicted
    result = {"status": "ok", "error": None, "config": {"model": {"name": "hand"}, **config}, "metrics": metrics,
              "breakdown": {}, "info": info}
    (folder / "result.json").write_text(json.dumps(result))
    return folder.name


@pytest.mark.parametrize("old,new,dropped", [
    (["RUN", "--tokens", "2T", "--mfu", "0.4", "--hardware", "x.yaml"],
     ["train", "RUN", "--tokens", "2T", "--mfu", "0.4"], ["--hardware"]),
    (["--model", "m", "--compute-optimal", "--inference", "--recompute", "--mfu", "0.4"],
     ["train", "--model", "m", "--compute-optimal", "--inference", "--recompute", "--mfu", "0.4"], []),
    (["--model", "m", "--serve", "--prompt-tokens", "8", "--mfu", "0.4", "--tp", "2", "--dp=2"],
     ["serve", "--model", "m", "--prompt-tokens", "8", "--tp", "2"], ["--mfu", "--dp"]),
    (["--model", "m", "--budget-usd=1M", "--no-log", "--price", "2", "--experiment", "e", "--tokens", "1T"],
     ["budget", "--model", "m", "--usd=1M", "--no-log", "--price", "2", "--experiment", "e", "--tokens", "1T"], []),
])
def test_an_old_spelling_becomes_the_subcommand_it_meant(old, new, dropped):
    """What the one parser read in a mode is kept (a plan beside a budget too: it was refused, and is); what it took
    there and never read is left out, and the note names it."""
    argv, note = translate(old)
    assert argv == new
    assert note.startswith("flopsweep-project: note: now spelt `flopsweep-project " + " ".join(new) + "`")
    assert all(flag in note.split("`")[-1] for flag in dropped) and "\n" not in note
    assert ("left out" in note) == bool(dropped)


@pytest.mark.parametrize("typed, meant", [("trian", "train"), ("budegt", "budget"), ("serv", "serve")])
def test_a_mistyped_subcommand_is_named_not_taken_for_an_old_spelling(typed, meant, tmp_path):
    """'trian --model x' was taken for the old one-parser spelling of a run named trian: a note, then 'give a
    measured run or --model, not both'; 'budegt --usd 1M' was a train with --usd."""
    done = run_main(main, typed, "--model", "gpt2_small", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"flopsweep-project: error: {typed!r} is not a subcommand (did you mean {meant}?): train, budget, serve"]


def test_an_old_invocation_projects_as_the_new_one_with_a_note(tmp_path):
    common = ["--model", "gpt2_small", "--seq-len", "64", "--tokens", "1T", "--mfu", "0.5", "--no-log"]
    old = run_main(main, *common, "--new-tokens", "3", "--json", "old.json", cwd=tmp_path)
    new = run_main(main, "train", *common, "--json", "new.json", cwd=tmp_path)
    assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    assert json.loads((tmp_path / "old.json").read_text()) == json.loads((tmp_path / "new.json").read_text())
    assert old.stdout == new.stdout and new.stderr == ""
    note, = old.stderr.strip().splitlines()
    assert "`flopsweep-project train --model gpt2_small --seq-len 64 --tokens 1T" in note and "--new-tokens" in note


@pytest.mark.parametrize("args,message", [
    (["train", "--model", "m", "--tokens", "1T", "--bandwidth", "900"],
     "--bandwidth does not apply to train: it is a flag of serve"),
    (["serve", "--model", "m", "--prompt-tokens", "8", "--new-tokens", "8", "--mfu=0.4"],
     "--mfu does not apply to serve: it is a flag of train and budget"),
    (["budget", "--model", "m", "--flops", "1e20", "--mfu", "0.4", "--new-tokens", "8"],
     "--new-tokens does not apply to budget: it is a flag of serve"),
    (["budget", "--model", "m", "--flops", "1e20", "--tokens", "1T"], "--tokens does not apply to budget"),
    (["train", "--model", "m", "--token", "1T"], "--token is not a flag of train (did you mean --tokens?)"),
    (["train", "RUN", "OTHER", "--tokens", "1T"], "unexpected OTHER"),
    ([], "choose a subcommand: train, budget, serve"),
    # a word that is no subcommand, folder or run id: it was taken for the old spelling's RUN and train's help shown
    (["layout", "--help"], "'layout' is not a subcommand: train, budget, serve"),
])
def test_a_flag_another_subcommand_takes_is_refused_in_one_line(args, message, tmp_path):
    out = run_main(main, *args, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not out.stdout


@pytest.mark.parametrize("args,message", [
    # a mistyped preset first: it was said only once the plan's flags were right
    (["train", "--model", "gpt2_smal"],
     "train: error: --model='gpt2_smal': is not a preset (did you mean gpt2_small?)"),
    (["serve"], "serve: error: RUN: give a measured run (its job folder or MLflow run id) or --model PRESET"),
    # a negative amount after its flag was argparse's "expected one argument" (taken for a flag); with = it was read
    (["train", "--model", "gpt2_small", "--tokens", "-5B"],
     "train: error: argument --tokens: '-5B' is negative: an amount is 0 or more (examples: 2e12, 300B, 1.5T)"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens=-1K"], "serve: error: argument --prompt-tokens: '-1K' is "
                                                                "negative"),
    # what --model needs, in one line (it took three tries, one flag each, the first naming an internal 'run')
    (["serve", "--model", "llama3_1_8b"], "serve: error: --prompt-tokens and --new-tokens: must be given with --model"),
    (["budget", "x", "--model", "gpt2_small", "--flops", "1e20"], "budget: error: RUN: give a measured run or "
                                                                  "--model, not both (--model='gpt2_small')"),
])
def test_what_a_projection_projects_is_checked_first_and_whole(args, message, tmp_path):
    out = run_main(main, *args, "--no-log", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(f"flopsweep-project {message}"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not out.stdout


@pytest.mark.parametrize("subcommand", ["", "train", "budget", "serve"])
def test_each_help_renders(subcommand, tmp_path):
    out = run_main(main, *([subcommand] if subcommand else []), "--help", cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith(f"usage: flopsweep-project {subcommand}".rstrip())
    assert "``" not in out.stdout and max(len(line) for line in out.stdout.splitlines()) <= 120
    expected = {"": ["train", "budget", "serve"], "train": ["--tokens", "--mfu", "--dp"],
                "budget": ["--usd", "--tokens-per-param", "--mfu"], "serve": ["--prompt-tokens", "--bandwidth"]}
    assert all(word in out.stdout for word in expected[subcommand])
    if subcommand:  # --gpu's parts are the hardware table's, every one of them
        from flopsweep.core.hardware import ACCELERATORS

        flat = " ".join(out.stdout.split())
        assert all(f" {part.name}," in flat or f" {part.name};" in flat or f"({part.name}," in flat
                   for part in ACCELERATORS), flat


def test_without_mfu_a_run_is_projected_at_the_mfu_it_predicted(tmp_path):
    """A run whose MFU was predicted for an A100: its hours follow from that MFU and the A100's peak, computed here
    from the run's metrics; on another part, or with no prediction, one line says what to give."""
    run = hand_run(tmp_path / "predicted", 0.43, predict={"hardware": "A100"})

    def project(*args):
        return run_main(main, *args, "--no-log", cwd=tmp_path)

    out = project("train", run, "--tokens", "1T", "--gpu", "A100", "--json", "p.json")
    assert out.returncode == 0, out.stderr
    assert "MFU 43.0% (predicted for A100 from predicted)" in out.stdout
    rows = {r["method"]: r for r in json.loads((tmp_path / "p.json").read_text())["rows"]}
    counted = 1e12 * 3 * FORWARD / (B * T)
    assert rows["counted"]["gpu_hours"] == pytest.approx(counted / (A100_BF16 * 0.43 * 3600))
    assert rows["6ND"]["gpu_hours"] == pytest.approx(6 * N * 1e12 / (A100_BF16 * 0.43 * 3600))
    assert "MFU 50.0% (assumed)" in project("train", run, "--tokens", "1T", "--gpu", "A100", "--mfu", "0.5").stdout
    forward = hand_run(tmp_path / "forward", 0.43, training=False, predict={"hardware": "A100"})
    budget = run_main(main, "budget", forward, "--gpu-hours", "1000", "--gpu", "A100", cwd=tmp_path)
    assert budget.returncode == 0 and "MFU 43.0%" in budget.stdout, budget.stderr
    for args, message in ((["--gpu", "H100"], "MFU was predicted for A100, not for --gpu H100"),
                          (["--model", "gpt2_small"], "a preset counted here has none")):
        bad = project("train", *([] if "--model" in args else [run]), "--tokens", "1T", *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, \
            bad.stderr
    timed = hand_run(tmp_path / "timed", 0.5, info={"timing": {"device_name": "NVIDIA A100-SXM4-80GB"}})
    out = project("train", timed, "--tokens", "1T", "--gpu", "A100")
    assert "MFU 50.0% (predicted for NVIDIA A100-SXM4-80GB from timed)" in out.stdout, out.stderr
    none = project("train", hand_run(tmp_path / "none"), "--tokens", "1T")
    assert none.returncode == 2 and len(none.stderr.strip().splitlines()) == 1
    assert "--mfu" in none.stderr and "speed/mfu_predicted" in none.stderr and "none has none" in none.stderr


def test_a_layout_job_is_not_projected_as_a_model_but_its_predicted_mfu_is_taken_by_mfu_from(tmp_path):
    """A parallel.* job was refused as having 'counted nothing (measure.count=false)', and --mfu-from it said 'has no
    measured MFU': it has its predicted one, for the part named in the table (not 'NVIDIA H100 80GB HBM3')."""
    layout = hand_run(tmp_path / "layout", 0.2, predict={"hardware": "H100"},
                      info={"parallel": {"layout": {"dp": 2, "zero": 3}}})
    model = hand_run(tmp_path / "model")
    refused = run_main(main, "train", layout, "--tokens", "1T", "--gpu", "H100", "--no-log", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "flopsweep-project train: error: run='layout': is a layout counted rank by rank (parallel.*), which counts a "
        "GPU's step, not the model's: project the model's own run (without parallel.*) with its --dp --tp --pp "
        "--zero, or --model with them and --batch, which counts the layout here"]
    out = run_main(main, "train", model, "--tokens", "1T", "--gpu", "H100", "--mfu-from", layout, "--no-log",
                   cwd=tmp_path)
    assert out.returncode == 0 and "MFU 20.0% (predicted for H100 in layout)" in out.stdout, out.stderr
    other = run_main(main, "train", model, "--tokens", "1T", "--gpu", "A100", "--mfu-from", layout, "--no-log",
                     cwd=tmp_path)
    assert other.returncode == 2 and "predicts its MFU for H100, not for --gpu A100: give --gpu H100" in other.stderr


@pytest.mark.parametrize("args, why", [
    (["train", "--tokens", "1T", "--inference", "--dp", "8", "--batch", "8", "--gpu", "H100"],
     "an inference (--inference) is not counted rank by rank: only a training step's layout is"),
    (["budget", "--gpu-hours", "1000", "--dp", "8", "--zero", "3", "--gpu", "H100"],
     "budget counts no layout rank by rank (train does, with --batch)"),
    (["train", "--tokens", "1T", "--dp", "8", "--gpu", "H100"],
     "its layout is counted rank by rank at a global batch: give --batch"),
    (["train", "--tokens", "1T", "--dp", "8", "--batch", "8", "--gpu", "MI250X"],
     "--gpu MI250X has no interconnect in the hardware table to predict the layout's step on"),
])
def test_a_preset_without_an_mfu_is_refused_with_the_one_reason_that_holds(args, why, tmp_path):
    """One line listed all four conditions of a layout counted rank by rank, asking for --dp and --batch of a user
    who had given both (the cause: --inference), or for --batch of budget, which refuses it."""
    done = run_main(main, *args, "--model", "llama2_7b", "--no-log", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(f"; {why}"), done.stderr


def test_a_split_over_the_gpus_memory_is_warned_of_from_the_table_without_gpu_memory(tmp_path):
    """--gpu A10G says 24 GB: a device needing 639 GiB printed no warning unless --gpu-memory was given too. The
    preset is counted in --dtype (bfloat16 by default): its activations half the 1.25 TiB a float32 count gave."""
    done = run_main(main, "train", "--model", "gpt2_xl", "--tokens", "1B", "--dp", "2", "--mfu", "0.4", "--gpu",
                    "A10G", "--batch", "512", "--no-log", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "counted on meta in bfloat16" in done.stdout
    assert "warning: a device needs 639 GiB, more than the 22.4 GiB of one GPU: more GPUs, more sharding, or a " \
           "smaller batch" in done.stdout.splitlines()


@pytest.mark.slow
def test_a_presets_layout_is_counted_rank_by_rank_and_its_predicted_mfu_projected(tmp_path):
    """--model with a layout and a global batch, no --mfu: the layout is counted as a parallel.* job would count it,
    and the projection takes that job's predicted MFU (its communication and bubble in it) and prints its memory a
    GPU; the hours follow from it and the H100's peak."""
    from tests.helpers import compose_config
    from flopsweep.config.resolve import job_config, resolve
    from flopsweep.core import metrics as M
    from flopsweep.core.text import size_bytes
    from flopsweep.run.job import run_job

    out = run_main(main, "train", "--model", "gpt2_small", "--tokens", "1B", "--batch", "8", "--dp", "2", "--tp", "2",
                   "--pp", "2", "--zero", "3", "--gpu", "H100", "--gpu-memory", "1", "--json", "p.json", "--no-log",
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = compose_config("model=gpt2_small", "device=meta", "batch.size=8", "tracking=none", "parallel.dp=2",
                         "parallel.tp=2", "parallel.pp=2", "parallel.zero=3", "parallel.micro_batch_size=2",
                         "predict.hardware=H100",
                         "dtype=mixed_bf16")  # float32 weights and state, sharded by FSDP; bfloat16 compute
    spec = resolve(cfg)
    job = run_job(spec, job_config(cfg, spec))
    mfu = job.metrics[M.MFU_PREDICTED]
    assert 0 < mfu < 1
    assert f"MFU {mfu:.1%} (predicted for" in out.stdout
    assert "counted as dp2 tp2 pp2 zero3, 2 micro-batches, on a fake" in out.stdout
    assert "layout counted rank by rank" in out.stdout and "memory a GPU" in out.stdout
    payload = json.loads((tmp_path / "p.json").read_text())
    # the per-device table is of the preset counted as the layout computes (its weights float32, 4 bytes each), and
    # fits or not by the layout's counted peak (over the 1 GiB given, where the even split is under it)
    peak, split = job.metrics[M.PARALLEL_MEMORY_PER_GPU], payload["parallel"]
    assert split["weights_bytes"]["whole"] == 4 * payload["model"]["params"]
    assert split["counted_peak_bytes"] == peak and split["memory_bytes"]["device"] < 2**30 < peak, split
    assert f"warning: a device needs {size_bytes(peak)} at the peak, more than the 1 GiB of one GPU" in out.stdout
    assert payload["hardware"]["mfu"] == pytest.approx(mfu)
    # the step predicted has its bubble (2 stages, 2 micro-batches) and communication in it: the hours are the
    # FLOPs at that MFU, not divided again by 1 - bubble
    counted = next(r for r in payload["rows"] if r["method"] == "counted")
    assert counted["gpu_hours"] == pytest.approx(counted["flops"] / (989.4e12 * mfu * 3600))
    # without --batch there is no global batch to count: the one line says what to give
    bare = run_main(main, "train", "--model", "gpt2_small", "--tokens", "1B", "--dp", "2", "--gpu", "H100",
                    "--no-log", cwd=tmp_path)
    assert bare.returncode == 2 and "--batch" in bare.stderr and len(bare.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_counted_layout_with_recomputation_costs_its_predicted_steps_and_fp8_is_refused(tmp_path):
    """--recompute was left out of the layout's count (its step, memory and MFU without it) and then priced again as
    one more forward at that MFU: 546 days where its steps said 410. --dtype fp8 took the layout's MFU, counted in
    bfloat16, to the fp8 peak: half the GPU-hours of the same step."""
    from tests.helpers import compose_config
    from flopsweep.config.resolve import job_config, resolve
    from flopsweep.core import metrics as M
    from flopsweep.run.job import run_job

    out = run_main(main, "train", "--model", "gpt2_small", "--tokens", "1B", "--batch", "8", "--dp", "2", "--tp", "2",
                   "--zero", "3", "--gpu", "H100", "--recompute", "--json", "p.json", "--no-log", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = compose_config("model=gpt2_small", "device=meta", "batch.size=8", "tracking=none", "parallel.dp=2",
                         "parallel.tp=2", "parallel.zero=3", "parallel.micro_batch_size=4", "parallel.recompute=full",
                         "predict.hardware=H100", "dtype=mixed_bf16")
    spec = resolve(cfg)
    step_s = run_job(spec, job_config(cfg, spec)).metrics[M.TIME_STEP_PREDICTED]
    counted = next(r for r in json.loads((tmp_path / "p.json").read_text())["rows"] if r["method"] == "counted")
    steps = 1e9 / (8 * 1024)
    assert counted["gpu_hours"] == pytest.approx(steps * step_s * 4 / 3600, rel=1e-3)
    fp8 = run_main(main, "train", "--model", "gpt2_small", "--tokens", "1B", "--batch", "8", "--dp", "2", "--zero",
                   "3", "--gpu", "H100", "--dtype", "fp8", "--no-log", cwd=tmp_path)
    assert fp8.returncode == 2 and fp8.stderr.strip().splitlines()[-1] == (
        "flopsweep-project train: error: --dtype='fp8': a layout counted rank by rank computes in float32, bfloat16 "
        "or float16, and its predicted MFU is of that dtype's peak: give --mfu to project this one"), fp8.stderr


def test_number_formats_take_their_usual_spellings(tmp_path):
    """``--dtype float8`` is ``fp8`` (it had no peak in the table), ``--weights-dtype E4M3`` too, ``bf16`` is
    ``bfloat16``; a format nobody spells so is refused naming the flag and the names it takes."""
    base = ["serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "8", "--gpu", "H100"]
    spelled = run_main(main, *base, "--dtype", "float8", "--weights-dtype", "E4M3", "--kv-dtype", "bf16",
                       cwd=tmp_path)
    named = run_main(main, *base, "--dtype", "fp8", "--weights-dtype", "fp8", "--kv-dtype", "bfloat16", cwd=tmp_path)
    assert spelled.returncode == named.returncode == 0, spelled.stderr
    assert spelled.stdout.splitlines()[:3] == named.stdout.splitlines()[:3]
    assert "1,978.9 TFLOP/s fp8" in spelled.stdout  # the table's peak as train gives it (serve said 1,979)
    refused = run_main(main, *base, "--weights-dtype", "int3", cwd=tmp_path)
    assert refused.returncode != 0 and refused.stderr.strip() == (
        "flopsweep-project serve: error: --weights-dtype='int3': must be one of float32, bfloat16, float16, fp8, int8, "
        "int4, fp4")
    nvfp4 = run_main(main, "serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "8", "--gpu",
                     "B200", "--dtype", "NVFP4", "--weights-dtype", "mxfp4", cwd=tmp_path)  # Blackwell's 4-bit
    assert nvfp4.returncode == 0 and "9,000 TFLOP/s fp4" in nvfp4.stdout, nvfp4.stderr


TINY_GPT = ("model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.vocab_size=1000",
            "batch.size=2", "batch.seq_len=32", "device=meta")


@pytest.fixture(scope="module")
def measured_and_skipped(tmp_path_factory):
    """A tiny GPT measured on meta (logged to the folder's local store), then the same configuration in a sweep with
    skip_existing=true, whose job is skipped pointing to that run: the folder, the two job folders and the run id."""
    from tests.helpers import run_app

    folder = tmp_path_factory.mktemp("skipped")
    job = run_app(*TINY_GPT, cwd=folder)
    assert job.returncode == 0, job.stderr
    measured = next(folder.glob("outputs/runs/*/*/result.json")).parent
    sweep = run_app("-m", *TINY_GPT, "skip_existing=true", "hydra.sweep.dir=sweep", cwd=folder)
    assert sweep.returncode == 0, sweep.stderr
    skipped = folder / "sweep" / "0_gpt2_small"
    assert json.loads((skipped / "result.json").read_text())["status"] == "skipped"
    run_id = json.loads((measured / "result.json").read_text())["info"]["tracking"]["run_id"]
    return folder, measured, skipped, run_id


def test_a_skipped_job_is_followed_to_the_run_that_measured_it(measured_and_skipped):
    """The folder of a job skip_existing=true skipped (or its result.json) projects as the run it found measured:
    the same figures as that run's own folder, the header naming the run, the projection's MLflow run tagged with
    it; a job skipped for another reason (no room) is refused in one line giving the reason."""
    from mlflow.tracking import MlflowClient

    folder, measured, skipped, run_id = measured_and_skipped
    plan = ["--tokens", "1B", "--gpu", "A100", "--mfu", "0.5"]
    direct = run_main(main, "train", str(measured), *plan, "--json", "direct.json", "--no-log", cwd=folder)
    assert direct.returncode == 0, direct.stderr
    for ref in (skipped, skipped / "result.json"):
        out = run_main(main, "train", str(ref), *plan, "--json", "followed.json", cwd=folder)
        assert out.returncode == 0, out.stderr
        assert f"from {ref} (skipped: measured by run {run_id})" in out.stdout
        followed = json.loads((folder / "followed.json").read_text())
        assert followed["rows"] == json.loads((folder / "direct.json").read_text())["rows"]
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("projections").experiment_id])
    assert [r.data.tags["flopsweep.measured_run"] for r in runs] == [run_id, run_id]
    no_room = hand_run(folder / "no_room")
    record = json.loads((folder / "no_room" / "result.json").read_text())
    record.update(status="skipped", info={"skipped": "its estimated peak exceeds measure.memory_share"})
    (folder / "no_room" / "result.json").write_text(json.dumps(record))
    out = run_main(main, "train", no_room, *plan, "--no-log", cwd=folder)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "was skipped, not measured (its estimated peak exceeds measure.memory_share)" in out.stderr


def test_bottlenecks_of_a_skipped_job_are_those_of_the_run_it_found(measured_and_skipped, monkeypatch):
    """flopsweep.analysis.bottlenecks on the folder of a job skip_existing=true skipped follows it, as
    flopsweep-project does (it said the run had no per-module breakdown)."""
    from flopsweep import analysis

    folder, measured, skipped, _ = measured_and_skipped
    monkeypatch.chdir(folder)  # the store the sweep logged to: outputs/ here
    direct, followed = analysis.bottlenecks(measured), analysis.bottlenecks(skipped)
    assert not direct.empty and followed.equals(direct)


def test_a_measured_run_split_over_a_layout_has_its_steps_and_their_optimizer(measured_and_skipped):
    """A run split over --dp is the global batch of one step (2 sequences of 32 tokens): the plan's steps follow, each
    with its optimizer step (it said 'the plan gives no tokens per step' and left the optimizer out)."""
    folder, measured, _, _ = measured_and_skipped
    out = run_main(main, "train", str(measured), "--tokens", "1B", "--dp", "2", "--mfu", "0.5", "--gpu", "H100",
                   "--json", "split.json", "--no-log", cwd=folder)
    assert out.returncode == 0, out.stderr
    assert "gives no tokens per step" not in out.stdout
    assert json.loads((folder / "split.json").read_text())["plan"]["steps"] == 1e9 / (2 * 32)


def test_a_layout_the_model_does_not_take_is_refused_naming_the_flag(measured_and_skipped):
    """--tp that does not divide the heads names --tp, whether the measured run is split (projection) or a preset is
    counted in the layout (the config's parallel.tp underneath); --pp and --seq-len alike, each in one line."""
    folder, measured, _, _ = measured_and_skipped
    for args, message in (
            ([str(measured), "--tp", "3", "--mfu", "0.5"], "error: --tp=3: does not divide the model's 4 attention"),
            (["--model", "gpt2_small", "--tp", "5", "--batch", "8"], "error: --tp=5: must divide the model's 12"),
            ([str(measured), "--pp", "3", "--mfu", "0.5"], "error: --pp=3: does not divide the 2 sequences"),
            (["--model", "gpt2_small", "--pp", "13", "--batch", "8"],  # before the batch 13 micro-batches cannot split
             "error: --pp=13: leaves a pipeline stage without a layer: gpt2_small has 12 layers"),
            (["--model", "gpt2_small", "--seq-len", "5000", "--mfu", "0.5"], "error: --seq-len=5000: must be"),
            (["--model", "gpt2_small", "--seq-len", "0", "--mfu", "0.5"], "error: --seq-len=0: must be >= 1"),
            ([str(measured), "--seq-len", "64", "--mfu", "0.5"], f"error: --seq-len=64: differs from the 32 that "
                                                                 f"{measured} was measured at")):
        out = run_main(main, "train", *args, "--tokens", "1B", "--gpu", "H100", "--no-log", cwd=folder)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "parallel." not in out.stderr
        assert "micro_batches" not in out.stderr


def test_a_flops_budget_takes_the_predicted_or_a_default_mfu_and_says_which(tmp_path):
    """A FLOPs budget buys the same tokens whatever the MFU, which only says how long the FLOPs take: without --mfu
    it is the run's predicted one, else a default, each named; a budget in time or money still needs one."""
    none = hand_run(tmp_path / "none", training=False)
    predicted = hand_run(tmp_path / "predicted", 0.43, training=False, predict={"hardware": "A100"})

    def budget(*args):
        out = run_main(main, "budget", *args, "--gpu", "A100", "--json", "b.json", cwd=tmp_path)
        return out, (json.loads((tmp_path / "b.json").read_text()) if out.returncode == 0 else None)

    default, by_default = budget(none, "--flops", "1e21")
    assert default.returncode == 0, default.stderr
    assert "(a default: no --mfu, and none predicted in none)" in default.stdout.splitlines()[0]
    assumed, by_assumed = budget(none, "--flops", "1e21", "--mfu", "0.9")
    assert by_default["tokens"] == by_assumed["tokens"]
    out, by_prediction = budget(predicted, "--flops", "1e21")
    assert out.returncode == 0 and "MFU 43.0% (predicted for A100 from predicted)" in out.stdout, out.stderr
    assert by_prediction["budget"]["gpu_hours"] == pytest.approx(1e21 / (A100_BF16 * 0.43 * 3600))
    assert by_prediction["budget"]["mfu_source"] == "predicted for A100 from predicted"
    old = run_main(main, none, "--budget-flops", "1e21", "--gpu", "A100", cwd=tmp_path)
    assert old.returncode == 0 and old.stdout.splitlines()[0] == default.stdout.splitlines()[0], old.stderr
    hours, _ = budget(none, "--gpu-hours", "1000")
    assert hours.returncode == 2 and "error: --mfu: give --mfu" in hours.stderr
    assert len(hours.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("subcommand", ["train", "serve", "budget"])
def test_a_projection_says_where_it_was_logged(subcommand, tmp_path):
    """Its last line names the MLflow run, its experiment and the store, where that run is; a store that cannot be
    used is a warning naming it, the projection printed all the same. A budget (it printed no such line) records
    what it buys: for a forward-only run, 1e21 FLOPs over its forward's FLOPs a token."""
    from mlflow.tracking import MlflowClient

    args = {"train": lambda: [hand_run(tmp_path / "run"), "--tokens", "1B", "--mfu", "0.4"],
            "serve": lambda: ["--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "2"],
            "budget": lambda: [hand_run(tmp_path / "run", training=False), "--flops", "1e21", "--gpu", "A100"]
            }[subcommand]()
    out = run_main(main, subcommand, *args, "--store-dir", "store", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("MLflow: run ") and last.endswith(f" in experiment 'projections' ({store})"), last
    run = MlflowClient(tracking_uri=store).get_run(last.split()[2])
    assert run.data.tags["flopsweep.kind"] == "projection"
    if subcommand == "budget":
        assert run.data.metrics["budget/flops"] == 1e21
        assert run.data.metrics["budget/tokens/counted"] == pytest.approx(1e21 / (FORWARD / (B * T)))
    (tmp_path / "file").write_text("")
    out = run_main(main, subcommand, *args, "--store-dir", "file/store", cwd=tmp_path)
    assert out.returncode == 0 and "MLflow: run" not in out.stdout, out.stderr
    warning, = out.stderr.strip().splitlines()
    assert warning.startswith("flopsweep-project: warning: not logged to MLflow") and str(tmp_path / "file") in warning


def test_a_part_or_preset_that_does_not_exist_is_named_with_the_nearest_one(tmp_path):
    """``--gpu H101`` said 'has no bfloat16 peak in the table'; ``--model gpt2_smal`` gave Hydra's list cut at 200
    characters, the families' templates first."""
    train = ["train", "--tokens", "1B", "--mfu", "0.4", "--no-log"]
    gpu = run_main(main, *train, "--model", "gpt2_small", "--gpu", "H101", cwd=tmp_path)
    assert gpu.returncode == 2 and gpu.stderr.startswith("flopsweep-project train: error: --gpu='H101': is not in the "
                                                         "hardware table (did you mean H100?): give a part")
    far = run_main(main, *train, "--model", "gpt2_small", "--gpu", "XYZ9", cwd=tmp_path)  # none near: the table
    assert far.returncode == 2 and "hardware table (one of V100, A100 40GB, " in far.stderr
    serve = run_main(main, "serve", "--model", "gpt2_small", "--prompt-tokens", "16", "--new-tokens", "2", "--gpu",
                     "H101", "--no-log", cwd=tmp_path)
    assert serve.returncode == 2 and "(did you mean H100?)" in serve.stderr and serve.stderr.count("\n") == 1
    model = run_main(main, *train, "--model", "gpt2_smal", "--gpu", "H100", cwd=tmp_path)
    assert model.returncode == 2 and model.stderr == ("flopsweep-project train: error: --model='gpt2_smal': is not a "
                                                      "preset (did you mean gpt2_small?)\n")
    far = run_main(main, *train, "--model", "nope", "--gpu", "H100", cwd=tmp_path)  # where to see the 65, not them
    assert re.fullmatch(r"flopsweep-project train: error: --model='nope': is not a preset \(\d\d of them: flopsweep "
                        r"--help lists them\)\n", far.stderr)
    assert model.stdout == ""  # it said it was counting the preset first
    percent = run_main(main, "train", "--model", "gpt2_small", "--tokens", "1B", "--mfu", "40", "--no-log",
                       cwd=tmp_path)  # refused before the count, not after it
    assert percent.returncode == 2 and percent.stdout == "" and "--mfu=40.0: must be in (0, 1]" in percent.stderr


def test_tokens_with_a_batch_count_the_optimizers_step_once_a_step(tmp_path):
    """--tokens 1B with --batch 8 at 1,024 tokens: 1e9 / 8,192 steps, each with its AdamW step (it said 'the plan
    gives no tokens per step' and left the optimizer out though --batch gave them)."""
    import json

    common = ["train", "--model", "gpt2_small", "--tokens", "1B", "--gpu", "H100", "--mfu", "0.4", "--no-log"]
    batched = run_main(main, *common, "--batch", "8", "--json", "b.json", cwd=tmp_path)
    alone = run_main(main, *common, "--json", "a.json", cwd=tmp_path)
    assert batched.returncode == alone.returncode == 0, batched.stderr
    assert "gives no tokens per step" in alone.stdout and "gives no tokens per step" not in batched.stdout
    b, a = (json.loads((tmp_path / name).read_text()) for name in ("b.json", "a.json"))
    assert b["plan"]["steps"] == 1e9 / (8 * 1024) and a["plan"]["steps"] is None
    optimizer = b["model"]["optimizer_step"]
    assert optimizer > 0
    counted = {row["method"]: row["flops"] for row in b["rows"]}["counted"]
    alone_counted = {row["method"]: row["flops"] for row in a["rows"]}["counted"]
    assert counted == pytest.approx(alone_counted + 1e9 / (8 * 1024) * optimizer, rel=1e-12)


@pytest.mark.slow  # every preset built on meta: some 20 s
def test_a_budget_says_how_far_its_presets_build_is(tmp_path, monkeypatch):
    """'building every language-model preset ... (some seconds)' was then silent for 20 s: the build says how far it
    is, every few seconds (every time here), saying how many of them are language models (the table lists those)."""
    from flopsweep.cli.project import budget
    from flopsweep.config.schema import CONF_DIR

    monkeypatch.setattr(budget, "PACE_S", 0.0)
    monkeypatch.setenv("FLOPSWEEP_CACHE_DIR", str(tmp_path / "cache"))  # not read yet: built, and said
    out = run_main(main, "budget", "--model", "gpt2_small", "--gpu-hours", "10", "--gpu", "H100", "--mfu", "0.4",
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("  ... ") and "presets read" in line]
    models = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    assert len(lines) == len(models) and lines[0] == f"  ... 0 of {len(models)} model presets read, 0 of them " \
        "language models"
    found = [int(line.split(", ")[1].split()[0]) for line in lines]  # it said 35 of 65 read, and listed 39
    listed = sum(" needs " in line for line in out.stdout.splitlines())
    assert found == sorted(found) and listed - 1 <= found[-1] <= listed and listed < len(models)


def test_a_preset_that_cannot_be_projected_is_said_of_its_model_flag(tmp_path):
    """serve --model bert_base named workload='generate', a key the user never typed; train --model resnet50 named
    run='the preset, counted on meta'."""
    serve = run_main(main, "serve", "--model", "bert_base", "--prompt-tokens", "16", "--new-tokens", "2", "--gpu",
                     "H100", "--no-log", cwd=tmp_path)
    assert serve.returncode == 2 and serve.stderr.startswith("flopsweep-project serve: error: --model='bert_base': "
                                                             "needs a decoder with a KV cache")
    train = run_main(main, "train", "--model", "resnet50", "--inference", "--tokens", "1B", "--mfu", "0.4", "--no-log",
                     cwd=tmp_path)
    assert train.returncode == 2 and train.stderr == ("flopsweep-project train: error: --model='resnet50': has no "
                                                      "batch.seq_len: not a token model\n")


def test_a_serving_tables_costs_keep_three_figures_and_say_n_a_where_unpriced(tmp_path):
    """``0.09`` above ``0.0512`` in one column, and ``-`` where train's table says ``n/a``."""
    out = run_main(main, "serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "8", "--gpu",
                   "H100", "--price", "2.5", "--no-log", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("batch "))
    rows = [line.split() for line in lines[header + 1:] if line.strip() and line.split()[0].replace(",", "").isdigit()]
    assert rows and all(row[-1] == "n/a" for row in rows)  # kWh/M out: no --watts
    for cell in (row[-2] for row in rows):  # $/M out: three significant digits, trailing zeros kept
        digits = cell.replace(",", "").replace(".", "").lstrip("0")
        assert len(digits) == 3 or float(cell.replace(",", "")) >= 100, cell


@pytest.mark.slow  # a new interpreter builds every preset: some 12 s
def test_a_budget_without_transformers_says_which_presets_it_could_not_rank(tmp_path):
    """Without transformers the ranking was of our own presets alone (15 of 40), said as 'each language-model preset',
    and its answer changed once the extra was installed."""
    import subprocess
    import sys

    from tests.helpers import child_env

    (tmp_path / "hidden").mkdir()  # as where it is not installed: importing it fails
    (tmp_path / "hidden" / "transformers.py").write_text("raise ImportError('no transformers here')\n")
    out = subprocess.run([sys.executable, "-m", "flopsweep.cli.project", "budget", "--model", "gpt2_small",
                          "--gpu-hours", "10", "--gpu", "H100", "--mfu", "0.4", "--no-log"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300,
                         env={**child_env(), "PYTHONPATH": str(tmp_path / "hidden"),
                              "FLOPSWEEP_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    (note,) = [line for line in out.stdout.splitlines() if line.startswith("note: ")]
    assert re.fullmatch(r"note: \d+ Hugging Face presets left out \(their language models not ranked\): "
                        r"transformers is not installed \(.* -m pip install 'torch==.*\[hf\]'\)", note), note
    assert "mistral_7b" not in out.stdout and "llama3_8b" not in out.stdout  # as the note says
