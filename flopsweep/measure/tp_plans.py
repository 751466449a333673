"""One pipeline rank's part of a decoder-only language model (:class:`Stage`) and its tensor-parallel plan, written
with PyTorch's own styles (``parallelize_module``: column- and row-wise linears, sequence-parallel norms, a
vocabulary-parallel embedding and head with ``loss_parallel``), as Megatron-LM lays a transformer out.

The kinds of model known, by their modules' names (measurement imports no model family):

- flopsweep's decoder: ``tok_embedding`` (and ``pos_embedding``), ``blocks`` of ``norm1``, ``attn.qkv`` (q, k and v
  fused), ``attn.out``, ``norm2``, ``mlp.gate``/``mlp.up``/``mlp.down``; ``norm``, ``lm_head``;
- Hugging Face Llama-style decoders (Llama, Mistral, Qwen2, ...): ``model.embed_tokens``, ``model.layers`` of
  ``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj``;
  ``model.norm``, ``model.rotary_emb``, ``lm_head``;
- Hugging Face mixtures of experts with Llama-style attention (Mixtral, Qwen2-MoE, Qwen3-MoE): ``mlp.gate`` (the
  router) and ``mlp.experts`` (stacked weights) in place of the MLP, their experts split over ``ep`` and each expert
  over ``tp`` (:mod:`~flopsweep.measure.experts`);
- Hugging Face mixtures of experts with multi-head latent attention (DeepSeek-V2/V3, Kimi K2): ``self_attn``'s
  ``kv_a_proj_with_mqa``, ``kv_b_proj`` and ``o_proj``, ``mlp.shared_experts`` beside the routed ones, split as the
  others;
- Hugging Face GPT-NeoX (Pythia, GPT-NeoX-20B): ``gpt_neox.embed_in``, ``gpt_neox.layers`` of ``input_layernorm``,
  ``attention.query_key_value`` (fused), ``attention.dense``, ``post_attention_layernorm``,
  ``mlp.dense_h_to_4h``/``mlp.dense_4h_to_h``; ``gpt_neox.final_layer_norm``, ``gpt_neox.rotary_emb``, ``lm_head``;
- Hugging Face GPT-2: ``transformer.wte`` and ``transformer.wpe``, ``transformer.h`` of ``ln_1``, ``attn.c_attn``
  (fused), ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``/``mlp.c_proj``; ``transformer.ln_f``, ``lm_head``. Its linears are
  ``Conv1D`` (a transposed ``nn.Linear``, which PyTorch's styles do not split): under tensor parallelism each becomes
  the ``nn.Linear`` of its shape, the same matrix products.

A column-parallel fused ``qkv`` splits the fused rows in ``tp`` contiguous pieces; Megatron-LM stores them interleaved
by head group so that each piece is whole heads. The shapes, so the counts, are the same either way (the values are
fake). Tied embeddings stay tied on a stage that holds both ends; across stages the head keeps its own copy.

Why one file: a kind is a few names on the one layer plan (:func:`_layer_plan`) and the stage it shares with the
others; whoever adds a kind reads every other kind's names beside it, and the lookup (:func:`_kind`) that tells them
apart.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                               SequenceParallel, parallelize_module)

from flopsweep.core.errors import ConfigError
from flopsweep.measure.experts import ExpertsShard, tensor_parallel_moe


class Stage(nn.Module):
    """The model chunks one pipeline rank holds (``chunks``: lists of layer indices), the embedding if it holds the
    first layer, the final norm, head and loss if it holds the last. Its forward runs one chunk (FSDP's hooks run on
    each call); the pipeline's sends and receives sit between chunks (``measure.ranks``)."""

    def __init__(self, layers: list[nn.Module], chunks: list[list[int]], first: bool, last: bool, hidden_size: int):
        super().__init__()
        self.chunks = nn.ModuleList(nn.ModuleList(layers[i] for i in chunk) for chunk in chunks)
        self.first, self.last, self.hidden_size = first, last, hidden_size
        self.embedding: Optional[nn.Module] = None  # the first stage's (and its learned positions, if any)
        self.positions: Optional[nn.Module] = None

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor, pipe: Any) -> list[tuple[Any, torch.Tensor]]:
        """One micro-batch through the chunks in turn: the first chunk of the model embeds ``tokens``, any other
        takes ``pipe.receive()``; the last of the model returns the loss, any other ``pipe.send``-s its output;
        each layer's input and the loss's are shown to ``pipe.mark``. One call for all chunks (FSDP's root runs once
        a micro-batch); ``(received or None, output)`` per chunk."""
        runs = []
        for index, chunk in enumerate(self.chunks):
            received = None if self.first and index == 0 else pipe.receive()
            x = self.embed(tokens) if received is None else received
            for layer in chunk:
                pipe.mark(x)
                x = self.run_layer(layer, x)
            if self.last and index == len(self.chunks) - 1:
                pipe.mark(x)
                x = self.loss(x, targets)
            else:
                pipe.send(x)
            runs.append((received, x))
        return runs

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first stage's tokens embedded (``self.embedding``), learned positions added (``self.positions``)."""
        x = self.embedding(tokens)
        if self.positions is not None:
            x = x + self.positions(torch.arange(tokens.shape[1], device=tokens.device))
        return x

    def begin(self, seq_len: int) -> None:
        """Called before a micro-batch of ``seq_len`` tokens a sequence runs (what every layer needs: rotary angles)."""

    def run_layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer(x)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return (self.embedding if self.first else self.lm_head).weight.shape[0]

    def plan(self, tp_mesh: Any, sequence_parallel: bool) -> None:
        """Apply tensor parallelism over ``tp_mesh`` in place."""
        raise NotImplementedError

    def shard_experts(self, ep: int, group: Any) -> None:
        """Split the routed experts over the ``ep`` ranks of ``group`` (:mod:`~flopsweep.measure.experts`)."""
        raise ConfigError("parallel.ep", ep, f"splits a mixture of experts' experts: {type(self).__name__} has none")

    def _plan_ends(self, tp_mesh: Any, sequence_parallel: bool, embedding: Optional[nn.Module]) -> None:
        """The embedding split by vocabulary rows, its output summed (or scattered by sequence under sequence
        parallelism), learned positions replicated; the final norm on the sequence's shards under it; the head split
        by vocabulary columns, its logits left split for ``loss_parallel`` (Megatron-LM's vocabulary-parallel
        cross-entropy)."""
        seq = Shard(1) if sequence_parallel else Replicate()
        if embedding is not None:
            parallelize_module(embedding, tp_mesh, RowwiseParallel(input_layouts=Replicate(), output_layouts=seq))
            if self.positions is not None:
                distribute_module(self.positions, tp_mesh, input_fn=_replicated_input,
                                  output_fn=_positions_output(sequence_parallel))
        if self.last:
            if sequence_parallel:
                parallelize_module(self.norm, tp_mesh, SequenceParallel())
            parallelize_module(self.lm_head, tp_mesh, ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1),
                                                                      use_local_output=False))
            if embedding is not None and self.tied:
                self.lm_head.weight = embedding.weight


