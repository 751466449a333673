"""The module profile (measure.profile=true): every module once, per-depth sums equal to the model's totals,
per-module figures checked against the layer shapes, latencies from a real timed run, and the report command."""

import csv

import pytest
from omegaconf import OmegaConf

from tests.helpers import run_app
from flopsweep.build.model import build
from flopsweep.config.resolve import resolve
from flopsweep.core.errors import ConfigError
from flopsweep.run.job import run_job
from flopsweep.core.profile import REST, by_depth

D, L, B, S, V = 32, 2, 2, 16, 50257  # GPT-2 style, tied head
TINY = ["model=gpt2_small", f"model.d_model={D}", f"model.n_layer={L}", "model.n_head=2", f"batch.size={B}",
        f"batch.seq_len={S}", "tracking=none", "measure.profile=true", "measure.warmup=1", "measure.repeats=3"]


def profiled(compose_cfg, *overrides):
    cfg = compose_cfg(*TINY, *overrides)
    spec = resolve(cfg)
    result = run_job(spec, OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    return result, build(spec).model


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_every_module_once_and_depth_sums_equal_the_totals(compose_cfg, device):
    result, model = profiled(compose_cfg, f"device={device}")
    rows, m = result.breakdown["profile"], result.metrics
    names = [row["module"] for row in rows]
    assert len(names) == len(set(names))
    assert names[1:] == [name for name, _ in model.named_modules() if name]
    assert rows[0]["params"] == m["size/params"]
    assert rows[0]["forward_flops"] == m["flops/forward"] and rows[0]["backward_flops"] == m["flops/backward"]
    depth = by_depth(rows)
    for d in range(1, max(row["depth"] for row in rows) + 1):
        level = [r for r in depth if r["depth"] == d and r["rank"] is None]
        assert len(level) == 2 and level[1]["module"] == REST
        for key, total in (("params", m["size/params"]), ("forward_flops", m["flops/forward"]),
                           ("backward_flops", m["flops/backward"]), ("macs", m["macs/forward"])):
            assert level[0][key] + level[1][key] == total, (d, key)
        # the rows of one depth, added up here, are the "all" row
        assert level[0]["forward_flops"] == sum(r["forward_flops"] for r in rows if r["depth"] == d)


def test_per_module_figures_follow_the_layer_shapes(compose_cfg):
    result, model = profiled(compose_cfg, "device=meta")
    rows = {row["module"]: row for row in result.breakdown["profile"]}
    tokens = B * S
    qkv = rows["blocks.0.attn.qkv"]
    assert qkv["type"] == "Linear" and qkv["params"] == D * 3 * D + 3 * D
    assert qkv["forward_flops"] == 2 * tokens * D * 3 * D and qkv["macs"] == tokens * D * 3 * D
    # weight and input gradients: twice the forward matmul
    assert qkv["backward_flops"] == 2 * qkv["forward_flops"]
    # the output head is tied to the token embedding: its weight is counted once, under the embedding
    assert rows["lm_head"]["params"] == 0 and rows["tok_embedding"]["params"] == V * D
    assert rows["lm_head"]["tied_to"] == "tok_embedding.weight" and rows["blocks.0.attn.qkv"]["tied_to"] is None
    from flopsweep.core.text import profile_text

    text = profile_text(result.breakdown["profile"], "tiny")
    assert "0 (tied)" in text and "tied: lm_head's weight is tok_embedding.weight (counted there)" in text  # not 0
    assert rows["lm_head"]["forward_flops"] == 2 * tokens * D * V
    # a block: its parameters from the model itself, and attention's QK^T and PV inside attn
    block = model.get_submodule("blocks.1")
    assert rows["blocks.1"]["params"] == sum(p.numel() for p in block.parameters())
    attn = rows["blocks.1.attn"]
    assert attn["forward_flops"] == 2 * tokens * D * 4 * D + 4 * B * S * S * D
    assert all(row["forward_latency_s"] is None for row in rows.values())  # meta: nothing timed


def test_latencies_come_from_timed_passes(compose_cfg):
    result, _ = profiled(compose_cfg, "device=cpu")
    rows = {row["module"]: row for row in result.breakdown["profile"]}
    assert all(row["forward_latency_s"] > 0 for row in rows.values())
    for row in rows.values():
        if row["forward_flops"]:
            assert row["forward_flops_per_s"] == pytest.approx(row["forward_flops"] / row["forward_latency_s"])
    # never called itself, the block list takes its blocks' time
    assert rows["blocks"]["forward_latency_s"] == pytest.approx(
        rows["blocks.0"]["forward_latency_s"] + rows["blocks.1"]["forward_latency_s"])
    # means over the passes add up as every pass does: what ran outside a depth's modules is never negative
    for row in by_depth(result.breakdown["profile"]):
        if row["module"] == REST:
            assert row["forward_latency_s"] >= 0, row
    # depth 1 modules run one after another inside the forward pass
    assert sum(row["forward_latency_s"] for row in rows.values() if row["depth"] == 1) \
        < 1.5 * rows["(model)"]["forward_latency_s"]


def test_profile_needs_the_count(compose_cfg):
    with pytest.raises(ConfigError, match="measure.profile"):
        resolve(compose_cfg(*TINY, "measure.count=false"))


def test_job_folder_and_report(tmp_path, capsys):
    from flopsweep.cli.report import main
    from flopsweep.core.result import Result

    job = run_app(*TINY, "device=cpu", f"hydra.run.dir={tmp_path / 'job'}", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    folder = tmp_path / "job"
    rows = Result.read(folder / "result.json").breakdown["profile"]
    with (folder / "profile.csv").open() as handle:
        assert [r["module"] for r in csv.DictReader(handle)] == [r["module"] for r in rows]
    assert main(["--profile", str(folder), "--out", str(tmp_path / "rep")]) == 0
    for name in ("profile.txt", "profile.csv", "profile_depth.csv", "profile.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    text = (tmp_path / "rep" / "profile.txt").read_text()
    assert "blocks.1.mlp.down" in text and "By depth" in text and "ms" in text
    # the profiled forward (hooks) beside the timed one (none), in the file and on the console
    assert "with hooks on every module (mean)" in text and "in the step timings without them (median)" in text
    assert "profile: forward" in job.stdout and "without them (median)" in job.stdout

    # the leaves and every module's own work are the whole model; attention's QK^T and PV are attn's own,
    # forward 2 matmuls of 2*B*S*S*D and a backward of twice that
    from flopsweep.analysis import bottlenecks

    leaves = bottlenecks(folder, top=1000)
    assert leaves["share"].sum() == pytest.approx(1.0) and leaves["time_share"].sum() == pytest.approx(1.0)
    own = leaves.set_index("module").loc["blocks.1.attn (own)"]
    assert own["forward_flops"] == 4 * B * S * S * D and own["backward_flops"] == 8 * B * S * S * D
    merged = bottlenecks(folder, top=1000, merge_repeats=True).set_index("module")
    assert merged.loc["blocks.* (own)", "count"] == L
    assert merged.loc["blocks.*.attn (own)", "flops"] == 12 * B * S * S * D * L

    plain = run_app("model=gpt2_small", "model.n_layer=1", "model.d_model=32", "model.n_head=2", "device=meta",
                    "tracking=none", f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    capsys.readouterr()
    assert main(["--profile", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "measure.profile=true" in err
