"""The model on its device and dtype with its train mode applied, its synthetic batch, and its optimizer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import nn

from flopsweep.build.optimizers import make_optimizer
from flopsweep.build.spec import JobSpec
from flopsweep.build.train_modes import apply_train_mode
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
        raise ValueError("batch.size=max is chosen by flopsweep.run.job.run_job (flopsweep.run.fit), not built")
    torch.manual_seed(spec.measure.seed)
    dtype = DTYPES[spec.params_dtype]
    with torch.device(spec.device):
        model = spec.family.Model(spec.model)
    model.to(dtype)
    if spec.training:
        model.train()
        apply_train_mode(model, spec.family, spec.train)
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


def autocast_context(spec: JobSpec) -> Callable[[], ContextManager]:
    if spec.autocast is None or spec.device == "meta":
        # autocast has no meta dispatch key; the counts do not depend on it, only activation bytes would
        return contextlib.nullcontext
    device_type = "cuda" if spec.device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type, dtype=DTYPES[spec.autocast])
