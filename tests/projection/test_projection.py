"""Training-cost projection: the arithmetic of every way to state a plan and a budget, worked by hand, and the
three FLOPs totals against each other on a measured model."""

import pytest
from omegaconf import OmegaConf

from flopsweep.config.resolve import resolve
from flopsweep.core.errors import ConfigError
from flopsweep.run.job import run_job
from flopsweep.projection.budget import budget_flops, compute_optimal_fits, tokens_within
from flopsweep.projection.training import Hardware, Plan, PerToken, project, total_flops

# a round machine: 1 PFLOP/s peak at 50 % MFU = 1.8e18 FLOPs per GPU-hour; 8 GPUs, $2 per GPU-hour, 700 W
HW = Hardware("test-gpu", gpus=8, peak_flops=1e15, mfu=0.5, price_per_gpu_hour=2.0, watts_per_gpu=700.0)
ONE_B = PerToken("one_b", params=1_000_000_000, seq_len=2048, counted=7e9, counted_forward=2.5e9,
                 optimizer_step=1.2e10, attention=12 * 24 * 2048 * 2048.0)


def test_compute_optimal_plan_by_hand():
    plan = Plan.compute_optimal(ONE_B.params)
    assert plan.tokens == 20e9 and plan.steps is None
    rows = {r.method: r for r in project(ONE_B, plan, HW).rows}
    six = rows["6ND"]
    assert six.flops == pytest.approx(1.2e20)             # 6 * 1e9 * 2e10
    assert six.gpu_hours == pytest.approx(1.2e20 / 1.8e18)  # 66.67
    assert six.days == pytest.approx(1.2e20 / 1.8e18 / 8 / 24)
    assert six.cost == pytest.approx(2.0 * 1.2e20 / 1.8e18)
    assert six.energy_kwh == pytest.approx(0.7 * 1.2e20 / 1.8e18)
    # PaLM: 6N + 12*L*H*Q*T per token; here 12*L*H*Q*T = 12 * 24 * 2048 * 2048
    assert rows["6ND+attention"].flops == pytest.approx(2e10 * (6e9 + 12 * 24 * 2048 * 2048))
    # no tokens per step: counted is the per-token part only
    assert rows["counted"].flops == pytest.approx(2e10 * 7e9)


def test_steps_plan_adds_the_optimizer_per_step():
    plan = Plan.of_steps(1000, 512, 2048)
    assert plan.tokens == 1000 * 512 * 2048 and plan.steps == pytest.approx(1000)
    totals = total_flops(ONE_B, plan)
    assert totals["counted"] == pytest.approx(1000 * 512 * 2048 * 7e9 + 1000 * 1.2e10)
    assert totals["6ND"] == pytest.approx(6 * 1e9 * 1000 * 512 * 2048)


def test_recomputation_adds_one_forward():
    tokens = 1e12
    plain, again = (total_flops(ONE_B, Plan.of_tokens(tokens, recompute=r)) for r in (False, True))
    assert again["counted"] == pytest.approx(tokens * (7e9 + 2.5e9))
    assert again["6ND"] == pytest.approx(8 * 1e9 * tokens) and plain["6ND"] == pytest.approx(6 * 1e9 * tokens)
    assert again["6ND+attention"] == pytest.approx(tokens * (8e9 + 16 * 24 * 2048 * 2048))


@pytest.mark.parametrize("kind,value,flops", [
    ("flops", 3e21, 3e21),
    ("gpu_hours", 1000, 1000 * 1.8e18),
    ("days", 2, 2 * 24 * 8 * 1.8e18),      # wall-clock days on all 8 GPUs
    ("usd", 1000, 1000 / 2.0 * 1.8e18),    # $1000 at $2 per GPU-hour = 500 GPU-hours
])
def test_budget_in_every_unit(kind, value, flops):
    assert budget_flops(kind, value, HW) == pytest.approx(flops)


@pytest.mark.parametrize("plan", [Plan.compute_optimal(ONE_B.params), Plan.of_steps(1000, 512, 2048),
                                  Plan.of_tokens(3e11, recompute=True)], ids=["compute-optimal", "steps", "recompute"])
