"""What a job runs (``workload``: a training step, a forward pass, a generation with a KV cache) and, for a training
step, what trains (``train.mode``), one registry: the whole model, the head and the last blocks, or low-rank adapters
(LoRA, DoRA) beside frozen weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Optional

from torch import nn

from flopsweep.core.errors import require, require_int
from flopsweep.core.registry import Registry
from flopsweep.models.base import Family
from flopsweep.models.layers import DoRALinear, LoRALinear


class Workload(str, Enum):
    """What a job runs (``workload=...``)."""

    train = "train"            # a training step: forward, backward, the optimizer's step
    inference = "inference"    # a forward pass without gradients
    generate = "generate"      # a prompt's prefill, then token-by-token decoding with a KV cache (``generate.*``)


# train=inference and train=generate: the spellings before the workload key, still read (with a notice)
OLD_SPELLINGS = {"inference": Workload.inference, "generate": Workload.generate}


@dataclass
class TrainConf:
    """The ``train`` config group."""

    mode: str = "full"                   # a name of TRAIN_MODES
    trainable_layers: int = 0            # frozen_backbone: the last k blocks train too (the head always does)
    rank: int = 8                        # lora, dora
    alpha: float = 16.0                  # lora, dora: the update is scaled by alpha / rank
    targets: list[str] = field(default_factory=lambda: ["qkv", "out"])  # lora, dora: names of the linear layers


@dataclass(frozen=True)
class TrainMode:
    freezes: bool = False                # chooses what trains (so it needs weights that train: not int8)
    adapter: Optional[type[LoRALinear]] = None  # added beside every targeted linear layer
    closed_form: bool = True             # a family's closed forms can follow it (none models DoRA's norms)
    check: Callable[[TrainConf, Family], None] = lambda train, family: None
    reads: tuple[str, ...] = ()          # the fields of the group it reads (recorded with a job)


TRAIN_MODES: Registry[TrainMode] = Registry("train.mode")


def _check_frozen(train: TrainConf, family: Family) -> None:
    require(bool(family.head), "train.mode", train.mode,
            f"the {family.name} family has no head and block stack to keep trainable")
    require_int(train.trainable_layers, "train.trainable_layers", 0)


def _check_adapters(train: TrainConf, family: Family) -> None:
    require_int(train.rank, "train.rank")
    require(train.alpha > 0, "train.alpha", train.alpha, "must be > 0")
    require(len(train.targets) > 0, "train.targets", list(train.targets), "must name at least one linear layer")


TRAIN_MODES.add("full", TrainMode())
ADAPTER_READS = ("rank", "alpha", "targets")
TRAIN_MODES.add("frozen_backbone", TrainMode(freezes=True, check=_check_frozen, reads=("trainable_layers",)))
TRAIN_MODES.add("lora", TrainMode(freezes=True, adapter=LoRALinear, check=_check_adapters, reads=ADAPTER_READS))
TRAIN_MODES.add("dora", TrainMode(freezes=True, adapter=DoRALinear, closed_form=False, check=_check_adapters,
                                  reads=ADAPTER_READS))


def trains(params_dtype: str, workload: Workload) -> bool:
    """Whether a job takes a training step: ``workload=train`` with weights that train (int8's are measured forward
    only)."""
    return params_dtype != "int8" and workload is Workload.train


def apply_train_mode(model: nn.Module, family: Family, train: TrainConf) -> None:
    """Freeze what ``train.mode`` freezes: frozen weights get no gradient, so backward runs no weight-gradient
    matmuls for them and the optimizer holds no state for them; LoRA and DoRA add their adapters' parameters."""
    mode = TRAIN_MODES[train.mode]
    if not mode.freezes:
        return
    model.requires_grad_(False)
    if mode.adapter is None:  # frozen_backbone: the head and the last blocks train
        for name in family.head:
            model.get_submodule(name).requires_grad_(True)
        blocks = model.get_submodule(family.blocks)
        require(train.trainable_layers <= len(blocks), "train.trainable_layers", train.trainable_layers,
                f"the model has {len(blocks)} blocks")
        for block in list(blocks)[len(blocks) - train.trainable_layers:]:
            block.requires_grad_(True)
        return
    wanted, found = set(train.targets), set()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                found.add(name)
                if name in wanted:
                    require(not isinstance(parent, nn.MultiheadAttention), "train.targets", sorted(wanted),
                            f"{parent_name}.{name} is nn.MultiheadAttention's output projection, whose weight the "
                            "attention reads itself (no adapter's forward runs): leave it out of the targets")
                    width = min(child.in_features, child.out_features)
                    require(train.rank <= width, "train.rank", train.rank,  # a larger rank adds parameters, not rank
                            f"must be at most the width of the layers it adapts ({width}: "
                            f"{f'{parent_name}.' if parent_name else ''}{name} is {child.in_features} -> "
                            f"{child.out_features})")
                    setattr(parent, name, mode.adapter(child, train.rank, train.alpha))
    require(not wanted - found, "train.targets", sorted(wanted - found),
            f"name no linear layer of this model (its linear layers: {', '.join(sorted(found))})")
