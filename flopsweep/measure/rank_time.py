"""A parallel layout's step time from its counted ranks (docs/parallel.md, "The predicted step"): each rank's compute
(its traced ops on a part's profile, :func:`~flopsweep.measure.predict.predict`), the part of its communication that
compute does not hide (:class:`~flopsweep.core.comm.Network`), and the pipeline's bubble.

- Tensor-, context- and expert-parallel collectives (attention's gathered keys and values, the experts' all-to-all
  dispatch and combine) and the pipeline's sends are on the critical path, each micro-batch.
- Data-parallel traffic overlaps compute one unit (an FSDP layer, a gradient) at a time: the first gather and the
  last reduction are exposed, the rest hidden up to what the window's other units compute. ZeRO-3 gathers and
  reduces every micro-batch, its forward gathers under the forward, its backward gathers and reductions under the
  backward; ZeRO 0-2 accumulate gradients over the step and reduce them once, under the last micro-batch's backward,
  and gather the weights once, under the first micro-batch's forward (Megatron-LM's distributed optimizer).
- The bubble: 1F1B idles ``(p - 1)`` micro-batch times of the slowest stage, the interleaved schedule ``(p - 1) / v``
  (Narayanan et al. 2021: ``(p - 1) / m`` and ``(p - 1) / (v m)`` of the ideal step).
- Routing imbalance (``parallel.expert_load`` L): the busiest expert-parallel rank receives L times an even share of
  the routed rows, and every rank waits for it at the all-to-all: its routed experts' matmuls take L times their
  counted time and its all-to-alls L times their bytes (the step's model FLOPs stay the even ones).
- DualPipe (DeepSeek-AI 2024, section 3.2.1 and table 2): a rank holds stages ``i`` and ``p - 1 - i`` and runs half
  the micro-batches through each, so its step is the two counted ranks' (the first and the last stage) each over
  ``m / 2`` micro-batches, with both optimizers and both stages' data-parallel traffic. A forward chunk runs beside
  another micro-batch's backward chunk: their expert-parallel all-to-alls and pipeline sends are hidden under the
  pair's compute, exposed only where they exceed it. Its bubble is ``(p/2 - 1)(F&B + B - 3W)`` chunk times: with
  ``F&B`` a forward and a backward chunk run together (their compute, ``F + B``) and ``W`` the weights' gradients
  (taken as half of ``B``), ``(p/2 - 1)(F + B/2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from flopsweep.core.comm import Network
from flopsweep.measure.experts import EXPERT_DATA_DIM
from flopsweep.measure.layout import DATA_DIM, Layout
from flopsweep.measure.predict import Prediction
from flopsweep.measure.rank_count import CollectiveKey
from flopsweep.measure.ranks import LayoutCount, RankCount

BACKWARD_PHASES = ("backward", "recompute")
DATA_DIMS = ("dp", DATA_DIM, EXPERT_DATA_DIM)  # data-parallel groups: dp's, dp x cp's, the experts' replicas


def times_a_step(key: CollectiveKey, layout: Layout, micro_batches: int) -> int:
    """How often a counted micro-batch's collective runs in a step: the optimizer's and, below ZeRO-3, the
    data-parallel gathers and reductions once; everything else every micro-batch."""
    if key.phase == "optimizer" or (key.mesh_dim in DATA_DIMS and layout.zero < 3):
        return 1
    return micro_batches


def step_bytes(rank: RankCount, layout: Layout, micro_batches: int) -> dict[str, int]:
    """Bytes of each collective one step moves on ``rank`` (the whole buffers, as counted)."""
    out: dict[str, int] = {}
    for key, tally in rank.collectives.items():
        out[key.op] = out.get(key.op, 0) + tally.bytes * times_a_step(key, layout, micro_batches)
    return out


@dataclass(frozen=True)
class RankTime:
    """One rank's step: per micro-batch its compute (forward, backward, recomputation), tensor- and context-parallel
    collectives and pipeline sends; once a step its optimizer (and any collective in it) and data-parallel traffic,
    all of it (``dp_s``) and what is exposed."""

    stage: int
    compute_s: float
    tp_s: float
    pp_s: float
    optimizer_s: float
    dp_s: float
    dp_exposed_s: float
    cp_s: float = 0.0
    ep_s: float = 0.0
    forward_s: float = 0.0   # of compute_s: the forward's (the rest is the backward's, recomputation included)
    overlapped: bool = False  # DualPipe: the all-to-alls and sends run under the compute of the chunk beside
    experts_s: float = 0.0   # of compute_s: the routed experts' matmuls (their share of the rows as routed)

    @property
    def hidden_s(self) -> float:
        """Seconds of all-to-alls and sends that run under compute, a micro-batch."""
        return min(self.ep_s + self.pp_s, self.compute_s) if self.overlapped else 0.0

    @property
    def micro_batch_s(self) -> float:
        return self.compute_s + self.tp_s + self.cp_s + self.ep_s + self.pp_s - self.hidden_s

    def exposed(self, seconds: float) -> float:
        """What of ``seconds`` of all-to-alls or sends (a share of ``ep_s + pp_s``) the compute does not hide."""
        both = self.ep_s + self.pp_s
        return seconds * (1 - self.hidden_s / both) if both else 0.0

    def step_s(self, micro_batches: int) -> float:
        return micro_batches * self.micro_batch_s + self.optimizer_s + self.dp_exposed_s


@dataclass(frozen=True)
class StepTime:
    seconds: float
    bubble_s: float
    critical: RankTime       # the rank that sets the step
    micro_batches: int
    ranks: tuple[RankTime, ...]

    @property
    def comm_exposed_s(self) -> float:
        r = self.critical
        return self.micro_batches * (r.tp_s + r.cp_s + r.exposed(r.ep_s) + r.exposed(r.pp_s)) + r.dp_exposed_s

    def parts(self) -> dict[str, float]:
        """The step's seconds by what spends them (adding up to the step)."""
        r, m = self.critical, self.micro_batches
        return {"compute": m * r.compute_s + r.optimizer_s, "tensor-parallel collectives": m * r.tp_s,
                "context-parallel gathers": m * r.cp_s, "expert-parallel all-to-alls": m * r.exposed(r.ep_s),
                "pipeline sends": m * r.exposed(r.pp_s),
                "data-parallel gathers and reductions": r.dp_exposed_s,
                "pipeline bubble": self.bubble_s}

    def bottleneck(self, compute_bound: str = "") -> str:
        """What the step mostly waits on, in words, and what follows it; ``compute_bound``: what bounds the compute
        (a prediction's ``bound()``)."""
        shares = sorted(((s / self.seconds, name) for name, s in self.parts().items() if s > 0), reverse=True)
        (top, name), rest = shares[0], [f"{n} {s:.0%}" for s, n in shares[1:] if s >= 0.01]
        bound = f", its ops mostly {compute_bound}-bound" if name == "compute" and compute_bound else ""
        return f"{name}: {top:.0%} of the step{bound}" + (f"; then {', '.join(rest)}" if rest else "")


