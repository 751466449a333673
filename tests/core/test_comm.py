"""The interconnect model (core/comm.py) against published A100 measurements (Vidur's DGX A100 NCCL profiles,
LLMCompass's 4-GPU all-reduces, in flopsweep/measure/data/published.json) and the datasheets' topologies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flopsweep.core.comm import Network, collective_seconds
from flopsweep.core.hardware import ACCELERATORS, accelerator

PUBLISHED = json.loads((Path(__file__).parents[2] / "flopsweep/measure/data/published.json").read_text())["parts"]
A100 = PUBLISHED["A100"]
MIB64 = 64 * 2**20


def test_the_a100_rows_are_calculons_network():
    """The figures typed into the table are the ones read from Calculon's a100_80g.json."""
    system = accelerator("A100").interconnect
    published = A100["network"]
    for ours, theirs in ((system.scale_up, published["scale_up"]), (system.scale_out, published["scale_out"])):
        assert (ours.bandwidth_gbs, ours.efficiency, ours.latency_s) == \
            (theirs["bandwidth_gbs"], theirs["efficiency"], theirs["latency_s"])
    assert system.domain == A100["network"]["scale_up"]["domain"]


def test_an_all_reduce_of_64_mib_over_8_a100s_is_vidurs_within_10_percent():
    """Vidur's DGX A100 profile: 0.675 ms (NCCL's kernel time). The model is 9 % faster: NCCL's ring has not reached
    its large-message bandwidth at 64 MiB."""
    measured = next(t for n, b, t in A100["collectives"]["all_reduce"] if (n, b) == (8, MIB64))
    assert measured == pytest.approx(0.675e-3)
    predicted = collective_seconds("all_reduce", MIB64, 8, accelerator("A100").interconnect.scale_up)
    assert predicted == pytest.approx(measured, rel=0.10)
    assert predicted < measured


def test_every_large_a100_collective_is_within_25_percent():
    """From 64 MiB to 16 GiB on 2, 4 and 8 GPUs of one node (Vidur, LLMCompass): the model is up to 18 % fast at
    64 MiB and up to 20 % slow at 16 GiB (LLMCompass's 4 GPUs reached 78 % of NVLink's bandwidth, Calculon says
    65 %); a send between two GPUs 20 % slow."""
    link = accelerator("A100").interconnect.scale_up
    points = [("all_reduce", n, b, t) for n, b, t in A100["collectives"]["all_reduce"] if b >= MIB64]
    points += [("send", n, b, t) for n, b, t in A100["collectives"]["send_recv"] if b >= MIB64]
    assert len(points) >= 12 and {n for _, n, _, _ in points} == {2, 4, 8}
    for op, n, nbytes, seconds in points:
        assert collective_seconds(op, nbytes, n, link) == pytest.approx(seconds, rel=0.25), (op, n, nbytes)


def test_ring_factors():
    """What each GPU sends of the buffer, at zero latency: an all-reduce 2(n-1)/n, a gather (n-1)/n, a send 1."""
    link = accelerator("A100").interconnect.scale_up
    unit = 1e9 * link.bandwidth_gbs * link.efficiency  # bytes in one second
    for op, factor in (("all_reduce", 2 * 3 / 4), ("all_gather", 3 / 4), ("reduce_scatter", 3 / 4), ("send", 1)):
        assert collective_seconds(op, unit, 4, link) - link.latency_s == pytest.approx(factor)
    assert collective_seconds("all_reduce", unit, 1, link) == 0.0


def test_mesh_dimensions_fill_the_scale_up_domain_tp_first():
    h100 = accelerator("H100").interconnect
    megatron = Network(h100, dict(tp=8, pp=8, dp=16), h100.domain)  # GPT-3 175B on 1,024 GPUs
    assert megatron.tier("tp")[0] is h100.scale_up
    assert megatron.tier("dp")[0] is h100.scale_out and megatron.tier("pp")[0] is h100.scale_out
    small = Network(h100, dict(tp=4, dp=2, pp=4), h100.domain)   # tp 4 x dp 2 fill a node of 8
    assert [small.tier(d)[0] is h100.scale_up for d in ("tp", "dp", "pp")] == [True, True, False]
    nvl72 = accelerator("GB200").interconnect
    assert Network(nvl72, dict(tp=8, dp=8, pp=2), nvl72.domain).tier("dp")[0] is nvl72.scale_up  # 64 of 72
    assert Network(h100, dict(tp=16), h100.domain).tier("tp")[0] is h100.scale_out  # tp beyond a node


def test_a_full_mesh_gives_a_small_group_its_own_links_only():
    """MI300X: 7 Infinity Fabric links of 128 GB/s both ways; a pair of GPUs has one of them, 64 GB/s each way."""
    mi300 = accelerator("MI300X").interconnect
    assert Network(mi300, dict(tp=2), 8).tier("tp")[1] == pytest.approx(64)
    assert Network(mi300, dict(tp=8), 8).tier("tp")[1] == pytest.approx(7 * 64)


def test_every_interconnect_row_names_its_sources_and_is_plausible():
    for acc in ACCELERATORS:
        system = acc.interconnect
        if system is None:
            continue
        assert system.domain >= 1 and system.scale_up.source and system.scale_out.source
        # scale-out is slower than scale-up, and neither beats the part's own memory
        assert system.scale_out.bandwidth_gbs < system.scale_up.bandwidth_gbs < acc.bandwidth_gbs, acc.name
