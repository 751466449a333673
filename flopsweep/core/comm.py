"""A collective's time on an interconnect (no torch): ``latency + factor x bytes / (bandwidth x efficiency)`` with the
ring algorithms' factors, and where a parallel layout's groups lie: mesh dimensions placed on the scale-up domain
first (tp innermost, then cp, ep, dp, pp), a group that spans domains on the scale-out network. docs/parallel.md.

``bytes`` is the whole buffer a collective works on (an all-gather's output, a reduce-scatter's input, an
all-reduce's tensor, what a send moves), as the rank counter records it and the NCCL tests call it "size"; the
factor turns it into what each GPU sends: a ring all-reduce ``2 (n - 1) / n`` of it, an all-gather or a
reduce-scatter ``(n - 1) / n``, a send the whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

from flopsweep.core.hardware import Interconnect, Link

RING_FACTORS = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
                "reduce_scatter": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n,
                "broadcast": lambda n: 1.0, "send": lambda n: 1.0, "recv": lambda n: 1.0}
PLACEMENT = ("tp", "cp", "dp", "pp")  # innermost first; ep's groups are dp's innermost ranks (within dp x cp)
_WITHIN = {"ep": "dp", "dp_cp": "cp"}  # a group that is not a dimension of its own: the dimension it starts at


def collective_seconds(op: str, nbytes: float, n: int, link: Link, bandwidth_gbs: Optional[float] = None,
                       calls: int = 1) -> float:
    """Seconds of ``calls`` collectives ``op`` moving ``nbytes`` in all over a group of ``n`` on ``link``
    (``bandwidth_gbs``: the link's unless given)."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    bandwidth = (bandwidth_gbs if bandwidth_gbs is not None else link.bandwidth_gbs) * 1e9 * link.efficiency
    return calls * link.latency_s + RING_FACTORS[op](n) * nbytes / bandwidth


@dataclass(frozen=True)
class Network:
    """A layout's mesh (``sizes``: ``tp``, ``cp``, ``dp``, ``pp`` and ``ep``) on ``interconnect``, with ``domain``
    GPUs a scale-up domain (a node's NVSwitch, an NVL72 rack, a TPU pod)."""

    interconnect: Interconnect
    sizes: Mapping[str, int]
    domain: int

    def stride(self, dim: str) -> int:
        """Ranks between two neighbours of a ``dim`` group (ep's are dp's innermost; ``dp_cp``, the data-parallel
        group under context parallelism, is the cp and dp dimensions flattened: cp's neighbours, cp x dp of them)."""
        if dim == "edp":  # the ranks that hold the same experts: every ep-th of the data-parallel ones
            return self.stride("ep") * self.sizes.get("ep", 1)
        inner = PLACEMENT[:PLACEMENT.index(_WITHIN.get(dim, dim))]
        return math.prod(self.sizes.get(d, 1) for d in inner)

    def within_domain(self, dim: str) -> bool:
        return self.stride(dim) * self.sizes.get(dim, 1) <= self.domain

    def tier(self, dim: str) -> tuple[Link, float]:
        """The link a ``dim`` group's collectives take and the bandwidth each GPU gets on it (GB/s each way); the
        ``embedding`` group, the first and last stages' ranks, takes the pipeline's."""
        dim = "pp" if dim == "embedding" else dim
        if not self.within_domain(dim):
            return self.interconnect.scale_out, self.interconnect.scale_out.bandwidth_gbs
        up = self.interconnect.scale_up
        if self.interconnect.full_mesh and self.domain > 1:
            return up, up.bandwidth_gbs * (self.sizes.get(dim, 1) - 1) / (self.domain - 1)
        return up, up.bandwidth_gbs

    def seconds(self, op: str, dim: str, nbytes: float, calls: int = 1) -> float:
        link, bandwidth = self.tier(dim)
        return collective_seconds(op, nbytes, self.sizes.get(dim, 1), link, bandwidth, calls)