def test_the_budget_a_projection_costs_buys_back_its_tokens(plan):
    """The inverse undoes the projection: the GPU-hours, days and dollars each method's row costs, given back as a
    budget, train the plan's tokens (the optimizer step, per step, left out of both sides)."""
    per_token_only = Plan.of_tokens(plan.tokens, recompute=plan.recompute)
    for row in project(ONE_B, per_token_only, HW).rows:
        for kind, value in (("gpu_hours", row.gpu_hours), ("days", row.days), ("usd", row.cost)):
            tokens = tokens_within(budget_flops(kind, value, HW), ONE_B, plan.recompute)[row.method]
            assert tokens == pytest.approx(plan.tokens), (row.method, kind)


def test_tokens_within_a_budget_and_which_models_fit():
    tokens = tokens_within(1.2e20, ONE_B)
    assert tokens["6ND"] == pytest.approx(20e9)
    assert tokens["counted"] == pytest.approx(1.2e20 / 7e9)
    small = PerToken("small", 100_000_000, 1024, None, None, None, None)
    big = PerToken("big", 10_000_000_000, 1024, None, None, None, None)
    fits = compute_optimal_fits(1.2e20, [big, ONE_B, small])
    assert [f.model for f in fits] == ["small", "one_b", "big"]
    assert [f.fits for f in fits] == [True, False, False]  # one_b needs 1.2e20 plus its attention
    assert fits[0].flops == pytest.approx(6 * 1e8 * 2e9) and fits[0].share == pytest.approx(1.2e18 / 1.2e20)


def test_bad_input_names_the_key():
    with pytest.raises(ConfigError, match="^mfu=1.5"):
        Hardware("x", 1, 1e15, 1.5)
    with pytest.raises(ConfigError, match="^price"):
        budget_flops("usd", 100, Hardware("x", 1, 1e15, 0.4))
    with pytest.raises(ConfigError, match="^seq_len=4096: differs from the 2048"):
        project(ONE_B, Plan.of_steps(10, 8, 4096), HW)
    with pytest.raises(ConfigError, match="^budget='weeks': must be one of"):
        budget_flops("weeks", 1, HW)


