"""Analysis on real sweeps read back with load_runs: scaling exponents (GPT: from 1 toward 2 as attention takes
over; ResNet-BK: 1), comparison against a baseline, bottleneck modules, counted against closed form."""

import pytest

import flopsweep
from flopsweep import analysis
from flopsweep.core.errors import ConfigError

from tests.helpers import run_app

pytestmark = pytest.mark.slow  # nine jobs on meta up to 16,384 tokens, read back: 14 s of the fast lane's one worker

SEQ = [16, 64, 256, 1024, 4096, 16384]
TINY_GPT = ["model=gpt2_small", "model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.vocab_size=1000",
            "model.max_positions=16384"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("analysis")
    gpt = run_app("-m", *TINY_GPT, f"batch.seq_len={','.join(map(str, SEQ))}", "device=meta",
                  "tracking.experiment=scaling", cwd=cwd)
    assert gpt.returncode == 0, gpt.stderr
    bk = run_app("-m", "model=resnet_bk_baseline", "model.n_layers=1", "batch.seq_len=128,256,512", "batch.size=1",
                 "device=meta", "tracking.experiment=scaling", cwd=cwd)
    assert bk.returncode == 0, bk.stderr
    return cwd, flopsweep.load_runs(experiment="scaling", store_dir=cwd / "outputs")


def test_gpt_slope_rises_from_one_toward_two_and_resnet_bk_stays_linear(runs):
    _, df = runs
    fit = analysis.scaling_fit(df, x="batch.seq_len", y="flops/forward", by="model.name")
    gpt, bk = fit.loc["gpt2_small"], fit.loc["resnet_bk_baseline"]
    assert gpt.points == len(SEQ) and bk.points == 3
    local = gpt.local_slopes
    assert 1.0 < local[0] < 1.1                             # short sequences: nearly linear, 6N dominates
    assert all(b > a for a, b in zip(local, local[1:]))    # attention's share grows with every step
    assert 1.8 < local[-1] < 2.0                            # long sequences: quadratic
    # PaLM per token: 2N' + 4*L*d*T forward, N' the matmul weights: the exact local slope, computed here
    weights = 1000 * 64 + 2 * 12 * 64 * 64
    per_token = [2 * weights + 4 * 2 * 64 * s for s in SEQ]
    import math
    expected = [1 + math.log(b / a) / math.log(t2 / t1)
                for a, b, t1, t2 in zip(per_token, per_token[1:], SEQ, SEQ[1:])]
    assert local == pytest.approx(expected, rel=1e-9)
    assert bk.slope == pytest.approx(1.0, abs=0.02) and bk.r2 > 0.999
    assert all(s == pytest.approx(1.0, abs=0.02) for s in bk.local_slopes)


def test_compare_against_a_baseline(runs):
    _, df = runs
    gpt = df[df["model.name"] == "gpt2_small"]
    base = gpt.loc[gpt["batch.seq_len"] == 64, "run_name"].item()
    table = analysis.compare(gpt, baseline=base, metrics=["flops/forward", "size/params"])
    longer = gpt.loc[gpt["batch.seq_len"] == 256, "run_name"].item()
    ratio = gpt.loc[gpt["run_name"] == longer, "flops/forward"].item() / gpt.loc[
        gpt["run_name"] == base, "flops/forward"].item()
    assert table.loc[longer, "flops/forward / baseline"] == pytest.approx(ratio) and ratio > 4
    assert (table["size/params / baseline"] == 1.0).all()  # the same model at every length
    with pytest.raises(ConfigError, match="^baseline='nope': matches 0 runs"):
        analysis.compare(df, baseline="nope")


def test_bottlenecks_and_closed_form(runs):
    cwd, df = runs
    gpt = df[df["model.name"] == "gpt2_small"]
    longest = gpt.loc[gpt["batch.seq_len"] == 16384, "run_id"].item()
    top = analysis.bottlenecks(longest, depth=2, uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    assert list(top["module"])[:2] == ["blocks.0", "blocks.1"] or list(top["module"])[:2] == ["blocks.1", "blocks.0"]
    assert top["share"].sum() <= 1.0 + 1e-12 and top["share"].iloc[0] > 0.4  # attention at 16K dominates
    merged = analysis.bottlenecks(longest, merge_repeats=True, uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    by_name = merged.set_index("module")
    assert by_name.loc["blocks.*.attn", "count"] == 2 and merged["module"].is_unique
    assert merged.loc[0, "module"] == "blocks.*.attn"  # at 16K tokens attention outweighs the MLP and the head
    assert by_name.loc["blocks.*.attn", "flops"] == top.set_index("module").loc[["blocks.0", "blocks.1"]].pipe(
        lambda t: t["flops"].sum()) - by_name.filter(like="blocks.*.", axis=0).drop("blocks.*.attn")["flops"].sum()
    assert merged["share"].sum() <= 1.0 + 1e-12
    every = analysis.bottlenecks(longest, top=None, uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    assert len(every) > 10 and every["share"].sum() == pytest.approx(1.0)  # leaves and own parts: the whole model
    with pytest.raises(ConfigError, match=r"^top=0: must be an integer >= 1, or None for every module$"):
        analysis.bottlenecks(longest, top=0)  # it was an empty table
    closed = analysis.counted_vs_closed_form(gpt)
    assert (closed["difference"] == 0).all()  # the decoder's closed form is exact
