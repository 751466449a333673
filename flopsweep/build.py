"""Build stage: the model on its device and dtype, its synthetic batch, and its optimizer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import nn

from flopsweep.config import JobSpec, OptimizerConf
from flopsweep.models.base import BatchShape

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int8": torch.float32}  # int8 weights are stored quantised; arithmetic runs in float32


@dataclass
class Built:
    model: nn.Module
    inputs: dict[str, torch.Tensor]
    optimizer: Optional[torch.optim.Optimizer]
    autocast: Callable[[], ContextManager]

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def create_optimizer_state(self) -> None:
        """Take one optimizer step on zero gradients: an optimizer creates its state lazily, at its first step,
        and its bytes count only then. (On meta, wrap it in ``MetaLikeCPU``: Adafactor reads norms.)"""
        if self.optimizer is None:
            return
        for p in self.trainable:
            p.grad = torch.zeros_like(p)
        self.optimizer.step()


def build(spec: JobSpec) -> Built:
    if spec.wants_max_batch:
        raise ValueError("batch.size=max is chosen by flopsweep.job.run_job (flopsweep.feasibility), not built")
    torch.manual_seed(spec.measure.seed)
    dtype = DTYPES[spec.params_dtype]
    with torch.device(spec.device):
        model = spec.family.Model(spec.model)
    model.to(dtype)
    if spec.training:
        model.train()
        apply_train_mode(model, spec)
    else:
        model.eval().requires_grad_(False)
    inputs = example_inputs(spec, spec.batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(spec.optimizer, trainable) if spec.training and trainable else None
    return Built(model, inputs, optimizer, autocast_context(spec))


def example_inputs(spec: JobSpec, batch: BatchShape) -> dict[str, torch.Tensor]:
    """The synthetic batch of ``batch``'s shape on the job's device, floating inputs in the weights' dtype."""
    dtype = DTYPES[spec.params_dtype]
    return {name: t.to(dtype) if t.is_floating_point() else t
            for name, t in spec.family.example_inputs(spec.model, batch, spec.device).items()}


ADAPTERS = ("lora", "dora")  # train modes that add adapters beside the targeted linears


def apply_train_mode(model: nn.Module, spec: JobSpec) -> None:
    """Freeze what ``train.mode`` freezes: frozen weights get no gradient, so backward runs no weight-gradient
    matmuls for them and the optimizer holds no state for them; LoRA and DoRA add their adapters' parameters."""
    from flopsweep.errors import require
    from flopsweep.models.layers import DoRALinear, LoRALinear

    train = spec.train
    if train.mode == "full":
        return
    model.requires_grad_(False)
    if train.mode == "frozen_backbone":
        for name in spec.family.HEAD:
            model.get_submodule(name).requires_grad_(True)
        blocks = model.get_submodule(spec.family.BLOCKS)
        require(train.trainable_layers <= len(blocks), "train.trainable_layers", train.trainable_layers,
                f"the model has {len(blocks)} blocks")
        for block in list(blocks)[len(blocks) - train.trainable_layers:]:
            block.requires_grad_(True)
    elif train.mode in ADAPTERS:
        adapter = DoRALinear if train.mode == "dora" else LoRALinear
        wanted, found = set(train.targets), set()
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    found.add(name)
                    if name in wanted:
                        setattr(parent, name, adapter(child, train.rank, train.alpha))
        require(not wanted - found, "train.targets", sorted(wanted - found),
                f"name no linear layer of this model (its linear layers: {', '.join(sorted(found))})")


def autocast_context(spec: JobSpec) -> Callable[[], ContextManager]:
    if spec.autocast is None or spec.device == "meta":
        # autocast has no meta dispatch key; the counts do not depend on it, only activation bytes would
        return contextlib.nullcontext
    device_type = "cuda" if spec.device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type, dtype=DTYPES[spec.autocast])


def make_optimizer(conf: OptimizerConf, params: list[nn.Parameter]) -> Optional[torch.optim.Optimizer]:
    """The configured optimizer over ``params``; None for ``optimizer=none`` (gradients, no step)."""
    betas = tuple(conf.betas)
    if conf.name == "none":
        return None
    if conf.name == "sgd":
        return torch.optim.SGD(params, lr=conf.lr, weight_decay=conf.weight_decay, foreach=True)
    if conf.name == "sgd_momentum":
        return torch.optim.SGD(params, lr=conf.lr, momentum=conf.momentum or 0.9, weight_decay=conf.weight_decay,
                               foreach=True)
    if conf.name == "adam":
        return torch.optim.Adam(params, lr=conf.lr, betas=betas, eps=conf.eps, weight_decay=conf.weight_decay,
                                foreach=True)
    if conf.name == "adamw":
        return torch.optim.AdamW(params, lr=conf.lr, betas=betas, eps=conf.eps, weight_decay=conf.weight_decay,
                                 foreach=True)
    if conf.name == "galore_adamw":
        from flopsweep.optimizers import GaLoreAdamW

        return GaLoreAdamW(params, lr=conf.lr, betas=betas, eps=conf.eps, weight_decay=conf.weight_decay,
                           rank=conf.rank, update_proj_gap=conf.update_proj_gap, scale=conf.scale)
    if conf.name == "adafactor":
        return torch.optim.Adafactor(params, lr=conf.lr, weight_decay=conf.weight_decay, foreach=True)
    raise ValueError(conf.name)
