"""Figures for people, one style a kind (docs/conventions.md, "Figures for people"): parameters and tokens in billions,
FLOPs and rates in SI's prefixes up to Z, shares as ``54.6%``, memory in binary units beside a datasheet's GB."""

import re
from pathlib import Path

import pytest

from flopsweep.core.hardware import accelerator
from flopsweep.core.text import capacity, format_metric, human, profile_text

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key, value, shown", [
    ("size/params", 175e9, "175B"),              # GPT-3 as it is named; it read 175G
    ("size/params_active", 12.9e9, "12.9B"),
    ("size/params", 124_439_808, "124M"),
    ("flops/step", 3.386e18, "3.39E"),           # a GPT-3 step: it read 3386P
    ("flops/forward", 2.2e22, "22Z"),
    ("flops/forward", 22.3e9, "22.3G"),          # FLOPs keep SI's G
    ("speed/mfu", 0.546, "54.6%"),                # as every other share the console prints; it read 54.6 %
    ("speed/hfu_predicted", 0.403, "40.3%"),       # it read 0.403
    ("speed/mfu_predicted", 0.00042, "0.042%"),      # a toy model's: not 0.0%
    ("parallel/fits", 0.0, "no"),
    ("parallel/gpus", 1024.0, "1,024"),          # a count, as 1,024 GPUs elsewhere; it read 1024
    ("speed/tokens_per_s", 1850.4, "1,850"),         # as the serving table gives tokens/s; it read 1.85K
    ("speed/samples_per_s", 4.624, "4.62"),
    ("size/weights_bytes", 16.06e9, "15 GiB"),
])
def test_each_kind_of_figure_has_one_form(key, value, shown):
    assert format_metric(key, value) == shown


def test_a_figure_with_its_unit_has_a_space_before_the_prefix():
    assert human(149e9, "FLOP/s") == "149 GFLOP/s"  # it read 149GFLOP/s
    assert human(32.2e9) == "32.2G"  # a table's cell stays compact


def test_a_parts_memory_is_given_in_gib_beside_its_datasheets_gb():
    assert capacity(accelerator("H100")) == "74.5 GiB (80 GB)"
    import dataclasses

    given = dataclasses.replace(accelerator("H100"), memory_gb=24 * 2**30 / 1e9)  # --gpu-memory 24 (GiB)
    assert capacity(given) == "24 GiB (25.8 GB)"  # it read 25.7698 GB


def test_the_profiles_header_names_its_units():
    rows = [{"module": "(model)", "type": "Model", "depth": 0, "params": 124e6, "macs": 16.1e9,
             "forward_flops": 32.2e9, "backward_flops": 64.5e9, "forward_latency_s": 0.379,
             "forward_flops_per_s": 85e9, "tied_to": None}]
    header = profile_text(rows, "t").splitlines()[1]
    assert header == ("Model: 124M parameters, forward 32.2 GFLOPs (16.1 GMACs), backward 64.5 GFLOPs, forward "
                      "latency 379 ms, 85 GFLOP/s")


def test_the_docs_write_a_share_as_the_console_does():
    """``40%``, not ``40 %``: the docs quote the console, and a reader should not meet two forms."""
    spaced = [f"{path.name}:{n}" for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
              for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\d %", line)]
    assert not spaced


def test_a_plans_billions_carry_the_b_of_a_models_name():
    from flopsweep.core.text import billions

    assert billions(1.0589e12) == "1,058.9B"  # beside a preset's 175B; it read 1,058.9 B
    # a short plan's tokens (1,000 steps x 32 sequences x 128 tokens) read 0.0B, and 10K x 64 x 128 read 0.1B
    assert (billions(4_096_000), billions(81_920_000), billions(1.5e9)) == ("4.1M", "81.9M", "1.5B")



def test_a_count_of_one_is_singular():
    """A one-job sweep ended '1 jobs: 1 ok'."""
    from flopsweep.core.text import counted

    assert [counted(n, "job") for n in (0, 1, 2, 1024)] == ["0 jobs", "1 job", "2 jobs", "1,024 jobs"]


def test_a_jobs_console_warns_of_ops_it_could_not_count():
    """stats.txt listed them; the console said flops/forward 0 as if exact."""
    from flopsweep.core.result import Result
    from flopsweep.core.text import job_lines

    result = Result("ok", None, {}, {"flops/forward": 0}, {"uncounted_ops": {"aten._transformer_encoder_layer_fwd": 2}})
    assert "warning: ops with arithmetic but no formula, not counted: aten._transformer_encoder_layer_fwd x2" in \
        job_lines(result)
    assert not [line for line in job_lines(Result("ok", None, {}, {"flops/forward": 0})) if "warning" in line]


@pytest.mark.parametrize("ratio, shown", [(0.0025, "x0.0025"), (1.234, "x1.23"), (12.34, "x12.3")])
def test_a_predicted_step_against_the_measured_keeps_its_digits(ratio, shown):
    """A custom model's step predicted at a quarter of a percent of the measured read x0.00 the measured."""
    from flopsweep.core.result import Result
    from flopsweep.core.text import predicted_line

    result = Result("ok", None, {}, {"time/step_predicted_s": 0.001, "time/step_predicted_ratio": ratio},
                    info={"prediction": {"part": "cpu"}})
    assert f", {shown} the measured;" in predicted_line(result)
