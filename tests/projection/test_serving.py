"""Serving: the roofline over a counted generation (flopsweep-project serve), and the hardware table."""

import json

import pytest

from flopsweep.cli.project import main
from flopsweep.core.comm import collective_seconds
from flopsweep.core.hardware import accelerator, names, peak_flops
from flopsweep.projection.serving import Generation, Serving, at_batch, largest_batch, plan
from tests.helpers import run_app, run_main

H100 = accelerator("H100")
# an 8B-class model counted by hand: 16 GB of bf16 weights, 2 FLOPs a weight a token, 128 KiB of cache a token
GEN = Generation("hand", prompt=4096, new_tokens=256, prefill_flops=2 * 8e9 * 4096, decode_first_flops=2 * 8e9,
                 decode_last_flops=2 * 8e9, kv_bytes_per_token=131072, weights_bytes=16e9, weights_read_bytes=16e9,
                 dtype="bfloat16")


def test_batch_one_decode_is_memory_bound_and_a_long_prefill_compute_bound_on_an_h100():
    row = at_batch(GEN, Serving(H100, "bfloat16"), 1)
    assert row.decode_bound == "memory" and row.prefill_bound == "compute"
    # a step reads the weights and the cache: at least 16 GB at 3.35 TB/s
    assert row.tpot_s >= 16e9 / 3.35e12
    assert row.ttft_s == pytest.approx(2 * 8e9 * 4096 / 989.4e12)


def test_decode_turns_compute_bound_at_a_large_enough_batch():
    serving = Serving(H100, "bfloat16", memory_share=1.0)
    light = Generation(**{**GEN.__dict__, "kv_bytes_per_token": 1.0})  # a cache too small to matter
    # the weights cost 16e9 / 3.35e12 s to read and 2*8e9*b / 989.4e12 s to multiply: equal near b = 295
    assert at_batch(light, serving, 280).decode_bound == "memory"
    assert at_batch(light, serving, 320).decode_bound == "compute"


def test_the_largest_batch_leaves_room_for_its_kv_cache():
    serving = Serving(H100, "bfloat16")
    b = largest_batch(GEN, serving)
    cache = GEN.kv_bytes_per_token * (4096 + 255)
    assert 16e9 + b * cache <= 0.9 * 80e9 < 16e9 + (b + 1) * cache
    assert largest_batch(GEN, Serving(H100, "bfloat16", tp=2)) > 2 * b  # the weights split too


def test_a_fleet_is_replicas_of_tp_gpus_and_a_million_tokens_cost_their_gpu_hours():
    row = at_batch(GEN, Serving(H100, "bfloat16", tp=4, gpus=64), 8)
    assert row.output_tokens_per_s_per_gpu == pytest.approx(8 * 256 / row.request_s / 4)
    decode_s = row.request_s - row.ttft_s  # the decode steps of 4 GPUs, for 8 x 256 tokens
    assert row.gpu_hours_per_m_output == pytest.approx(4 * decode_s / 3600 * 1e6 / (8 * 256))


def test_throughput_grows_with_the_batch_and_the_plan_stops_at_the_largest():
    p = plan(GEN, Serving(H100, "bfloat16"))
    assert [r.batch for r in p.rows][-1] == p.largest
    speeds = [r.output_tokens_per_s_per_gpu for r in p.rows]
    assert speeds == sorted(speeds) and len(p.rows) <= 12


def test_a_plan_of_many_batches_keeps_batch_1_and_the_largest():
    """Twelve rows at most: the smallest batches were the ones left out, batch 1 (a lone request's latency) first."""
    from flopsweep.projection.serving import batches

    assert batches(3316) == [1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3316]  # 2 left out, not 1
    assert batches(300) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300] and batches(1) == [1]


