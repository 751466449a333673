"""Any user model: ``_target_`` names its class or factory (Hydra's instantiate), the other keys are its
arguments, and ``inputs`` describes the synthetic batch, with ``batch`` and ``seq_len`` as placeholders::

    model:
      family: custom
      name: my_encoder
      _target_: torch.nn.TransformerEncoderLayer
      d_model: 256
      nhead: 4
      batch_first: true
      inputs: [{name: src, shape: [batch, seq_len, 256]}]
      loss: mse           # output: the model returns its loss; mse: mean square of the output
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from flopsweep.core.errors import ConfigError, nearest, one_line, require
from flopsweep.core.shape import ModelShape
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, file_source

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
          "int32": torch.int32, "bool": torch.bool}
_OWN = ("family", "name", "_target_", "inputs", "loss", "default_seq_len")
INPUT_KEYS = ("name", "shape", "dtype", "high")  # an input spec's keys (high: an integer input's bound)


@dataclass
class Config(ModelConfig):
    family: str = "custom"
    target: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    loss: str = "output"
    default_seq_len: Optional[int] = None

    def source(self) -> Optional[dict[str, Any]]:
        """The module ``_target_`` lives in: a change to its code is a new configuration."""
        path = module_file(self.target) if self.target else None
        return file_source(path) if path is not None else None

    def validate(self, batch: BatchShape) -> None:
        require(bool(self.target), "model._target_", None, "missing: the class or function that builds the model")
        require(self.loss in ("output", "mse"), "model.loss", self.loss, "must be output or mse")
        require(isinstance(self.inputs, list) and len(self.inputs) > 0, "model.inputs", self.inputs or None,
                "must be a list of {name, shape, dtype} entries")
        for i, spec in enumerate(self.inputs):
            require(isinstance(spec, dict) and "shape" in spec, f"model.inputs[{i}]", spec, "needs a shape")
            for key in spec:  # a misspelt key was left out without a word (dtpye: the input stayed float32)
                near = nearest(str(key), INPUT_KEYS)
                require(key in INPUT_KEYS, f"model.inputs[{i}].{key}", spec[key], "no such key: an input takes "
                        f"{', '.join(INPUT_KEYS)}" + (f" (did you mean {near}?)" if near else ""))
            require(isinstance(spec["shape"], list), f"model.inputs[{i}].shape", spec["shape"],
                    "must be a list such as [batch, seq_len, 256]")
            require(spec.get("dtype", "float32") in DTYPES, f"model.inputs[{i}].dtype", spec.get("dtype"),
                    f"must be one of {', '.join(DTYPES)}")
            for dim in spec["shape"]:
                require(dim in ("batch", "seq_len") or (isinstance(dim, int) and dim >= 1),
                        f"model.inputs[{i}].shape", list(spec["shape"]),
                        "entries must be positive integers, 'batch' or 'seq_len'")
            if "seq_len" in spec["shape"]:
                require(batch.seq_len is not None, "batch.seq_len", None,
                        "needed by model.inputs (or set model.default_seq_len)")


def _beside_the_command() -> None:
    """A module beside where flopsweep runs (``./mymodel.py``: ``mymodel.Net``) found as an installed one is."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def module_file(target: str) -> Optional[Path]:
    """The source file of the module ``_target_`` lives in (``mymodel.Net``: ``./mymodel.py``), found without running
    it where it was not imported yet; None for a built-in or a target that names no module."""
    import importlib.util

    _beside_the_command()
    parts = target.split(".")
    for end in range(len(parts) - 1, 0, -1):  # mymodel.Net, pkg.mod.Outer.Inner: the longest prefix that is a module
        try:
            spec = importlib.util.find_spec(".".join(parts[:end]))
        except (ImportError, ValueError):
            spec = None
        except Exception as err:  # noqa: BLE001 - a package failing as it runs (torchvision built for another torch)
            raise ConfigError("model._target_", target,
                              f"its package {parts[0]} fails as it is imported ({one_line(err, 200)})") from None
        if spec is not None:
            return Path(spec.origin) if spec.origin and Path(spec.origin).is_file() else None
    return None


def load(fields: dict[str, Any]) -> Config:
    return Config(family="custom", name=fields.get("name", "custom"), target=fields.get("_target_", ""),
                  kwargs={k: v for k, v in fields.items() if k not in _OWN},
                  inputs=_plain_list(fields.get("inputs", [])),
                  loss=fields.get("loss", "output"), default_seq_len=fields.get("default_seq_len"))


RETURNS = ("a loss tensor (its mean is taken), an object with a .loss tensor (Hugging Face's outputs), a dict with a "
           "'loss' tensor, or a tuple whose first item is the loss; or set model.loss=mse")


def _raised_at(err: BaseException) -> str:
    """`` (raised at mymodel.py:12, in forward)``: the innermost frame of ``err`` in the user's own code (not
    PyTorch's, not flopsweep's), so that a bug in a forward is found without a traceback; empty where there is none."""
    import traceback

    skip = [str(Path(module.__file__).parent) for module in (torch, sys.modules["flopsweep"])]
    own = [frame for frame in traceback.extract_tb(err.__traceback__)
           if not any(frame.filename.startswith(folder) for folder in skip)]
    return f" (raised at {Path(own[-1].filename).name}:{own[-1].lineno}, in {own[-1].name})" if own else ""


