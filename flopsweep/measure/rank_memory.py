"""One rank's memory in a parallel layout (:class:`RankMemory`): the peaks of the places of its step that each grow by
the same bytes a layer (so that a count from samples of the layers grows them one by one,
:mod:`~flopsweep.measure.rank_sample`), in our categories of PyTorch's memory trackers' (docs/parallel.md)."""

from __future__ import annotations

from dataclasses import dataclass


# PyTorch's memory trackers' categories -> ours (docs/parallel.md)
MEMORY_CATEGORIES = {"Sharded Param": "weights", "Parameter": "weights", "Unsharded Param": "gathered_weights",
                     "Buffer": "buffers", "Sharded Grad": "gradients", "Gradient": "gradients",
                     "Unsharded Grad": "unsharded_gradients", "OptState": "optimizer_state",
                     "Optstate": "optimizer_state", "Activation": "activations", "All Gather": "communication",
                     "Reduce Scatter": "communication", "Inputs": "batch", "Temp": "temporary", "Other": "temporary"}


@dataclass(frozen=True)
class RankMemory:
    """One rank's memory: the peaks of a step with one micro-batch, by category and ``total``, the activations one
    micro-batch leaves saved for backward, and the micro-batches in flight under 1F1B. The peaks are those of the
    forward (at its end: every activation saved, the loss's logits), the optimizer's step, and four segments of the
    backward, each ending as a layer's input (or the loss's) gets its gradient: the first, the second, the one
    before last and the last (``backward_first`` ...; a middle segment's peak lies between its neighbours'). Each
    grows by the same bytes with each layer more (the activations still held, the gradients made), so a count from
    samples of the layers grows them one by one; the step's peak is the largest."""

    peaks: dict[str, dict[str, int]]
    activations_bytes: int
    in_flight: float
    partner_states: int = 0  # under DualPipe, the states of the other stage the rank holds (:attr:`states_bytes`)

    @classmethod
    def of_segments(cls, segments: list[tuple[str, dict[str, int]]], activations_bytes: int,
                    in_flight: float) -> "RankMemory":
        """From a memory tracker's peaks of the step's segments, in order, as ``run_step`` ends them."""
        return cls(_peaks(segments), activations_bytes, in_flight)

    @property
    def peak_bytes(self) -> int:
        return max(peak["total"] for peak in self.peaks.values())

    @property
    def at_peak(self) -> dict[str, int]:
        """The step's peak by category."""
        top = max(self.peaks.values(), key=lambda peak: peak["total"])
        return {name: value for name, value in top.items() if name != "total"}

    @property
    def peak_in_flight_bytes(self) -> int:
        """The peak with every micro-batch in flight holding its activations (the others add theirs), and the states
        of a second stage where the rank holds one."""
        return self.peak_bytes + round((self.in_flight - 1) * self.activations_bytes) + self.partner_states

    @property
    def states_bytes(self) -> int:
        """What the rank holds from step to step: its weights, their gradients (the weights' shards and dtype),
        buffers and the optimizer's state, as the forward holds them (the optimizer's own peak adds its update's
        temporaries to the state's category: AdamW's, a third float32 copy)."""
        held = self.peaks["forward"]
        return 2 * held.get("weights", 0) + held.get("buffers", 0) + held.get("optimizer_state", 0)


def _peaks(segments: list[tuple[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """The peaks :class:`RankMemory` keeps, from those of the step's segments in order (a memory tracker's
    snapshots): the forward, the backward's (each ending as a layer's input gets its gradient, the last with the
    backward), the optimizer's."""
    segments = [(name, _categories(peak)) for name, peak in segments]
    peaks = {name: peak for name, peak in segments if name in ("forward", "optimizer")}
    backward = [peak for name, peak in segments if name in ("backward_segment", "backward")]
    for role, at in (("backward_first", 0), ("backward_second", 1), ("backward_penultimate", -2),
                     ("backward_last", -1)):
        peaks[role] = backward[at] if -len(backward) <= at < len(backward) else backward[-1]
    return peaks


def _categories(peak: dict[str, int]) -> dict[str, int]:
    """A memory tracker's snapshot in our categories (``MEMORY_CATEGORIES``), with its ``total``."""
    out = {"total": peak.get("Total", 0)}
    for name, value in peak.items():
        if name != "Total":
            out[MEMORY_CATEGORIES.get(name, name)] = out.get(MEMORY_CATEGORIES.get(name, name), 0) + value
    return out