def _layer_plan(names: dict[str, str], sequence_parallel: bool, attn_args: Optional[tuple] = None,
                attn_kwarg: Optional[str] = None, local_attention_input: bool = False) -> dict[str, Any]:
    """A transformer layer's plan: ``names`` maps ``col``/``row``/``norm``/``attn``/``mlp`` roles to module names
    (``col``, ``row`` and ``norm`` comma-separated). The attention and the MLP take their input as one DTensor
    (``PrepareModuleInput``), so that their column-parallel linears share it: one all-gather under sequence
    parallelism (the norms then run on the sequence's shards and the row-parallel outputs are reduce-scattered), one
    all-reduce of its gradient in backward without it (Megatron-LM's f and g operators). ``local_attention_input``:
    the attention takes it as a plain tensor, for attentions whose replicated linears run before the split ones
    (latent attention's down-projections): each split linear's input then has its gradient all-reduced itself."""
    seq = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, Any] = {name: ColwiseParallel() for name in names["col"].split(",")}
    plan.update({name: RowwiseParallel(output_layouts=seq) for name in names["row"].split(",")})
    if sequence_parallel:
        plan.update({name: SequenceParallel() for name in names["norm"].split(",")})
    plan[names["mlp"]] = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),))
    if attn_kwarg is None:
        plan[names["attn"]] = PrepareModuleInput(input_layouts=(seq, *attn_args[1:]),
                                                 desired_input_layouts=(Replicate(), *attn_args[1:]))
    else:
        plan[names["attn"]] = PrepareModuleInput(input_kwarg_layouts={attn_kwarg: seq},
                                                 desired_input_kwarg_layouts={attn_kwarg: Replicate()},
                                                 use_local_output=local_attention_input)
    return plan