def _exposed(comm: float, units: int, first: float, window: float) -> float:
    """Seconds of ``units`` transfers (``comm`` in all) issued one per unit of ``window`` seconds of compute that
    compute does not hide: the first (a gather) or the last (a reduction) always, the others up to what the
    window's other units compute."""
    if comm <= 0:
        return 0.0
    units = max(units, 1)
    return max(first, comm - window * (units - 1) / units)


def _data_parallel(rank: RankCount, layout: Layout, network: Network, m: int, forward: float,
                   backward: float) -> tuple[float, float]:
    """(all, exposed) seconds of a step's data-parallel gathers and reductions on ``rank``."""
    gathers = {"forward": [0.0, 0, 0.0], "backward": [0.0, 0, 0.0]}   # seconds, calls, one unit's seconds
    reductions = [0.0, 0, 0.0]
    for key, tally in rank.collectives.items():
        if key.mesh_dim not in DATA_DIMS or not tally.calls:
            continue
        target = reductions if key.op in ("reduce_scatter", "all_reduce") else \
            gathers["backward" if key.phase in BACKWARD_PHASES else "forward"]
        target[0] += network.seconds(key.op, key.mesh_dim, tally.bytes, tally.calls)
        target[1] += tally.calls
        target[2] = max(target[2], network.seconds(key.op, key.mesh_dim, tally.bytes / tally.calls))
    forward_gathers = _exposed(gathers["forward"][0], gathers["forward"][1], gathers["forward"][2], forward)
    late = [gathers["backward"][0] + reductions[0], gathers["backward"][1] + reductions[1],
            max(gathers["backward"][2], reductions[2])]
    late_exposed = _exposed(late[0], late[1], late[2], backward)
    whole = gathers["forward"][0] + late[0]
    runs = m if layout.zero == 3 else 1
    return runs * whole, runs * (forward_gathers + late_exposed)