def test_counted_equals_palm_less_what_does_no_matmul(compose_cfg):
    """A GPT with tied embeddings, measured on meta: per token, forward + backward matmuls are 6 x the matmul
    weights plus 12*L*d*T of attention. 6N counts every parameter, so the PaLM total exceeds the count by
    exactly 6 x (position embeddings + biases + norm parameters) per token: computed here from the shapes."""
    L, d, T, P = 2, 64, 32, 128
    cfg = compose_cfg("model=gpt2_small", f"model.n_layer={L}", f"model.d_model={d}", "model.n_head=4",
                      "model.vocab_size=1000", f"model.max_positions={P}", "batch.size=2", f"batch.seq_len={T}",
                      "device=meta", "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    cost = PerToken.from_result(result)
    no_matmul = P * d + L * (3 * d + d + 4 * d + d) + L * 4 * d + 2 * d  # positions, biases, 2 LNs/layer, final LN
    weights = 1000 * d + L * 12 * d * d                                    # tied head + qkv, out, up, down
    assert cost.params == weights + no_matmul
    assert cost.counted == 6 * weights + 12 * L * d * T
    D = 1e9
    totals = total_flops(cost, Plan.of_tokens(D))
    assert totals["6ND+attention"] - totals["counted"] == pytest.approx(6 * D * no_matmul, rel=1e-9)
    assert totals["6ND"] - totals["counted"] == pytest.approx(6 * D * no_matmul - D * 12 * L * d * T, rel=1e-9)


def test_an_inference_run_projects_the_tokens_it_processes(compose_cfg):
    """workload=inference counts a forward pass only: the projection is forward × tokens, 2ND and 2N + 4·L·d·T per
    token (a third of training's closed forms), the same tokens trained on would cost the training figures, and
    what only training has (recomputation, compute-optimal data) is refused."""
    L, d, T = 2, 64, 32
    model = ["model=gpt2_small", f"model.n_layer={L}", f"model.d_model={d}", "model.n_head=4", "model.vocab_size=1000",
             "batch.size=2", f"batch.seq_len={T}", "device=meta", "tracking=none"]
    measured = {}
    for mode in ("full", "inference"):
        cfg = compose_cfg(*model, f"train={mode}")
        result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
        assert result.status == "ok", result.error
        measured[mode] = (result, PerToken.from_result(result))
    (inference, cost), (_, train) = measured["inference"], measured["full"]
    assert not cost.training and train.training and cost.params == train.params
    D = 1e9
    totals = total_flops(cost, Plan.of_tokens(D))
    assert set(totals) == {"counted", "2ND", "2ND+attention"}
    assert totals["counted"] == pytest.approx(D * inference.metrics["flops/forward"] / (2 * T), rel=1e-12)
    assert totals["counted"] == pytest.approx(D * train.counted_forward, rel=1e-12)  # the same forward as training's
    assert totals["2ND"] == 2 * cost.params * D
    assert totals["2ND+attention"] == pytest.approx(totals["2ND"] + D * 4 * L * d * T, rel=1e-12)
    trained = total_flops(train, Plan.of_tokens(D))
    assert trained["6ND"] == 3 * totals["2ND"]
    assert trained["6ND+attention"] == pytest.approx(3 * totals["2ND+attention"])
    rows = project(cost, Plan.of_steps(10, 2, T), HW).rows
    assert [r.method for r in rows] == ["counted", "2ND", "2ND+attention"]
    assert rows[0].flops == pytest.approx(10 * inference.metrics["flops/forward"], rel=1e-12)  # no optimizer step
    assert tokens_within(totals["2ND"], cost)["2ND"] == pytest.approx(D)
    with pytest.raises(ConfigError, match="recompute"):
        total_flops(cost, Plan.of_tokens(D, recompute=True))


def test_a_generation_is_no_run_to_project_for_training_or_inference_tokens(compose_cfg):
    """A workload=generate run was taken as forward only (its prefill, 7% off the same model's inference count) under
    the note that the model was measured forward only: serve is what projects it."""
    cfg = compose_cfg("model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=4", "batch.seq_len=32",
                      "workload=generate", "generate.new_tokens=4", "device=meta", "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    with pytest.raises(ConfigError, match="is a generation .* flopsweep-project serve projects") as err:
        PerToken.from_result(result, "RUN")
    assert err.value.key == "run"


def test_project_command_projects_inference_and_refuses_training_plans_for_it(tmp_path):
    from flopsweep.cli.project import main
    from tests.helpers import run_main

    def project(subcommand, *args):
        return run_main(main, subcommand, "--model", "gpt2_small", "--seq-len", "64", *args, "--mfu", "0.5",
                        *(["--no-log"] if subcommand == "train" else []), cwd=tmp_path)

    out = project("budget", "--inference", "--gpu-hours", "1")
    assert out.returncode == 0, out.stderr
    assert "processes (forward only), by method:" in out.stdout and "2ND+attention" in out.stdout
    assert "compute-optimal" not in out.stdout  # training data per parameter means nothing for inference
    out = project("train", "--inference", "--tokens", "1T", "--dtype", "fp8")  # every dtype of the peak table, fp8 too
    assert out.returncode == 0 and "1978.9 TFLOP/s peak" in out.stdout, out.stderr
    for args, message in ((["--inference", "--compute-optimal"], "--compute-optimal: is a training plan"),
                          (["--inference", "--tokens", "1T", "--recompute"], "--recompute: "),):
        out = project("train", *args)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = run_main(main, "train", "some_folder", "--inference", "--tokens", "1T", "--mfu", "0.5", "--no-log",
                   cwd=tmp_path)
    assert out.returncode == 2 and "--inference: goes with --model" in out.stderr, out.stderr


def test_project_command_from_a_job_folder_logs_a_linked_run(tmp_path):
    """A real job (tiny GPT on meta, logged to a local store), then ``flopsweep-project`` on its folder: the
    printed totals follow from the job's metrics, the JSON is written, and the projection's MLflow run is
    tagged with the job's run."""
    import json

    from mlflow.tracking import MlflowClient

    from flopsweep.cli.project import main
    from tests.helpers import run_app, run_main

    job = run_app("model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=4",
                  "model.vocab_size=1000", "batch.size=2", "batch.seq_len=32", "device=meta", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    folder = next(tmp_path.glob("outputs/runs/*/*/result.json")).parent
    result = json.loads((folder / "result.json").read_text())
    out = run_main(main, "train", str(folder), "--steps", "1K", "--batch", "8", "--gpu", "A100", "--gpus", "4",
                   "--mfu", "0.5", "--price", "1.5", "--json", "p.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    m = result["metrics"]
    tokens = 1000 * 8 * 32
    counted = tokens * (m["flops/forward"] + m["flops/backward"]) / (2 * 32) + 1000 * m["flops/optimizer"]
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["counted"]["flops"] == pytest.approx(counted)
    assert rows["6ND"]["flops"] == pytest.approx(6 * m["size/params"] * tokens)
    assert rows["counted"]["gpu_hours"] == pytest.approx(counted / (312e12 * 0.5 * 3600))  # A100 bf16 peak
    assert "MLflow: run " in out.stdout and "6ND+attention" in out.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("projections").experiment_id])
    assert len(runs) == 1
    assert runs[0].data.tags["flopsweep.measured_run"] == result["info"]["tracking"]["run_id"]
    assert runs[0].data.metrics["projection/counted/flops"] == pytest.approx(counted)
    assert runs[0].data.metrics["projection/6ND/cost"] == pytest.approx(rows["6ND"]["gpu_hours"] * 1.5)
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert artifacts == {"projection.json", "projection.txt"}
    assert not (tmp_path / "mlruns").exists()  # with the local store's artifacts, not in ./mlruns


def test_project_command_rejects_bad_input_in_one_line(tmp_path):
    """The first refusal in a new interpreter (the process contract: exit status 2, one line on stderr), the others
    through the same ``main`` in this one."""
    import subprocess
    import sys

    from flopsweep.cli.project import main
    from tests.helpers import run_main

    for args, message in ((["--model", "gpt2_small", "--tokens", "1T", "--mfu", "0.4", "--tokens", "x"], "amount"),
                          (["--model", "no_such_model", "--tokens", "1T", "--mfu", "0.4"], "model='no_such_model'"),
                          (["--model", "gpt2_small", "--tokens", "1T", "--compute-optimal", "--mfu", "0.4"], "plan="),
                          (["--model", "gpt2_small", "--tokens", "1T", "--mfu", "0.4", "--gpu", "T4"], "gpu='T4'"),
                          (["--model", "gpt2_small", "--steps", "100", "--mfu", "0.4"], "batch: --steps needs"),
                          (["--model", "gpt2_small", "--tokens", "1T", "--mfu", "0.4", "--json", "no/such/dir/p.json"],
                           "json='no/such/dir/p.json': cannot be written"),
                          (["--model", "gpt2_small", "--tokens", "0", "--mfu", "0.4"], "tokens=0.0: must be > 0"),
                          (["--model", "gpt2_small", "--tokens", "inf", "--mfu", "0.4"], "tokens=inf: must be"),
                          (["--model", "gpt2_small", "--steps", "1.5", "--batch", "8", "--mfu", "0.4"],
                           "steps=1.5: must be a whole number"),
                          (["--model", "gpt2_small", "--tokens", "1T", "--mfu", "0.4", "--gpus", "0"], "gpus=0"),
                          (["--model", "gpt2_small", "--tokens", "1T", "--mfu", "0.4", "--dtype", "bogus"],
                           "dtype='bogus': must be one of")):
        if message == "amount":
            out = subprocess.run([sys.executable, "-m", "flopsweep.cli.project", "train", *args, "--no-log"],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=300)
        else:
            out = run_main(main, "train", *args, "--no-log", cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout)
        assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_a_budgets_preset_rows_say_a_far_miss_as_a_multiple():
    """``2141329.2% of the budget`` for Llama 3.1 405B under 1e21 FLOPs: from ten budgets on, a multiple with commas;
    tokens a parameter as any whole figure (``0.0`` read as if the budget bought none)."""
    from flopsweep.projection.budget import budget_report

    small = PerToken("small", 100_000_000, 1024, None, None, None, None)
    huge = PerToken("huge", 400_000_000_000, 1024, None, None, None, None)
    text = budget_report(1.2e20, "flops", 1.2e20, ONE_B, HW, [small, huge])["text"]
    rows = {line.split()[0]: " ".join(line.split()) for line in text.splitlines() if " needs " in line}
    # small: 6 · 1e8 · 2e9 = 1.2e18, 1% of the budget, which buys it 1.2e20 / 6e8 = 2e11 tokens, 2,000 a parameter
    assert "needs 1.200e+18 FLOPs 1.0% of the budget" in rows["small"] and " 2,000 tokens/param" in rows["small"]
    # huge: 6 · 4e11 · 8e12 = 1.92e25, 160,000 budgets; the budget buys 5e7 tokens, 1.25e-4 a parameter
    assert "needs 1.920e+25 FLOPs 160,000× the budget" in rows["huge"] and " 0.000125 tokens/param" in rows["huge"]
    assert "N 0.10B" in rows["small"] and "N 400.00B" in rows["huge"]
    tiny = budget_report(1e23, "flops", 1e23, ONE_B, HW, [small])["text"]
    assert "needs 1.200e+18 FLOPs 0.0012% of the budget" in " ".join(tiny.split())  # not 0.0%, as a toy's MFU