def test_the_hardware_table_matches_device_names():
    assert accelerator("NVIDIA H100 80GB HBM3").name == "H100"
    assert accelerator("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert accelerator("NVIDIA A100-SXM4-40GB").memory_gb == 40     # not the A10G, whose name it contains
    assert accelerator("NVIDIA L40S").name == "L40S" and accelerator("NVIDIA GB200").name == "GB200"
    assert peak_flops("NVIDIA H200", "bfloat16") == 989.4e12 and accelerator("H200").bandwidth_gbs == 4800
    assert accelerator("NVIDIA GeForce GT 710") is None
    # a name that holds a part's without being it is no part (H1000 was taken for an H100, an RTX A1000 for an A100)
    for other in ("H1000", "A1000", "NVIDIA RTX A1000", "B2000", "MI3000X"):
        assert accelerator(other) is None, other
    assert accelerator("NVIDIA A100-SXM4-80GB").name == "A100" and accelerator("Tesla V100-SXM2-16GB").name == "V100"
    # 2025-26 parts: a B300 (its name holds no earlier part's), AMD's CDNA 4 pair (fp8 twice bf16), each with a network
    assert accelerator("NVIDIA B300 SXM6 AC").name == "B300" and accelerator("B300").memory_gb == 288
    for name in ("AMD Instinct MI355X", "AMD Instinct MI350X", "NVIDIA B300 SXM6 AC"):
        part = accelerator(name)
        assert part.peak("fp8") == pytest.approx(2 * part.peak("bfloat16"), rel=1e-4) and part.interconnect, name
    assert accelerator("MI355X").peak("bfloat16") > accelerator("MI350X").peak("bfloat16") > \
        accelerator("MI325X").peak("bfloat16")
    # fp4 where the vendor gives it: twice fp8 on Blackwell and CDNA 4 (dense), none on Hopper
    for name in ("B200", "GB200", "MI355X", "MI350X", "RTX PRO 6000 Blackwell"):
        assert accelerator(name).peak("fp4") == pytest.approx(2 * accelerator(name).peak("fp8"), rel=1e-4), name
    assert "fp4" not in accelerator("H100").peak_tflops
    # Blackwell Ultra's rack part: fp4 three times fp8 (1.5x Blackwell's), its name holding the B300's
    assert accelerator("NVIDIA GB300").name == "GB300" and accelerator("GB300").peak("fp4") == 3 * 5000e12
    assert accelerator("GB300").interconnect.domain == 72 and accelerator("NVIDIA B300 SXM6 AC").name == "B300"


def test_serving_a_measured_generation_run(tmp_path):
    out = run_app("model=gpt2_small", "model.n_layer=2", "batch.seq_len=128", "workload=generate",
                  "generate.new_tokens=32", "device=meta", "tracking=none", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job = next(tmp_path.glob("outputs/runs/*/*"))
    served = run_main(main, "serve", str(job), "--gpu", "L4", "--price", "0.8", "--json", "plan.json",
                      cwd=tmp_path)
    assert served.returncode == 0, served.stderr
    assert "largest batch" in served.stdout and "L4" in served.stdout
    payload = json.loads((tmp_path / "plan.json").read_text())
    assert payload["generation"]["new_tokens"] == 32 and payload["rows"][0]["usd_per_m_output"] > 0
    # a batch over the largest: its row shown as asked, and a warning (it was a row like any other)
    over = payload["largest_batch"] + 1
    served = run_main(main, "serve", str(job), "--gpu", "L4", "--batch", str(over), "--no-log", cwd=tmp_path)
    assert served.returncode == 0 and served.stderr == (
        f"flopsweep-project: warning: --batch={over:,} does not fit: its weights and KV cache need more than 90% of "
        f"the replica's memory, which holds {over - 1:,} sequences\n"), served.stderr
    fits = run_main(main, "serve", str(job), "--gpu", "L4", "--batch", str(over - 1), "--no-log", cwd=tmp_path)
    assert fits.returncode == 0 and not fits.stderr, fits.stderr
    # a run is served as it was measured: another prompt was ignored without a word
    other = run_main(main, "serve", str(job), "--gpu", "L4", "--prompt-tokens", "10", "--no-log", cwd=tmp_path)
    assert other.returncode == 2 and other.stderr == (f"flopsweep-project serve: error: --prompt-tokens=10: differs "
                                                      f"from the 128 that {job} was measured at: measure it at "
                                                      "batch.seq_len=10\n"), other.stderr
    same = run_main(main, "serve", str(job), "--gpu", "L4", "--new-tokens", "32", "--no-log", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    # figures given over the part's: said so, not under its datasheet's name alone
    given = run_main(main, "serve", str(job), "--gpu", "L4", "--bandwidth", "1000", "--gpu-memory", "24", "--no-log",
                     cwd=tmp_path)
    assert "1,000 GB/s, 24 GiB (25.8 GB); --bandwidth, --gpu-memory as given; else NVIDIA L4" in given.stdout, \
        given.stdout


@pytest.mark.parametrize("args,key", [
    (["serve", "--model", "gpt2_small", "--new-tokens", "8"], "prompt-tokens"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--gpu", "RTX 9999"], "gpu"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--gpu", "V100",
      "--dtype", "bfloat16"], "dtype"),                     # a V100 has no bf16 unit
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8",
      "--memory-efficiency", "1.5"], "memory-efficiency"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--tp", "2", "--gpus", "3"],
     "gpus"),                                               # replicas of 2 GPUs each
    # as strictly as the training projection: tp at least 1 (0 was taken as 1) and dividing the heads, no negative
    # price or power
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--tp", "0"], "tp=0: must be"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--tp", "5"],
     "tp=5: does not divide the model's 12 attention heads"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--price", "-1"],
     "argument --price: '-1' is negative"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--watts", "-700"], "watts"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "1.5K", "--new-tokens", "2.5"],  # amounts, as train's
     "new-tokens=2.5: must be a whole number >= 1"),
    (["serve", "--model", "gpt2_small", "--prompt-tokens", "8", "--new-tokens", "8", "--gpus", "0"],
     "gpus=0: must be a whole multiple (>= 1) of the 1 GPUs"),
    (["budget", "--model", "gpt2_small", "--gpu-hours", "100", "--mfu", "0.4", "--tokens-per-param", "1e9"],
     "tokens-per-param=1000000000.0: must be > 0 and at most 100,000"),
    (["budget", "--model", "gpt2_small", "--gpu-hours", "100", "--mfu", "0.4", "--inference-tokens", "-5"],
     "argument --inference-tokens: '-5' is negative"),
    (["budget", "--model", "gpt2_small", "--gpu-hours", "100", "--mfu", "0.4", "--peak-tflops", "-1"], "peak-tflops"),
    (["train", "--model", "gpt2_small", "--tokens", "1e9", "--mfu", "0.4", "--hardware", "nowhere.yaml",
      "--no-log"], "hardware='nowhere.yaml': cannot be read"),
])
def test_bad_serving_input_is_one_line_naming_it(args, key, tmp_path):
    out = run_main(main, *args, cwd=tmp_path)
    assert out.returncode == 2 and key in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_your_own_part_from_a_yaml_file(tmp_path):
    (tmp_path / "gpu.yaml").write_text("name: my-asic\npeak_tflops: {bfloat16: 400}\nmemory_gb: 64\n"
                                       "bandwidth_gbs: 2000\n")
    out = run_main(main, "serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "8",
                   "--hardware", "gpu.yaml", "--batch", "4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "my-asic (400 TFLOP/s bfloat16, 2,000 GB/s, 59.6 GiB (64 GB)" in out.stdout
    assert "- cost and energy: n/a without --price (dollars a GPU-hour) and --watts (a GPU's power)." in out.stdout
    (tmp_path / "bad.yaml").write_text("name: x\npeak_tflops: {bfloat16: 400}\nmemory_gb: 64\nbandwidth: 2\n")
    bad = run_main(main, "serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "8",
                   "--hardware", "bad.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "hardware.bandwidth" in bad.stderr
    # a misspelt field is named as misspelt, with the field meant (it was 'hardware.bandwidth_gbs: missing')
    assert "hardware.bandwidth: unknown field in bad.yaml (did you mean bandwidth_gbs?)" in bad.stderr, bad.stderr
    for field, said in (("peak_tflops: {bfloat16: -5}", "peak_tflops.bfloat16=-5: must be a number > 0 in bad.yaml"),
                        ("peak_tflops: {bf16: 5}", "peak_tflops.bf16=5: is not a dtype ("),
                        ("bandwidth_gbs: fast", "bandwidth_gbs='fast': must be a number > 0 in bad.yaml")):
        fields = {"name": "x", "peak_tflops": "{bfloat16: 400}", "memory_gb": "64", "bandwidth_gbs": "2000",
                  **dict([field.split(": ", 1)])}  # each value's error names the file, as a field's did
        (tmp_path / "bad.yaml").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
        bad = run_main(main, "serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "8",
                       "--hardware", "bad.yaml", cwd=tmp_path)
        assert bad.returncode == 2 and said in bad.stderr and bad.stderr.rstrip().endswith("bad.yaml"), bad.stderr
    # every mode that takes a part takes it from the file: its name, and its peak for a training run's hours
    train = run_main(main, "train", "--model", "gpt2_small", "--tokens", "1e12", "--mfu", "0.5", "--hardware",
                     "gpu.yaml", "--json", "train.json", "--no-log", cwd=tmp_path)
    assert train.returncode == 0 and "1 × my-asic at 400 TFLOP/s peak" in train.stdout, train.stderr
    rows = {r["method"]: r for r in json.loads((tmp_path / "train.json").read_text())["rows"]}
    assert rows["counted"]["gpu_hours"] == pytest.approx(rows["counted"]["flops"] / (400e12 * 0.5 * 3600))


def test_your_own_part_brings_its_interconnect_checked_as_the_shipped_tables_parts_are(tmp_path):
    """Issue 29 item 7: the table is shipped data read by the same checks as a user's file, so a user's part may give
    its interconnect too (the table's latency and efficiency where its links give none): ``serve --tp`` then waits on
    its all-reduces over that link; a bad interconnect field is one line naming it."""
    part = ("name: my-asic\npeak_tflops: {bfloat16: 400}\nmemory_gb: 64\nbandwidth_gbs: 2000\n"
            "interconnect:\n  scale_up: {bandwidth_gbs: %s, source: my board}\n  domain: %s\n"
            "  scale_out: {bandwidth_gbs: 25, source: my network}\n")
    serve = ["serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "8", "--hardware", "gpu.yaml",
             "--batch", "4", "--tp", "2", "--json", "out.json", "--no-log"]
    tpot = {}
    for gbs in (50, 500):
        (tmp_path / "gpu.yaml").write_text(part % (gbs, 8))
        out = run_main(main, *serve, cwd=tmp_path)
        assert out.returncode == 0 and "all-reduces left out" not in out.stdout, out.stdout + out.stderr
        tpot[gbs] = json.loads((tmp_path / "out.json").read_text())["rows"][0]["tpot_all_reduce_s"]
    assert tpot[50] > tpot[500] > 0  # a slower link waits longer
    (tmp_path / "gpu.yaml").write_text(part % (50, 0))
    bad = run_main(main, *serve, cwd=tmp_path)
    assert bad.returncode == 2 and "hardware.interconnect.domain=0" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # 8 s: a budget ranks every preset, counted
def test_a_budget_takes_its_part_from_a_yaml_file(tmp_path):
    (tmp_path / "gpu.yaml").write_text("name: my-asic\npeak_tflops: {bfloat16: 400}\nmemory_gb: 64\n"
                                       "bandwidth_gbs: 2000\n")
    budget = run_main(main, "budget", "--model", "gpt2_small", "--gpu-hours", "100", "--mfu", "0.5", "--hardware",
                      "gpu.yaml", cwd=tmp_path)
    assert budget.returncode == 0 and f"= {100 * 3600 * 400e12 * 0.5:.3e} FLOPs on 1 × my-asic" in budget.stdout, \
        budget.stdout


def test_a_serving_plan_is_logged_to_mlflow_with_its_figures_over_the_batch_and_its_plot(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.helpers import local_store

    db = local_store(tmp_path / "outputs")
    out = run_main(main, "serve", "--model", "gpt2_small", "--prompt-tokens", "64", "--new-tokens", "16",
                   "--gpu", "H100", "--price", "2", cwd=tmp_path)
    assert out.returncode == 0 and "MLflow: run " in out.stdout, out.stderr
    run_id = out.stdout.split("MLflow: run ")[1].split()[0]
    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(run_id)
    assert run.data.tags["flopsweep.kind"] == "projection" and run.data.params["hardware.name"] == "H100"
    assert "None" not in run.data.params.values() and "" not in run.data.tags.values()  # no --watts, no run
    history = client.get_metric_history(run_id, "serving/output_tokens_per_s_per_gpu")
    largest = int(run.data.metrics["serving/largest_batch"])
    assert sorted(m.step for m in history)[-1] == largest and len(history) >= 2
    png = client.download_artifacts(run_id, "serving.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_decode_step_moves_the_weights_and_the_cache_it_attends_to():
    # one decode step (2 new tokens), memory-bound: its context is the prompt and the new token, 4097 tokens of cache
    # read or written, beside the 16 GB of weights
    one = Generation(**{**GEN.__dict__, "new_tokens": 2})
    row = at_batch(one, Serving(H100, "bfloat16"), 1)
    assert row.tpot_s == pytest.approx((16e9 + 131072 * 4097) / 3350e9)


def test_a_gqa_cache_on_more_gpus_than_kv_heads_is_repeated_not_split():
    """8 KV heads on tp=16: a GPU holds one head's cache, an eighth of it (not a sixteenth); on tp=8 the heads split
    evenly, as a cache of unknown heads does."""
    gqa = Generation(**{**GEN.__dict__, "kv_heads": 8})
    wide = Serving(H100, "bfloat16", tp=16)
    b = largest_batch(gqa, wide)
    cache = GEN.kv_bytes_per_token * (4096 + 255)
    assert 16e9 / 16 + b * cache / 8 <= 0.9 * 80e9 < 16e9 / 16 + (b + 1) * cache / 8
    assert b < largest_batch(GEN, wide)  # what an even split over 16 GPUs said
    assert largest_batch(gqa, Serving(H100, "bfloat16", tp=8)) == largest_batch(GEN, Serving(H100, "bfloat16", tp=8))
    # one memory-bound decode step: a GPU reads its sixteenth of the weights and its eighth of 4097 tokens' cache
    one = Generation(**{**gqa.__dict__, "new_tokens": 2})
    assert at_batch(one, wide, 1).tpot_s == pytest.approx((16e9 / 16 + 131072 * 4097 / 8) / 3350e9)


def test_a_presets_kv_heads_come_from_its_config(tmp_path):
    """Llama 3.1 8B (32 heads, 8 KV heads) served on 16 H100s: the plan knows its 8 KV heads and says what a GPU
    holds; its largest batch fits the weights' sixteenth and the cache's eighth in 90 % of a GPU."""
    out = run_main(main, "serve", "--model", "llama3_1_8b", "--prompt-tokens", "64", "--new-tokens", "8",
                   "--gpu", "H100", "--tp", "16", "--json", "plan.json", "--no-log", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "8 KV heads on tp=16: each GPU holds 0.125 of the cache" in out.stdout
    payload = json.loads((tmp_path / "plan.json").read_text())
    gen, b = payload["generation"], payload["largest_batch"]
    assert gen["kv_heads"] == 8
    per_sequence = gen["kv_bytes_per_token"] * (64 + 7)
    assert gen["weights_bytes"] / 16 + b * per_sequence / 8 <= 0.9 * 80e9 < gen["weights_bytes"] / 16 + (b + 1) * \
        per_sequence / 8
    from flopsweep.core.shape import from_config

    assert from_config({"family": "decoder", "n_head": 32, "n_kv_head": None}).cache_heads == 32
    assert from_config({"family": "hf", "fields": {"num_attention_heads": 128, "kv_lora_rank": 512}}).cache_heads == 1


def test_tensor_parallel_decode_waits_on_two_all_reduces_a_layer_latency_bound_at_batch_one():
    """Llama-3.1-8B-like (32 layers, width 4,096) on 4 H100s of one NVSwitch node: each decode step all-reduces the
    attention's and the MLP's output of every layer, 2 x 32 ring all-reduces of batch x 4,096 bf16 activations, on
    the critical path: at batch 1 each is its latency (8 KiB moved), at a prefill of 4,096 tokens each moves 32 MiB."""
    unshaped = Generation(**{**GEN.__dict__, "new_tokens": 2})
    shaped = Generation(**{**unshaped.__dict__, "width": 4096, "layers": 32})
    link = H100.interconnect.scale_up
    ring = lambda nbytes: collective_seconds("all_reduce", nbytes, 4, link)  # noqa: E731 (Vidur's: test_comm.py)
    split, alone = (at_batch(gen, Serving(H100, "bfloat16", tp=4), 1) for gen in (shaped, unshaped))
    assert split.tpot_all_reduce_s == pytest.approx(64 * ring(4096 * 2))
    assert split.tpot_all_reduce_s == pytest.approx(64 * link.latency_s, rel=0.05)  # latency-bound
    assert split.tpot_s == pytest.approx(alone.tpot_s + split.tpot_all_reduce_s)
    assert split.ttft_s == pytest.approx(alone.ttft_s + 64 * ring(4096 * 4096 * 2))
    # no tp, no all-reduce; a model whose shape is not known: left out, and the plan says so
    assert at_batch(shaped, Serving(H100, "bfloat16"), 1).tpot_all_reduce_s == 0 == alone.tpot_all_reduce_s
    assert "tensor-parallel all-reduces left out (the model's shape not known)" in \
        plan(GEN, Serving(H100, "bfloat16", tp=4), 1).table()


def test_tensor_parallelism_beyond_a_node_all_reduces_over_the_slower_network():
    shaped = Generation(**{**GEN.__dict__, "width": 4096, "layers": 32, "new_tokens": 2})
    within, across = (at_batch(shaped, Serving(H100, "bfloat16", tp=tp), 64).tpot_all_reduce_s for tp in (8, 16))
    assert across > 2 * within  # 16 GPUs span two 8-GPU NVSwitch domains: InfiniBand, an eighth of NVLink's bandwidth
    table = plan(shaped, Serving(H100, "bfloat16", tp=16), 64).table()
    assert "scale-out (tp spans scale-up domains)" in table and "all-reduce/TPOT" in table


def test_a_presets_serving_plan_on_tp_all_reduces_its_own_layers(tmp_path):
    out = run_main(main, "serve", "--model", "llama3_1_8b", "--prompt-tokens", "64", "--new-tokens", "8",
                   "--gpu", "H100", "--tp", "2", "--batch", "1", "--json", "plan.json", "--no-log", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 a layer x 32 layers of 4,096-wide activations over tp=2, scale-up" in out.stdout
    row = json.loads((tmp_path / "plan.json").read_text())["rows"][0]
    assert 0 < row["tpot_all_reduce_s"] < row["tpot_s"]


@pytest.mark.slow
def test_a_mixture_of_experts_decode_step_reads_the_experts_its_batch_reaches(tmp_path):
    """Mixtral 8x7B counted on meta, served on one H200 (141 GB holds its 93 GB): its 32 layers x 8 experts x 3
    matrices of 4,096 x 14,336 in bf16 are routed weights; a memory-bound decode step at batch b reads the other weights
    and 8(1 - (6/8)^b) of the 8 experts a layer: about 25.5 GB at batch 1
    (every expert, as it was: 93 GB), 7.2 at batch 8, all 8 by batch 64."""
    out = run_main(main, "serve", "--model", "mixtral_8x7b", "--prompt-tokens", "64", "--new-tokens", "2",
                   "--gpu", "H200", "--json", "plan.json", "--no-log", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "plan.json").read_text())
    gen = payload["generation"]
    routed = 32 * 8 * 3 * 4096 * 14336 * 2
    assert gen["routed_bytes"] == routed and (gen["experts"], gen["experts_per_token"]) == (8, 2)
    h200 = accelerator("H200")
    for batch, reached in ((1, 2.0), (8, 8 * (1 - 0.75 ** 8)), (64, 8.0)):
        # the rest, less the embedding table but the row the counted step (batch 1) looked up (a batch's own rows,
        # b x 8 KiB, are left out), and the rotary embedding's 64 frequencies
        others = gen["weights_bytes"] - routed - 32000 * 4096 * 2 + 4096 * 2 + 64 * 4
        read = others + routed * reached / 8
        assert batch != 1 or read == pytest.approx(25.5e9, rel=2e-3)  # serving.md's figure
        row = at_batch(Generation(**gen), Serving(h200, "bfloat16"), batch)
        assert row.decode_bound == "memory"
        assert row.tpot_s == pytest.approx((read + batch * gen["kv_bytes_per_token"] * 65) / h200.bandwidth, rel=1e-6)
    assert 25.5e9 < gen["weights_bytes"] - routed * 6 / 8 < 26e9
    assert "8 routed experts a layer, 2 a token, 84 GiB of them" in out.stdout  # 32 x 8 x 3 x 4096 x 14336 x 2 B
    skewed = run_main(main, "serve", "--model", "mixtral_8x7b", "--prompt-tokens", "64", "--new-tokens", "2",
                      "--gpu", "H200", "--batch", "8", "--expert-skew", "1", "--no-log", cwd=tmp_path)
    assert "a Zipf law of exponent 1" in skewed.stdout
    dense = run_main(main, "serve", "--model", "llama3_2_1b", "--prompt-tokens", "64", "--new-tokens", "2",
                     "--gpu", "H200", "--expert-skew", "1", "--no-log", cwd=tmp_path)
    assert dense.returncode == 2 and dense.stderr.count("\n") == 1 and "expert-skew" in dense.stderr


def test_weights_and_cache_served_in_their_own_dtypes_move_and_hold_their_bytes(tmp_path):
    """16 GB of bf16 weights served in int4 are 4 GB, the 128 KiB a token of bf16 cache 64 KiB in fp8: a memory-bound
    decode step reads those, and the largest batch fits them; the FLOPs and the compute dtype's peak stay."""
    one = Generation(**{**GEN.__dict__, "new_tokens": 2})
    served = Serving(H100, "bfloat16", weights_dtype="int4", kv_dtype="fp8")
    p = plan(one, served, 1)
    assert p.rows[0].tpot_s == pytest.approx((16e9 / 4 + 65536 * 4097) / 3350e9)
    assert p.rows[0].ttft_s == at_batch(one, Serving(H100, "bfloat16"), 1).ttft_s  # the prefill: compute-bound
    b = plan(GEN, served).largest
    assert 4e9 + b * 65536 * (4096 + 255) <= 0.9 * 80e9 < 4e9 + (b + 1) * 65536 * (4096 + 255)
    assert "weights in int4, KV cache in fp8, scaled from bfloat16" in p.table()
    assert plan(one, Serving(H100, "bfloat16", weights_dtype="fp4", kv_dtype="fp8"), 1).rows[0].tpot_s == \
        p.rows[0].tpot_s  # fp4 weights: two a byte, as int4's
    out = run_main(main, "serve", "--model", "llama3_2_1b", "--prompt-tokens", "16", "--new-tokens", "2", "--gpu",
                   "H100", "--weights-dtype", "fp2", "--no-log", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "flopsweep-project serve: error: --weights-dtype='fp2': " \
        "must be one of float32, bfloat16, float16, fp8, int8, int4, fp4"


# a Mixtral-like mixture of experts by hand: 90 GB of routed experts (8 a layer, 2 a token) beside 3 GB of the rest
MOE = Generation("moe", prompt=1024, new_tokens=2, prefill_flops=2 * 12.9e9 * 1024, decode_first_flops=2 * 12.9e9,
                 decode_last_flops=2 * 12.9e9, kv_bytes_per_token=131072, weights_bytes=93e9, weights_read_bytes=3e9,
                 dtype="bfloat16", kv_heads=8, width=4096, layers=32, heads=32, routed_bytes=90e9, experts=8,
                 experts_per_token=2, counted_routed_bytes=90e9)


def test_expert_parallel_serving_holds_and_reads_a_gpus_own_experts_and_exchanges_each_tokens_rows():
    """ep=8 on 8 H100s: a GPU holds 1 of the 8 experts a layer (90/8 GB) beside the rest (3 GB), attention runs on 8
    groups of one GPU (tp=1), each its share of the batch; a decode step at batch 8 (one sequence a GPU) reads the
    rest and its expert where the batch's 8 tokens reach it (8(1 - (6/8)^8) of 8 experts: each GPU its eighth), and
    sends each token's 2 rows of 4,096 bf16 values to their experts and back: 2 all-to-alls a layer."""
    serving = Serving(H100, "bfloat16", ep=8)
    assert (serving.replica, serving.groups, serving.experts_split) == (8, 8, 8)
    room = 0.9 * H100.memory_bytes - (3e9 + 90e9 / 8)
    assert largest_batch(MOE, serving) == int(8 * room // (131072 * 1025))
    row = at_batch(MOE, serving, 8)
    reached = 8 * (1 - 0.75 ** 8)
    read = 3e9 + 90e9 * reached / 8 / 8 + 1 * 131072 * 1025
    exchange = collective_seconds("all_to_all", 64 * 2 * 4096 * 2, 8, H100.interconnect.scale_up, calls=64)
    assert row.tpot_all_to_all_s == pytest.approx(exchange)
    assert row.tpot_s == pytest.approx(read / H100.bandwidth + exchange, rel=1e-6)
    assert row.output_tokens_per_s_per_gpu == pytest.approx(8 * 2 / row.request_s / 8)
    # a long prefill is compute-bound: a GPU's share of attention and the rest for its 1 sequence (12.9 - 11.25
    # GFLOPs a token), and its experts' eighth of every token's 2 x 45e9 x 2/8 expert FLOPs
    prefill = at_batch(MOE, serving, 8)
    expert = 2 * 45e9 * 2 / 8
    flops = 1 * (2 * 12.9e9 - expert) * 1024 + 8 * expert * 1024 / 8
    assert prefill.prefill_bound == "compute"
    exchange_prefill = collective_seconds("all_to_all", 64 * 1024 * 2 * 4096 * 2, 8, H100.interconnect.scale_up,
                                          calls=64)
    assert prefill.ttft_s == pytest.approx(flops / H100.peak("bfloat16") + exchange_prefill, rel=1e-6)
    # without ep, the same 8 GPUs as tp=8 read every weight's eighth and exchange nothing
    assert at_batch(MOE, Serving(H100, "bfloat16", tp=8), 8).tpot_all_to_all_s == 0


@pytest.mark.parametrize("serving, generation, message", [
    (dict(ep=3, tp=2), MOE, "a multiple of --tp=2"),
    (dict(ep=3), MOE, "has 8, which it does not divide"),
    (dict(ep=2), GEN, "has none counted"),
])
def test_expert_parallelism_is_refused_in_one_line_where_it_cannot_split_the_experts(serving, generation, message):
    from flopsweep.core.errors import ConfigError

    with pytest.raises(ConfigError) as zero:  # a fleet of no GPUs is none of a replica's multiples
        Serving(H100, "bfloat16", ep=8, gpus=0)
    assert zero.value.key == "gpus"

    with pytest.raises(ConfigError) as err:
        plan(generation, Serving(H100, "bfloat16", **serving))
    assert err.value.key == "ep" and message in str(err.value) and "\n" not in str(err.value)


def test_a_presets_serving_plan_on_ep_exchanges_its_experts_rows(tmp_path):
    out = run_main(main, "serve", "--model", "mixtral_8x7b", "--prompt-tokens", "64", "--new-tokens", "8",
                   "--gpu", "H100", "--tp", "2", "--ep", "8", "--batch", "16", "--no-log", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "on 8 × H100" in out.stdout and "1 routed experts a GPU of ep=8" in out.stdout
    assert "4 group(s) of tp=2" in out.stdout and "all-to-all/TPOT" in out.stdout


def test_docs_hardware_table_is_the_shipped_tables_figures():
    """docs/serving.md's table of parts is read by people choosing --gpu: each row's bf16, fp8 and int8 peaks (as
    rounded there), memory and bandwidth are the shipped table's (flopsweep/core/data/hardware.yaml), '–' where the
    part has none."""
    from pathlib import Path

    lines = (Path(__file__).parents[2] / "docs" / "serving.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| part | bf16 TFLOP/s |")) + 2
    rows = [line.split("|")[1:-1] for line in lines[start:start + 60] if line.startswith("| ")]
    rows = rows[:next((i for i, r in enumerate(rows) if len(r) != 7), len(rows))]
    assert len(rows) == len(names())  # every part of the table, once
    for cells in rows:
        name, *figures = (c.strip() for c in cells[:6])
        part = accelerator(name.split(" (")[0])
        assert part is not None, name
        for dtype, cell in zip(("bfloat16", "fp8", "int8"), figures):
            if cell.startswith("("):  # V100's bf16: its fp16, said so
                continue
            assert (cell == "–") == (dtype not in part.peak_tflops), (name, dtype, cell)
            if cell != "–":
                assert float(cell.replace(",", "")) == pytest.approx(part.peak_tflops[dtype], rel=5e-3), (name, dtype)
        memory, bandwidth = (float(c.replace(",", "")) for c in figures[3:])
        assert (memory, bandwidth) == (part.memory_gb, part.bandwidth_gbs), name


def test_a_failed_job_is_refused_for_its_status_and_its_error():
    """serve RUN on a failed job said it was 'not a counted workload=generate run (no flops/prefill)', where train
    says its status."""
    from flopsweep.core.errors import ConfigError
    from flopsweep.core.result import Result
    from flopsweep.projection.generation import Generation

    failed = Result("failed", "model.n_head=7: must divide model.d_model=768", {}, {})
    with pytest.raises(ConfigError) as err:
        Generation.from_result(failed, "5_t5_small")
    assert str(err.value) == ("run='5_t5_small': has status 'failed', not 'ok': model.n_head=7: must divide "
                              "model.d_model=768")
