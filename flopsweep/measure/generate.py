"""Generation with a KV cache (``workload=generate``), counted and timed: a prompt's prefill, then one token per
sequence per decode step, each step attending to every token before it.

A decode step's cost is affine in its context (the tokens it attends to): the weights' matmuls are the same at every
step, attention's grow by one key and value per step. So two steps are counted (at the first and second contexts),
the line through them predicts the cost at the last context, and a step counted there must equal it exactly (a
prefill of the tokens before it makes its cache); the total is then the line's sum over every step. A model whose
cost bends (a sliding window stops a layer's cache from growing at its width) is split in halves until every piece
passes that check, a few dozen steps counted for the bends of a 32k-token generation. A piece whose end lies on the
line through its first two steps is taken as affine: exact for a cost that only ever bends one way, as windows make
it (a layer's attention grows, then stays flat).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from flopsweep.measure._torch import EagerDispatchMode, storage_id, tree_leaves
from flopsweep.measure.count import PhaseCount, StepCount, count_call
from flopsweep.measure.size import LiveBytes, StepMemory, int8_size, stored_sizes
from flopsweep.measure.timing import Clock, Stats, repeat


class Generator(Protocol):
    """Token-by-token generation with a KV cache (``workload=generate``). ``prefill(tokens)`` runs a prompt, token ids
    (B, P), and returns the cache it filled; ``decode(tokens, cache)`` runs one new token per sequence (B, 1) against
    the cache and returns the cache with it appended. Both compute the logits of the last position only, as
    generation does; which token comes next is the caller's (the counts do not depend on it)."""

    vocab_size: int

    def prefill(self, tokens: torch.Tensor) -> Any: ...

    def decode(self, tokens: torch.Tensor, cache: Any) -> Any: ...


Tokens = Callable[[int], torch.Tensor]  # length -> token ids (B, length) on the job's device


@dataclass(frozen=True)
class GenerationCount:
    """A generation of ``new_tokens`` after a prompt of ``prompt`` tokens, at ``batch`` sequences. The prefill gives
    the first new token; each decode step feeds one and gives the next: ``new_tokens - 1`` steps, at contexts
    ``prompt + 1`` to ``prompt + new_tokens - 1``. FLOPs of the decode steps are for the whole batch."""

    batch: int
    prompt: int
    new_tokens: int
    prefill: StepCount                   # with the ops no formula counts (the decode steps run the same ones)
    decode_first: Optional[PhaseCount]   # the step at the first context; None with a single new token
    decode_last: Optional[PhaseCount]    # ... at the last context
    decode_matmul: int                   # every decode step's matmul FLOPs
    decode_elementwise: int
    method: str                          # how the decode steps were counted
    kv_cache_bytes: int                  # the cache at the last context, by its tensors' storages
    weights_read_bytes: Optional[int]    # the parameters and buffers one decode step reads
    routed_bytes: int = 0                # a mixture of experts: every routed expert's weights (0: none)
    routed_read_bytes: int = 0           # ... of them, those the counted decode step read (on meta: every expert)
    first_cache_bytes: Optional[int] = None  # the cache after the first decode step (context prompt + 1)

    def cache_line(self) -> tuple[float, float]:
        """A sequence's cache as a line in its tokens: (bytes a token, bytes whatever the tokens), through the cache
        after the first decode step and at the last context. A transformer's grows by the token and holds nothing
        else; a state-space model's is a state of fixed size (its scan's and its convolutions'); a sliding window's
        stops growing at the window (its full part is then the fixed one). With fewer than two decode steps, the
        last cache over its tokens."""
        span = self.last_context - (self.prompt + 1)
        if self.first_cache_bytes is None or span <= 0:
            return self.kv_cache_bytes / (self.batch * self.last_context), 0.0
        per_token = max(0.0, (self.kv_cache_bytes - self.first_cache_bytes) / (self.batch * span))
        return per_token, max(0.0, self.first_cache_bytes / self.batch - per_token * (self.prompt + 1))

    @property
    def steps(self) -> int:
        return self.new_tokens - 1

    @property
    def last_context(self) -> int:
        """The tokens in the cache at the end: the prompt and every new token but the last (never fed back)."""
        return self.prompt + self.steps


