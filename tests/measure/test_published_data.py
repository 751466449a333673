"""The published A100 measurements shipped as flopsweep/measure/data/published.json, checked against figures quoted
independently in docs (time_and_parallelism.md), the models' published configs, and the A100's datasheet peaks:
a column read the wrong way (M for K, milliseconds for seconds, elements for bytes) fails here."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

A100_DENSE_PEAK = 312e12  # FLOP/s, float16 and bfloat16 tensor cores (NVIDIA A100 datasheet)
A100_HBM = 2.039e12       # bytes/s, the 80 GB part (the 40 GB part has 1.555e12)
A100_NVLINK = 300e9       # bytes/s a GPU a direction (12 NVLink 3 links of 25 GB/s)


@pytest.fixture(scope="module")
def a100():
    return json.loads((files("flopsweep.measure") / "data" / "published.json").read_text())["parts"]["A100"]


def tflops(rows, m, k, n):
    (seconds,) = [row[3] for row in rows if row[:3] == [m, k, n]]
    return 2 * m * k * n / seconds / 1e12


def test_llmcompass_matmuls_give_the_quoted_throughputs(a100):
    rows = a100["matmul"]["bfloat16"]
    assert tflops(rows, 64, 12288, 12288) == pytest.approx(101.7, rel=5e-3)
    assert tflops(rows, 1024, 12288, 12288) == pytest.approx(257.9, rel=5e-3)
    assert tflops(rows, 8192, 12288, 12288) == pytest.approx(286.9, rel=5e-3)
    assert tflops(rows, 8192, 12288, 12288) * 1e12 / A100_DENSE_PEAK == pytest.approx(0.92, abs=0.005)
    assert tflops(rows, 8192, 64, 64) == pytest.approx(2.3, rel=0.02)


def test_vidur_llama2_7b_projections_run_at_69_to_74_percent_of_peak(a100):
    # Llama-2-7B (its published config): hidden 4096, 32 heads of 128, SwiGLU width 11008; 4096 tokens, no TP
    d, ff, tokens = 4096, 11008, 4096
    rows = a100["matmul"]["float16"]
    shapes = {"qkv": (tokens, d, 3 * d), "out": (tokens, d, d), "gate_up": (tokens, d, 2 * ff), "down": (tokens, ff, d)}
    for name, shape in shapes.items():
        fraction = tflops(rows, *shape) * 1e12 / A100_DENSE_PEAK
        assert 0.685 <= fraction <= 0.745, (name, fraction)


def test_no_matmul_beats_the_tensor_core_peak(a100):
    for dtype, rows in a100["matmul"].items():
        for m, k, n, seconds in rows:
            assert 2 * m * k * n / seconds <= A100_DENSE_PEAK, (dtype, m, k, n)


def test_vidur_all_reduce_of_64_mib_within_one_node(a100):
    rows = {(g, b): s for g, b, s in a100["collectives"]["all_reduce"]}
    assert rows[(8, 64 * 2**20)] == pytest.approx(0.675e-3, rel=5e-3)
    assert rows[(2, 64 * 2**20)] == pytest.approx(0.430e-3, rel=5e-3)


def test_all_reduce_bus_bandwidth_stays_under_nvlink(a100):
    # a ring all-reduce moves 2(n-1)/n of the buffer over each GPU's links
    for gpus, size, seconds in a100["collectives"]["all_reduce"]:
        assert 2 * (gpus - 1) / gpus * size / seconds <= A100_NVLINK, (gpus, size)
    for _, size, seconds in a100["collectives"]["send_recv"]:
        assert size / seconds <= A100_NVLINK, size


def test_across_nodes_is_slower_than_within_one(a100):
    one_node = {(g, b): s for g, b, s in a100["collectives"]["all_reduce"]}
    across = {(g, b): s for g, per_node, b, s in a100["collectives"]["all_reduce_across_nodes"] if per_node == g // 2}
    shared = [key for key in across if key in one_node and key[1] >= 2**20]
    assert len(shared) > 10
    assert all(across[key] > one_node[key] for key in shared)


def test_memory_curve_stays_under_hbm_and_reaches_three_quarters_of_it(a100):
    rows = a100["memory"]
    assert all(size / seconds <= A100_HBM for size, seconds in rows)
    size, seconds = max(rows)
    assert size / seconds >= 0.75 * A100_HBM


def test_gpt3_layer_at_tp4(a100):
    prefill = a100["layers"]["gpt3_175b_tp4_prefill"]["ops"]
    assert sum(op["seconds"] for op in prefill) == pytest.approx(66.75e-3, rel=1e-3)
    reduces = [op for op in prefill if op["kind"] == "all_reduce"]
    assert len(reduces) == 2
    for op in reduces:
        gpus, size = op["shape"]
        assert gpus == 4 and size == pytest.approx(402.7e6, rel=5e-4)
        assert op["seconds"] == pytest.approx(2.89e-3, rel=2e-3)
    decode = a100["layers"]["gpt3_175b_tp4_decode"]["ops"]
    assert sum(op["seconds"] for op in decode) == pytest.approx(1.111e-3, rel=1e-3)
    # each matmul's shape carries the layer's FLOPs: 24 b s h^2 a layer (Megatron-LM's closed form), split 4 ways
    b, s, h = 8, 2048, 12288
    matmul_flops = sum(op["count"] * 2 * op["shape"][0] * op["shape"][1] * op["shape"][2]
                       for op in prefill if op["kind"] == "matmul")
    assert matmul_flops == 24 * b * s * h**2 // 4


def test_measured_all_reduce_of_the_layer_fits_the_measured_curve(a100):
    # the layer's 402.7 MB all-reduce over 4 GPUs lies between the 4-GPU curve's 256 MiB and 512 MiB points
    curve = {b: s for g, b, s in a100["collectives"]["all_reduce"] if g == 4}
    (seconds,) = {op["seconds"] for op in a100["layers"]["gpt3_175b_tp4_prefill"]["ops"] if op["kind"] == "all_reduce"}
    assert curve[2**28] < seconds < curve[2**29]


def test_calculon_networks(a100):
    up, out = a100["network"]["scale_up"], a100["network"]["scale_out"]
    assert (up["bandwidth_gbs"], up["efficiency"], up["domain"], up["latency_s"]) == (300, 0.65, 8, 10e-6)
    assert up["ops"]["all_reduce"] == [2.0, -1]
    assert up["ops"]["all_gather"] == up["ops"]["reduce_scatter"] == [1.5, -1]
    assert (out["bandwidth_gbs"], out["efficiency"]) == (25, 0.9)


def test_tables_are_small_distinct_and_sourced(a100):
    tables = {f"matmul.{dtype}": rows for dtype, rows in a100["matmul"].items()}
    tables |= {f"collectives.{name}": rows for name, rows in a100["collectives"].items()}
    tables["memory"] = a100["memory"]
    for name, rows in tables.items():
        assert 0 < len(rows) <= 300, name
        keys = [tuple(row[:-1]) for row in rows]
        assert len(set(keys)) == len(keys), name
        assert all(isinstance(x, (int, float)) and x > 0 for row in rows for x in row), name
        assert name in a100["sources"], name
    for name in ("network", "layers", "attention", "collectives.all_gather"):
        assert name in a100["sources"]
