"""The model on its device and dtype with its train mode applied, its synthetic batch, and its optimizer."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch
from torch import nn

from flopsweep.build.optimizers import make_optimizer
from flopsweep.build.spec import JobSpec
from flopsweep.core.errors import ConfigError, one_line
from flopsweep.build.train_modes import apply_train_mode
from flopsweep.models.base import BatchShape

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
    torch.manual_seed(spec.measure.seed)
    dtype = spec.dtype.weights
    with torch.device(str(spec.device)), default_dtype(dtype):  # made in its dtype: not float32 first, twice the bytes
        try:
            model = spec.family.Model(spec.model)
        except RuntimeError as err:
            if "overflow" not in str(err):
                raise
            raise too_large(spec.model, err) from None
    model.to(dtype)  # what a family made in another dtype on purpose
    if spec.training:
        model.train()
        apply_train_mode(model, spec.family, spec.train)
    else:
        model.eval().requires_grad_(False)
    inputs = example_inputs(spec, spec.batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(spec.optimizer, trainable) if spec.training and trainable else None
    return Built(model, inputs, optimizer, autocast_context(spec))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """PyTorch's default floating dtype set to ``dtype`` while a model is made, and put back whatever happens."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def too_large(model: Any, err: RuntimeError) -> ConfigError:
    """A model whose sizes overflow PyTorch's (``Storage size calculation overflowed with sizes=[...]``), named by
    the model's largest size that is a factor of the tensor's shape (``model.d_model``), else by ``model``."""
    shape = [int(n) for n in re.findall(r"\d+", str(err).split("sizes=", 1)[-1])] if "sizes=" in str(err) else []
    sizes = {f"model.{f.name}": value for f in dataclasses.fields(model)
             if isinstance(value := getattr(model, f.name), int) and not isinstance(value, bool) and value > 1}
    factors = [(value, key) for key, value in sizes.items() if any(n % value == 0 for n in shape)]
    key, value = (max(factors)[1], max(factors)[0]) if factors else ("model", None)
    return ConfigError(key, value, f"too large: a tensor of {shape} elements overflows PyTorch's sizes" if shape else
                       f"too large: {one_line(err, 200, kind=False)}")


def example_inputs(spec: JobSpec, batch: BatchShape) -> dict[str, torch.Tensor]:
    """The synthetic batch of ``batch``'s shape on the job's device, floating inputs in the weights' dtype."""
    dtype = spec.dtype.weights
    return {name: t.to(dtype) if t.is_floating_point() else t
            for name, t in spec.family.example_inputs(spec.model, batch, str(spec.device)).items()}


def autocast_context(spec: JobSpec) -> Callable[[], ContextManager]:
    if spec.dtype.autocast is None or spec.device.is_meta:
        # autocast has no meta dispatch key; the counts do not depend on it, only activation bytes would
        return contextlib.nullcontext
    return lambda: torch.autocast(spec.device.kind, dtype=spec.dtype.autocast_dtype)
