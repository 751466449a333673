"""Compute-optimal answers for a training budget: the 20-tokens-per-parameter rule and the fitted loss laws."""

import math

import pytest

from flopsweep.projection.scaling import FITS, optimum


@pytest.mark.parametrize("fit", sorted(FITS))
@pytest.mark.parametrize("flops", [1e21, 5.76e23, 1e25])
def test_the_fitted_optimum_is_the_minimum_of_the_loss_on_the_budget_curve(fit, flops):
    law = FITS[fit]
    best = optimum(flops, fit)
    # a numeric minimisation along N·D = C/6, independent of the closed form: a fine grid in log N, then refined
    lo, hi = math.log(1e6), math.log(1e14)
    for _ in range(6):
        grid = [lo + (hi - lo) * i / 400 for i in range(401)]
        losses = [law.loss(math.exp(x), flops / 6 / math.exp(x)) for x in grid]
        i = min(range(len(grid)), key=losses.__getitem__)
        lo, hi = grid[max(i - 2, 0)], grid[min(i + 2, 400)]
    assert best.params == pytest.approx(math.exp((lo + hi) / 2), rel=1e-4)
    assert 6 * best.params * best.tokens == pytest.approx(flops)
    assert best.loss == pytest.approx(min(losses), rel=1e-9)


def test_chinchillas_budget_gives_chinchilla_by_the_rule():
    # Chinchilla: 70 B parameters on 1.4 T tokens, 20 a parameter: 6 · 70e9 · 1.4e12 = 5.88e23 FLOPs
    rule = optimum(5.88e23)
    assert rule.params == pytest.approx(70e9) and rule.tokens == pytest.approx(1.4e12)


def test_more_tokens_per_parameter_gives_a_smaller_model_for_the_same_budget():
    over = optimum(5.88e23, tokens_per_param=200)      # LLaMA-style over-training
    assert over.params == pytest.approx(70e9 / math.sqrt(10)) and over.tokens == pytest.approx(200 * over.params)
    assert over.loss > optimum(5.88e23, "hoffmann").loss  # off the fitted optimum, the predicted loss is higher


@pytest.mark.slow
def test_a_budget_ranks_our_presets_and_the_hugging_face_ones_by_predicted_loss(tmp_path):
    import json

    from flopsweep.cli.project import main
    from tests.helpers import run_main

    out = run_main(main, "budget", "--model", "gpt2_small", "--flops", "5.88e23", "--mfu", "0.4",
                   "--inference-tokens", "1T", "--json", "budget.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "budget.json").read_text())
    rows = {row["model"]: row for row in report["compute_optimal"]}
    assert {"llama3_8b", "qwen2_5_72b", "gpt3_175b", "mixtral_8x7b"} <= set(rows)   # HF presets beside ours
    for row in rows.values():  # the whole budget, at the row's cost a token
        assert row["bought"] * row["flops"] / row["tokens"] == pytest.approx(5.88e23)
    lowest = min(rows.values(), key=lambda row: row["loss"])
    assert f"{lowest['model']} " in next(line for line in out.stdout.splitlines() if "<- lowest" in line)
    for best in report["optimum"]:  # serving a trillion tokens adds 2N FLOPs each
        assert best["with_inference_flops"] == pytest.approx(5.88e23 + 2e12 * best["params"])


@pytest.mark.slow
def test_the_presets_a_budget_ranks_are_built_once_and_kept_for_their_code_and_libraries(tmp_path, monkeypatch):
    """Every budget built the 65 presets on meta again: 15 s each time. They are kept, keyed by the package's code,
    configs and the versions of torch and transformers; a folder that cannot be written only costs the time."""
    from importlib import metadata

    from flopsweep.run import presets

    monkeypatch.setenv("FLOPSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    built, unbuilt = presets.language_model_presets()
    (kept,) = (tmp_path / "cache").glob("presets-*.json")
    assert unbuilt == [] and presets.cache_path() == kept and len(built) > 30
    monkeypatch.setattr(presets, "build", lambda spec: pytest.fail(f"{spec.model.name} built again"))
    assert presets.language_model_presets()[0] == built  # every field, the shapes too
    version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "9.9" if name == "transformers" else version(name))
    assert presets.cache_path() != kept  # another transformers: read again
    monkeypatch.setattr(metadata, "version", version)
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("FLOPSWEEP_CACHE_DIR", str(tmp_path / "a_file"))
    monkeypatch.setattr(presets, "_read_presets", lambda each: (built[:2], []))
    assert presets.language_model_presets()[0] == built[:2]  # read, and not kept: said nowhere, nothing lost