class DecoderStage(Stage):
    """A pipeline rank of flopsweep's decoder (``models/decoder.py``)."""

    def __init__(self, model: nn.Module, chunks: list[list[int]], first: bool, last: bool):
        super().__init__(list(model.blocks), chunks, first, last, model.tok_embedding.embedding_dim)
        self.tied = getattr(model.lm_head, "weight", None) is getattr(model.tok_embedding, "weight", None)
        if first:
            self.embedding, self.positions = model.tok_embedding, getattr(model, "pos_embedding", None)
        if last:
            self.norm, self.lm_head, self.loss_fn = model.norm, model.lm_head, model.loss

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.lm_head(self.norm(x)).flatten(0, 1), targets.flatten())

    @staticmethod
    def layers(model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def plan(self, tp_mesh: Any, sequence_parallel: bool) -> None:
        tp = tp_mesh.size()
        names = dict(col="attn.qkv,mlp.up", row="attn.out,mlp.down", norm="norm1,norm2", attn="attn", mlp="mlp")
        for chunk in self.chunks:
            for block in chunk:
                cols = names["col"] + (",mlp.gate" if hasattr(block.mlp, "gate") else "")
                parallelize_module(block, tp_mesh, _layer_plan({**names, "col": cols}, sequence_parallel,
                                                               attn_args=(None, None, None)))
                block.attn.n_head //= tp      # the heads this rank computes: the views it makes follow them
                block.attn.n_kv_head //= tp
        self._plan_ends(tp_mesh, sequence_parallel, self.embedding if self.first else None)


def _replicated_input(module: nn.Module, inputs: Any, mesh: Any) -> Any:
    from torch.distributed.tensor import DTensor
    return tuple(DTensor.from_local(t, mesh, [Replicate()]) for t in inputs)


def _positions_output(sequence_parallel: bool) -> Callable[[nn.Module, Any, Any], torch.Tensor]:
    """Position embeddings are replicated (Megatron-LM's too); under sequence parallelism each rank keeps the rows of
    its own positions (a slice, no communication)."""
    def output(module: nn.Module, out: Any, mesh: Any) -> torch.Tensor:
        return (out.redistribute(mesh, [Shard(0)]) if sequence_parallel else out).to_local()
    return output


class HFStage(Stage):
    """A pipeline rank of a Hugging Face decoder (the ``net`` of ``models/hf.py``'s model), its modules found by the
    names of its kind: ``BODY`` (the base model), its ``EMBED``, ``POSITIONS`` (learned, or none), ``LAYERS`` and
    ``NORM``, the ``HEAD``, and ``PLAN``, the roles of :func:`_layer_plan` in a layer. The loss is Hugging Face's:
    logits in float32, cross-entropy over the next tokens."""

    BODY, EMBED, POSITIONS, LAYERS, NORM, HEAD = "model", "embed_tokens", None, "layers", "norm", "lm_head"
    PLAN: dict[str, str] = {}
    ATTN_ARGS: Optional[tuple] = None  # the attention's positional inputs, where it takes no ``hidden_states=``

    def __init__(self, net: nn.Module, chunks: list[list[int]], first: bool, last: bool):
        body = getattr(net, self.BODY)
        embedding, head = getattr(body, self.EMBED), getattr(net, self.HEAD)
        super().__init__(self.layers(net), chunks, first, last, embedding.embedding_dim)
        self.rotary_emb = getattr(body, "rotary_emb", None)
        self.tied = head.weight is embedding.weight
        if first:
            self.embedding = embedding
            self.positions = getattr(body, self.POSITIONS) if self.POSITIONS else None
        if last:
            self.norm, self.lm_head = getattr(body, self.NORM), head
        self._angles: Any = None

    @classmethod
    def layers(cls, net: nn.Module) -> list[nn.Module]:
        return list(getattr(getattr(net, cls.BODY), cls.LAYERS))

    @classmethod
    def fits(cls, net: nn.Module) -> bool:
        layer = f"{cls.BODY}.{cls.LAYERS}.0"
        return _has(net, f"{cls.BODY}.{cls.EMBED}", f"{cls.BODY}.{cls.NORM}", cls.HEAD,
                    *(f"{layer}.{name}" for role in ("col", "row") for name in cls.PLAN[role].split(",")))

    def begin(self, seq_len: int) -> None:
        if self.rotary_emb is not None:
            positions = torch.arange(seq_len)[None]
            self._angles = dict(position_ids=positions, position_embeddings=self.rotary_emb(
                torch.empty(0, dtype=self.rotary_emb.inv_freq.dtype), positions))

    def run_layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = layer(x, attention_mask=None, **(self._angles or {}))
        return out[0] if isinstance(out, tuple) else out

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.lm_head(self.norm(x)).float().flatten(0, 1), targets.flatten())

    def plan(self, tp_mesh: Any, sequence_parallel: bool) -> None:
        for chunk in self.chunks:
            for layer in chunk:
                self.shard_layer(layer, tp_mesh, sequence_parallel)
        self._plan_ends(tp_mesh, sequence_parallel, self.embedding if self.first else None)

    def shard_layer(self, layer: nn.Module, tp_mesh: Any, sequence_parallel: bool) -> None:
        kwarg = None if self.ATTN_ARGS else "hidden_states"
        parallelize_module(layer, tp_mesh, _layer_plan(self.PLAN, sequence_parallel, self.ATTN_ARGS, kwarg))


