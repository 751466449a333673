"""The optimizers a job can take (``optimizer.name``), one registry: adding one is one function here (and its preset
in ``conf/optimizer/``). ``none`` takes no step: forward and backward only, gradients kept."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from flopsweep.build.galore import GaLoreAdamW
from flopsweep.core.errors import require, require_int
from flopsweep.core.registry import Registry


@dataclass
class OptimizerConf:
    """The ``optimizer`` config group."""

    name: str = "adamw"                  # a name of OPTIMIZERS
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    rank: int = 128                      # galore_adamw: the gradients' projection rank
    update_proj_gap: int = 200           # galore_adamw: steps between the SVDs that refresh the projection
    scale: float = 0.25                  # galore_adamw: the projected step's scale


Make = Callable[[OptimizerConf, list[nn.Parameter]], Optional[torch.optim.Optimizer]]


@dataclass(frozen=True)
class Optimizer:
    make: Make                                             # the optimizer over these parameters (None: no step)
    check: Callable[[OptimizerConf], None] = lambda conf: None  # what this one needs of the group, beyond the rest
    reads: tuple[str, ...] = ()                            # the fields of the group it reads (recorded with a job)


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer.name")


ADAM_READS = ("lr", "betas", "eps", "weight_decay")


def optimizer(name: str, reads: tuple[str, ...], check: Callable[[OptimizerConf], None] = lambda conf: None
              ) -> Callable[[Make], Make]:
    """Register the optimizer ``name`` made by the decorated function, which reads ``reads`` of the group."""
    def wrap(make: Make) -> Make:
        OPTIMIZERS.add(name, Optimizer(make, check, reads))
        return make
    return wrap


def make_optimizer(conf: OptimizerConf, params: list[nn.Parameter]) -> Optional[torch.optim.Optimizer]:
    """The configured optimizer over ``params``; None for ``optimizer=none`` (gradients, no step)."""
    return OPTIMIZERS[conf.name].make(conf, params)


def check(conf: OptimizerConf) -> None:
    """Every check of the ``optimizer`` group, naming the key: the name, the values every optimizer reads, and what
    the chosen one needs."""
    chosen = OPTIMIZERS[conf.name]
    require(0 < conf.lr < math.inf, "optimizer.lr", conf.lr, "must be a finite number > 0")
    require(0 < conf.eps < math.inf, "optimizer.eps", conf.eps, "must be a finite number > 0")
    require(0 <= conf.momentum < 1, "optimizer.momentum", conf.momentum, "must be in [0, 1)")
    require(conf.weight_decay >= 0, "optimizer.weight_decay", conf.weight_decay, "must be >= 0")
    require(len(conf.betas) == 2 and all(0 <= b < 1 for b in conf.betas), "optimizer.betas", list(conf.betas),
            "must be two numbers in [0, 1)")
    chosen.check(conf)


@optimizer("none", reads=())
def _none(conf: OptimizerConf, params: list[nn.Parameter]) -> None:
    return None


@optimizer("sgd", reads=("lr", "weight_decay"))
def _sgd(conf: OptimizerConf, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=conf.lr, weight_decay=conf.weight_decay, foreach=True)


def _check_momentum(conf: OptimizerConf) -> None:
    require(conf.momentum > 0, "optimizer.momentum", conf.momentum,
            "must be in (0, 1) for sgd_momentum (optimizer=sgd is SGD without momentum)")


@optimizer("sgd_momentum", reads=("lr", "momentum", "weight_decay"), check=_check_momentum)
def _sgd_momentum(conf: OptimizerConf, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=conf.lr, momentum=conf.momentum, weight_decay=conf.weight_decay, foreach=True)


@optimizer("adam", reads=ADAM_READS)
def _adam(conf: OptimizerConf, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=conf.lr, betas=tuple(conf.betas), eps=conf.eps,
                            weight_decay=conf.weight_decay, foreach=True)


@optimizer("adamw", reads=ADAM_READS)
def _adamw(conf: OptimizerConf, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=conf.lr, betas=tuple(conf.betas), eps=conf.eps,
                             weight_decay=conf.weight_decay, foreach=True)


@optimizer("adafactor", reads=("lr", "weight_decay"))
def _adafactor(conf: OptimizerConf, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adafactor(params, lr=conf.lr, weight_decay=conf.weight_decay, foreach=True)


def _check_galore(conf: OptimizerConf) -> None:
    require_int(conf.rank, "optimizer.rank")
    require_int(conf.update_proj_gap, "optimizer.update_proj_gap")
    require(0 < conf.scale < math.inf, "optimizer.scale", conf.scale, "must be a finite number > 0")


@optimizer("galore_adamw", reads=(*ADAM_READS, "rank", "update_proj_gap", "scale"),
           check=_check_galore)
def _galore_adamw(conf: OptimizerConf, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return GaLoreAdamW(params, lr=conf.lr, betas=tuple(conf.betas), eps=conf.eps, weight_decay=conf.weight_decay,
                       rank=conf.rank, update_proj_gap=conf.update_proj_gap, scale=conf.scale)