class OutputLoss(nn.Module):
    """The loss a custom model's output gives (``model.loss``): ``output``, what the forward returns, or ``mse``, the
    mean square of its first output; anything else is refused by ``model._target_``, saying what it must return."""

    def __init__(self, kind: str, target: str = ""):
        super().__init__()
        self.kind, self.target = kind, target
        self.training_params = True  # set by Model: whether any parameter trains (an inference build's loss has none)

    def forward(self, out: Any) -> torch.Tensor:
        if self.kind == "mse":  # the first floating output: a tuple's first item, a dict's (logits, ...)
            out = out[0] if isinstance(out, (tuple, list)) and out else \
                next((v for v in out.values() if isinstance(v, torch.Tensor) and v.is_floating_point()), out) \
                if isinstance(out, dict) else out
            self._require(isinstance(out, torch.Tensor) and out.is_floating_point(), out, "has no floating output",
                          "a floating tensor, a tuple whose first item is one, or a dict holding one")
            return out.float().pow(2).mean()
        loss = out.loss if hasattr(out, "loss") and not isinstance(out, torch.Tensor) else \
            out.get("loss") if isinstance(out, dict) else out[0] if isinstance(out, (tuple, list)) and out else out
        self._require(isinstance(loss, torch.Tensor) and loss.is_floating_point(), out, "returned no loss")
        if torch.is_grad_enabled() and self.training_params and not loss.requires_grad:
            raise ConfigError("model._target_", self.target, "its forward returned a loss without a gradient (it does "
                              "not depend on the trainable parameters: detached, or computed under no_grad)")
        return loss if loss.dim() == 0 else loss.mean()

    def _require(self, ok: bool, out: Any, problem: str, returns: str = RETURNS) -> None:
        if not ok:
            what = f"a dict of {', '.join(map(str, out)) or 'nothing'}" if isinstance(out, dict) else type(out).__name__
            raise ConfigError("model._target_", self.target,
                              f"its forward {problem} ({what}): it must return {returns}")


class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        from hydra.utils import instantiate

        _beside_the_command()
        try:
            self.net = instantiate({"_target_": cfg.target, **cfg.kwargs})
        except SystemExit as err:  # its own job fails; the sweep goes on
            raise ConfigError("model._target_", cfg.target, f"could not be built: it called sys.exit({err.code})") \
                from None
        except Exception as err:  # noqa: BLE001 - report which key, not a Hydra traceback
            cause = err.__cause__ or err  # Hydra's error wraps the model's own
            reason = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
            raise ConfigError("model._target_", cfg.target, f"could not be built: {reason}") from None
        require(isinstance(self.net, nn.Module), "model._target_", cfg.target,
                f"built a {type(self.net).__module__}.{type(self.net).__qualname__}, not a torch.nn.Module")
        self.names = [spec.get("name", f"input{i}") for i, spec in enumerate(cfg.inputs)]
        self.by_name = _takes_names(self.net, self.names)
        self.loss = OutputLoss(cfg.loss, cfg.target)
        self.inputs_key = ("model.inputs[0].shape", list(cfg.inputs[0]["shape"])) if len(cfg.inputs) == 1 else \
            ("model.inputs", [list(spec["shape"]) for spec in cfg.inputs])
        self.accepted = False  # the model ran on its inputs once: a later error is not theirs

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        try:
            out = self.net(**inputs) if self.by_name else self.net(*(inputs[name] for name in self.names))
        except SystemExit as err:  # a BaseException: it would end the sweep, not the job
            raise ConfigError("model._target_", self.loss.target, f"its forward called sys.exit({err.code})") from None
        except Exception as err:
            if self.accepted or "memory" in str(err).lower():  # out of memory is a result, not a bad input
                raise
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            raise ConfigError(*self.inputs_key, f"the model refused its inputs{_raised_at(err)}: {reason}") from None
        self.accepted = True
        self.loss.training_params = any(p.requires_grad for p in self.net.parameters())
        return self.loss(out)


def _takes_names(net: nn.Module, names: list[str]) -> bool:
    """Whether ``net``'s forward takes every input by its name (keyword arguments, labels): then they are passed by
    name; else in their order, as positional arguments."""
    try:
        parameters = inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    named = {n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return set(names) <= named


def example_inputs(cfg: Config, batch: BatchShape, device) -> dict[str, torch.Tensor]:
    tensors = {}
    for i, spec in enumerate(cfg.inputs):
        shape = [batch.size if d == "batch" else batch.seq_len if d == "seq_len" else d for d in spec["shape"]]
        dtype = DTYPES[spec.get("dtype", "float32")]
        if dtype.is_floating_point:
            tensors[spec.get("name", f"input{i}")] = torch.randn(shape, device=device, dtype=dtype)
        else:
            tensors[spec.get("name", f"input{i}")] = torch.randint(0, int(spec.get("high", 2)), shape, device=device,
                                                                   dtype=dtype)
    return tensors


def _plain_list(value: Any) -> Any:
    """A list as given (a config's list, its dicts as dicts), or the value itself for validate to refuse."""
    if isinstance(value, (list, tuple)):
        return [dict(v) if isinstance(v, dict) else v for v in value]
    return value


def shape(cfg: Config) -> ModelShape:
    """Nothing known: the model's arguments are the user's own, and none says which is a width."""
    return ModelShape()


FAMILIES.add("custom", Family("custom", Config, Model, example_inputs, shape, load=load))