def rank_time(rank: RankCount, prediction: Prediction, layout: Layout, network: Network, m: int,
              experts_s: float = 0.0) -> RankTime:
    """``rank``'s micro-batch and step parts; ``experts_s``: its routed experts' matmuls' seconds as counted (an even
    share of the rows), scaled by ``layout.expert_load`` as its all-to-alls are."""
    phases = {name: phase.seconds for name, phase in prediction.phases.items()}
    forward, optimizer = phases.get("forward", 0.0), phases.get("optimizer", 0.0)
    backward = sum(phases.get(p, 0.0) for p in BACKWARD_PHASES)
    on_path = {"tp": 0.0, "cp": 0.0, "ep": 0.0, "pp": 0.0}
    for key, tally in rank.collectives.items():
        if key.mesh_dim in DATA_DIMS or key.op == "recv":  # a receive is the peer's send
            continue
        seconds = network.seconds(key.op, key.mesh_dim, tally.bytes, tally.calls)
        if key.phase == "optimizer":
            optimizer += seconds
        else:
            on_path[key.mesh_dim] += seconds
    dp, dp_exposed = _data_parallel(rank, layout, network, m // 2 if layout.dualpipe else m, forward, backward)
    surplus = (layout.expert_load - 1) * experts_s  # the busiest rank's rows beyond an even share
    computed = forward + backward
    return RankTime(rank.stage, computed + surplus, on_path["tp"], on_path["pp"], optimizer, dp, dp_exposed,
                    on_path["cp"], on_path["ep"] * layout.expert_load,
                    forward * (1 + surplus / computed) if computed else forward,  # the surplus split as the rest
                    layout.dualpipe, layout.expert_load * experts_s)


def step_time(count: LayoutCount, predictions: Sequence[Prediction], network: Network,
              experts_s: Sequence[float] = ()) -> StepTime:
    """The step of ``count``'s layout, each counted rank timed by its prediction (in the same order; ``experts_s``
    its routed experts' matmuls' seconds, for ``parallel.expert_load``)."""
    m, layout = count.micro_batches, count.layout
    experts_s = tuple(experts_s) or (0.0,) * len(count.ranks)
    ranks = tuple(rank_time(r, p, layout, network, m, e) for r, p, e in zip(count.ranks, predictions, experts_s))
    if layout.dualpipe:
        return _dualpipe(ranks, layout.pp, m)
    bubble = (layout.pp - 1) / layout.vpp * max(r.micro_batch_s for r in ranks)
    critical = max(ranks, key=lambda r: r.step_s(m))
    return StepTime(critical.step_s(m) + bubble, bubble, critical, m, ranks)


def _dualpipe(ranks: tuple[RankTime, ...], pp: int, m: int) -> StepTime:
    """DualPipe's step: the rank holding the first and the last stage (the counted two), each over half the
    micro-batches, as one rank of their mean micro-batch and both optimizers and data-parallel traffic; its bubble
    ``(p/2 - 1)(F + B/2)`` of that mean."""
    first, last = ranks

    def mean(name: str) -> float:
        return (getattr(first, name) + getattr(last, name)) / 2

    device = RankTime(0, mean("compute_s"), mean("tp_s"), mean("pp_s"), first.optimizer_s + last.optimizer_s,
                      first.dp_s + last.dp_s, first.dp_exposed_s + last.dp_exposed_s, mean("cp_s"), mean("ep_s"),
                      mean("forward_s"), overlapped=True, experts_s=mean("experts_s"))
    backward = device.compute_s - device.forward_s
    bubble = (pp / 2 - 1) * (device.forward_s + backward / 2)
    return StepTime(device.step_s(m) + bubble, bubble, device, m, (device,))