class LlamaStage(HFStage):
    """Llama-style decoders (``LlamaForCausalLM`` and kin), no layer of which has routed experts."""

    PLAN = dict(col="self_attn.q_proj,self_attn.k_proj,self_attn.v_proj,mlp.gate_proj,mlp.up_proj",
                row="self_attn.o_proj,mlp.down_proj", norm="input_layernorm,post_attention_layernorm",
                attn="self_attn", mlp="mlp")

    @classmethod
    def fits(cls, net: nn.Module) -> bool:
        return super().fits(net) and not MoEStage.routed(net)


class MoEStage(HFStage):
    """Llama-style attention over a mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE, ...): ``mlp.gate``, the
    router, and ``mlp.experts``, the routed experts' weights stacked (``gate_up_proj``, ``down_proj``: Hugging Face's
    grouped-matmul experts). Under tensor parallelism the attention is split as Llama's, a dense layer's MLP too
    (``DENSE``), and each mixture-of-experts block by :func:`~flopsweep.measure.experts.tensor_parallel_moe`."""

    PLAN = dict(col="self_attn.q_proj,self_attn.k_proj,self_attn.v_proj", row="self_attn.o_proj",
                norm="input_layernorm,post_attention_layernorm", attn="self_attn", mlp="mlp")  # attention's
    DENSE = dict(col="mlp.gate_proj,mlp.up_proj", row="mlp.down_proj")  # a layer without experts: its MLP's
    LOCAL_ATTENTION_INPUT = False

    @classmethod
    def routed(cls, net: nn.Module) -> bool:
        """Whether any layer has routed experts (dense layers may come first: Qwen2-MoE's ``mlp_only_layers``)."""
        layers = getattr(getattr(net, cls.BODY, None), cls.LAYERS, None) or []
        return any(hasattr(getattr(layer, "mlp", None), "experts") for layer in layers)

    @classmethod
    def fits(cls, net: nn.Module) -> bool:
        return super().fits(net) and cls.routed(net)

    def attention_names(self, layer: nn.Module) -> dict[str, str]:
        return self.PLAN

    def shard_layer(self, layer: nn.Module, tp_mesh: Any, sequence_parallel: bool) -> None:
        routed = hasattr(layer.get_submodule("mlp"), "experts")
        names = self.attention_names(layer)
        if not routed:
            names = {**names, **{role: f"{names[role]},{self.DENSE[role]}" for role in self.DENSE}}
        plan = _layer_plan(names, sequence_parallel, attn_kwarg="hidden_states",
                           local_attention_input=self.LOCAL_ATTENTION_INPUT)
        if routed:
            del plan[names["mlp"]]
            tensor_parallel_moe(layer.mlp, tp_mesh, sequence_parallel)
        parallelize_module(layer, tp_mesh, plan)

    def shard_experts(self, ep: int, group: Any) -> None:
        for chunk in self.chunks:
            for layer in chunk:
                if hasattr(layer.get_submodule("mlp"), "experts"):  # a dense layer among them has none
                    layer.mlp.experts = ExpertsShard(layer.mlp.experts, ep, group)