def count_generation(model: nn.Module, gen: Generator, tokens: Tokens, prompt: int, new_tokens: int, *,
                     causal_half: bool = False, context: Callable[[], Any] = None,
                     experts: Optional[int] = None, int8: bool = False) -> GenerationCount:
    """Count a generation (see the module's docstring); ``tokens(n)`` makes a batch of n token ids; ``experts``: the
    routed experts of a mixture of experts' layers (their weights found by :func:`routed_experts`); int8 weights."""
    def count(run: Callable[[], Any]) -> tuple[PhaseCount, Any]:
        counted, out = count_call(model, run, causal_half=causal_half, context=context)
        return counted.forward, out

    prefill, cache = count_call(model, lambda: gen.prefill(tokens(prompt)), causal_half=causal_half,
                                context=context)
    batch = tokens(1).shape[0]
    steps = new_tokens - 1
    if steps == 0:
        return GenerationCount(batch, prompt, new_tokens, prefill, None, None, 0, 0, "no decode step",
                               cache_bytes(cache), None)
    with Reads(stored_sizes(model, int8)) as reads:
        first, cache = count(lambda: gen.decode(tokens(1), cache))
    first_cache = cache_bytes(cache)
    lo, hi = prompt + 1, prompt + steps  # the contexts of the first and the last decode steps
    known = {lo: first}
    if steps >= 2:
        known[lo + 1], cache = count(lambda: gen.decode(tokens(1), cache))
    last_cache = [cache if steps <= 2 else None]
    cache = None  # on a device, the steps below make caches of their own: this one need not stay beside them

    def at(c: int) -> PhaseCount:
        """A decode step at context ``c``, on a cache of the ``c - 1`` tokens before it made by a prefill."""
        if c not in known:
            with torch.no_grad(), (context() if context else contextlib.nullcontext()):
                before = gen.prefill(tokens(c - 1))
            known[c], after = count(functools.partial(gen.decode, tokens(1), before))
            if c == hi:
                last_cache[0] = after
        return known[c]

    pieces: list[tuple[int, int]] = []

    def total(a: int, b: int) -> tuple[int, int]:
        """The steps at contexts ``a`` to ``b``: on the line through the first two if it meets the step counted at
        ``b``, else the two halves, each the same way."""
        fa, fb = at(a), at(b)
        if b - a <= 1:
            return (fa.matmul + (fb.matmul if b > a else 0), fa.elementwise + (fb.elementwise if b > a else 0))
        f1 = at(a + 1)
        slope = (f1.matmul - fa.matmul, f1.elementwise - fa.elementwise)
        if (fa.matmul + slope[0] * (b - a), fa.elementwise + slope[1] * (b - a)) == (fb.matmul, fb.elementwise):
            pieces.append((a, b))
            n = b - a + 1
            return (n * fa.matmul + slope[0] * n * (n - 1) // 2, n * fa.elementwise + slope[1] * n * (n - 1) // 2)
        mid = (a + b) // 2
        left, right = total(a, mid), total(mid + 1, b)
        return left[0] + right[0], left[1] + right[1]

    matmul, elementwise = total(lo, hi)
    if steps <= 2:
        method = "every step counted"
    elif len(pieces) == 1:
        method = (f"2 steps counted, the rest on the line through them (affine in the context), checked by a step "
                  f"counted at the last context ({hi})")
    else:
        method = (f"{len(pieces)} pieces, each on the line through its first two steps and checked at its last "
                  f"(the cost bends: a sliding window stops growing); {len(known)} steps counted")
    routed = routed_experts(model, experts, int8) if experts else {}
    return GenerationCount(batch, prompt, new_tokens, prefill, first, at(hi), matmul, elementwise, method,
                           cache_bytes(last_cache[0]), reads.bytes, sum(routed.values()),
                           sum(routed[key] for key in reads.read if key in routed), first_cache)


def routed_experts(model: nn.Module, experts: int, int8: bool = False) -> dict[int, int]:
    """The storages (id -> bytes) of the routed experts' weights of a model with ``experts`` experts a layer: the
    parameters of a module list ``experts`` (``mlp.experts.3.w1.weight``, as Mixtral had them), or stacked, a tensor
    of ``experts`` leading rows under a module ``experts`` (``mlp.experts.gate_up_proj``, as Hugging Face stacks them
    now) or of three or more dimensions (ResNet-BK's ``moe.w1``). Shared experts (``shared_experts``) are not routed."""
    found = {}
    for name, p in model.named_parameters():
        path = name.split(".")
        listed = any(a == "experts" and b.isdigit() for a, b in zip(path, path[1:]))
        stacked = p.dim() >= 2 and p.shape[0] == experts and ("experts" in path[:-1] or p.dim() >= 3)
        if listed or stacked:
            found[storage_id(p)] = int8_size(p) if int8 else p.untyped_storage().nbytes()
    return found


class Reads(EagerDispatchMode):
    """While entered, the bytes of the ``weights`` (storage id -> bytes) that ops read, each storage once; of an
    embedding table only the rows looked up (unless another op reads it whole: a tied head)."""

    def __init__(self, weights: dict[int, int]):
        super().__init__()
        self.weights, self.read, self.rows = weights, set(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.embedding.default:
            table, indices = args[0], args[1]
            key = storage_id(table)
            if key in self.weights:
                row = self.weights[key] // table.shape[0]  # as stored: an int8 row has its scale
                self.rows[key] = self.rows.get(key, 0) + indices.numel() * row
        else:
            for t in tree_leaves((args, kwargs or {})):
                if isinstance(t, torch.Tensor):
                    key = storage_id(t)
                    if key in self.weights:
                        self.read.add(key)
        return func(*args, **(kwargs or {}))

    @property
    def bytes(self) -> int:
        return sum(self.weights[key] for key in self.read) + \
            sum(min(rows, self.weights[key]) for key, rows in self.rows.items() if key not in self.read)  # at most
        # the whole table, however many tokens look it up (40,000 sequences read 13.54 GB of a 13.48 GB model)


def cache_bytes(cache: Any) -> int:
    """The bytes of every tensor a cache holds, each storage once."""
    return sum({storage_id(t): t.untyped_storage().nbytes() for t in cache_tensors(cache)}.values())


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """Every tensor a cache holds: in lists, tuples, dicts and objects' attributes, four levels down."""
    seen: list[torch.Tensor] = []

    def walk(obj: Any, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            seen.append(obj)
        elif depth < 4:
            if isinstance(obj, dict):
                items = obj.values()
            elif isinstance(obj, (list, tuple)):
                items = obj
            else:
                items = vars(obj).values() if hasattr(obj, "__dict__") else ()
            for item in items:
                walk(item, depth + 1)

    walk(cache, 0)
    return seen


def simulate_generation(model: nn.Module, gen: Generator, tokens: Tokens, prompt: int, new_tokens: int, *,
                        context: Callable[[], Any] = None, int8: bool = False) -> StepMemory:
    """The most bytes alive at once in a generation (run it on meta): the prefill's peak (the weights, the prompt's
    temporaries and its cache) or the last decode step's (the weights, the whole cache and the step's temporaries,
    a cache growing by concatenation briefly twice for a layer), whichever is more; and what was alive at it."""
    enter = context or contextlib.nullcontext

    def watched(alive: list[torch.Tensor]) -> LiveBytes:
        live = LiveBytes()
        live.track(*model.parameters(), category="weights", size=int8_size if int8 else None)
        live.track(*model.buffers(), category="buffers")
        live.track(*alive, category="kv_cache")
        return live

    with torch.no_grad(), enter():
        first = watched([])
        with first:
            cache = gen.prefill(tokens(prompt))
            first.label(cache_tensors(cache), "kv_cache")
        del cache
        peak = first
        if new_tokens > 1:
            before = gen.prefill(tokens(prompt + new_tokens - 2))
            last = watched(cache_tensors(before))
            with last:
                after = gen.decode(tokens(1), before)
                last.label(cache_tensors(after), "kv_cache")
            del before, after
            peak = max(first, last, key=lambda live: live.peak)
    return StepMemory(peak.peak, None, peak.at_peak())


@dataclass(frozen=True)
class GenerationTiming:
    """Time to the first token (the prefill), and time per output token (a decode step of the batch) at the first
    contexts and at the last ones."""

    ttft: Stats
    tpot_first: Stats
    tpot_last: Optional[Stats]


def time_generation(gen: Generator, tokens: Tokens, prompt: int, new_tokens: int, device: str, *, warmup: int,
                    repeats: int, context: Callable[[], Any] = None) -> GenerationTiming:
    """Time the prefill ``warmup + repeats`` times, then as many decode steps from its cache (contexts from
    ``prompt + 1``), and as many from a cache of the last context (when the generation is longer than that)."""
    clock = Clock(device)
    enter = context or contextlib.nullcontext
    prompt_tokens, one = tokens(prompt), tokens(1)
    with torch.no_grad(), enter():
        def prefill() -> list[Any]:
            t0 = clock.mark()
            gen.prefill(prompt_tokens)
            return [t0, clock.mark()]

        ttft = Stats.of([run[0] for run in repeat(clock, warmup, repeats, prefill, what="the prefill")])

        def decoding(cache: Any) -> Stats:
            state = [cache]

            def decode() -> list[Any]:
                t0 = clock.mark()
                state[0] = gen.decode(one, state[0])
                return [t0, clock.mark()]

            return Stats.of([run[0] for run in repeat(clock, warmup, repeats, decode, what="a decode step")])

        first = decoding(gen.prefill(prompt_tokens))
        last_start = prompt + new_tokens - 1 - (warmup + repeats)
        last = decoding(gen.prefill(tokens(last_start))) if last_start > prompt else None
    return GenerationTiming(ttft, first, last)