class MLAStage(MoEStage):
    """Multi-head latent attention over a mixture of experts (DeepSeek-V2 and V3, Kimi K2): the attention's
    ``kv_a_proj_with_mqa`` and ``kv_b_proj`` (and ``q_a_proj``/``q_b_proj``, or ``q_proj``) in place of Llama's; its
    first layers may be dense MLPs; each routed layer has shared experts beside the routed ones (``mlp.shared_experts``,
    run on every token, as any dense weights). Under tensor parallelism the query's and the keys' and values'
    up-projections are split by heads and the output projection by its input; their down-projections (to the
    latents), the latents' norms and the shared rotary key run whole on every rank, as torchtitan's DeepSeek plan has
    them."""

    PLAN = dict(col="self_attn.kv_b_proj", row="self_attn.o_proj", norm="input_layernorm,post_attention_layernorm",
                attn="self_attn", mlp="mlp")
    LOCAL_ATTENTION_INPUT = True  # its down-projections and their norms run whole on every rank

    @classmethod
    def fits(cls, net: nn.Module) -> bool:
        return super().fits(net) and _has(net, f"{cls.BODY}.{cls.LAYERS}.0.self_attn.kv_a_proj_with_mqa")

    def attention_names(self, layer: nn.Module) -> dict[str, str]:
        query = "self_attn.q_b_proj" if _has(layer, "self_attn.q_b_proj") else "self_attn.q_proj"  # low-rank or not
        return {**self.PLAN, "col": f"{query},{self.PLAN['col']}"}


class NeoXStage(HFStage):
    """GPT-NeoX (``GPTNeoXForCausalLM``): fused ``query_key_value`` whose view follows the heads of its shard,
    partial rotary angles, and, where ``use_parallel_residual``, attention and MLP reading the same input."""

    BODY, EMBED, NORM = "gpt_neox", "embed_in", "final_layer_norm"
    PLAN = dict(col="attention.query_key_value,mlp.dense_h_to_4h", row="attention.dense,mlp.dense_4h_to_h",
                norm="input_layernorm,post_attention_layernorm", attn="attention", mlp="mlp")
    ATTN_ARGS = (None,)


class GPT2Stage(HFStage):
    """GPT-2 (``GPT2LMHeadModel``): learned positions, a tied head, ``Conv1D`` linears."""

    BODY, EMBED, POSITIONS, LAYERS, NORM = "transformer", "wte", "wpe", "h", "ln_f"
    PLAN = dict(col="attn.c_attn,mlp.c_fc", row="attn.c_proj,mlp.c_proj", norm="ln_1,ln_2", attn="attn", mlp="mlp")
    ATTN_ARGS = (None,)

    def shard_layer(self, layer: nn.Module, tp_mesh: Any, sequence_parallel: bool) -> None:
        for role in ("col", "row"):
            for name in self.PLAN[role].split(","):
                owner, _, attr = name.rpartition(".")
                conv = layer.get_submodule(name)
                setattr(layer.get_submodule(owner), attr, _linear_of(conv))
        layer.attn.split_size //= tp_mesh.size()  # where the fused output is cut into q, k and v
        super().shard_layer(layer, tp_mesh, sequence_parallel)


def _linear_of(conv: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` that computes what a Hugging Face ``Conv1D`` (weight ``(in, out)``) does, on its device and
    in its dtype (the values are fake: only the shapes count)."""
    weight = conv.weight
    return nn.Linear(weight.shape[0], weight.shape[1], bias=conv.bias is not None, device=weight.device,
                     dtype=weight.dtype)


def _has(module: nn.Module, *names: str) -> bool:
    modules = dict(module.named_modules())
    return all(name in modules for name in names)


def make_stage(model: nn.Module, chunks: list[list[int]], first: bool, last: bool) -> Stage:
    """The stage of ``model`` (flopsweep's decoder, or ``models/hf.py``'s model or its ``net``) that holds
    ``chunks``; a one-line ``ConfigError`` for a model with no plan here."""
    kind, net = _kind(model)
    return kind(net, chunks, first, last)


def layers_of(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a model :func:`make_stage` knows (the same ``ConfigError`` for one it does not)."""
    kind, net = _kind(model)
    return kind.layers(net)


HF_KINDS: tuple[type[HFStage], ...] = (LlamaStage, MoEStage, MLAStage, NeoXStage, GPT2Stage)


def _kind(model: nn.Module) -> tuple[type[Stage], nn.Module]:
    net = getattr(model, "net", model)
    if _has(model, "tok_embedding", "blocks.0.attn.qkv", "blocks.0.mlp.down", "lm_head", "norm"):
        return DecoderStage, model
    for kind in HF_KINDS:
        if kind.fits(net):
            return kind, net
    raise ConfigError("parallel", None, f"no layout is counted rank by rank for {type(net).__module__}."
                      f"{type(net).__qualname__}, data parallelism alone included: flopsweep's decoder and Hugging "
                      "Face Llama-style, mixture-of-experts (Llama-style or latent attention), GPT-NeoX and GPT-2 "
                      "decoders are")
