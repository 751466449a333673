import os
import subprocess
import sys
from pathlib import Path

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from flopsweep.config import CONF_DIR, compose_config, register_configs

REPO = Path(__file__).resolve().parents[1]
FLOPSWEEP = [sys.executable, "-m", "flopsweep"]

register_configs()


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="")
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([*FLOPSWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.fixture
def compose_cfg():
    return compose_config


aten = torch.ops.aten


# An independent check on the formula registry, for the family tests: a few matmul rules written again.
class MatmulFlops(TorchDispatchMode):
    """Matmul-class FLOPs (multiply-add = 2) of the aten ops that reach the dispatcher: 2*M*K*N for the matrix
    products, C_in/groups*kh*kw multiply-adds per convolution output, and QK^T plus AV (4*B*H*Sq*Sk*hd) for the
    CPU's fused attention kernel; any other attention kernel fails the test rather than go uncounted."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.fused_attention_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten.mm, aten.bmm):
            a, b = args[0], args[1]
        elif packet in (aten.addmm, aten.baddbmm):
            a, b = args[1], args[2]
        elif packet is aten.convolution:
            self.flops += 2 * out.numel() * math.prod(args[1].shape[1:])
            return out
        elif packet is aten._scaled_dot_product_flash_attention_for_cpu:
            q, k = args[0], args[1]
            batch, heads, q_len, head_dim = q.shape
            self.flops += 4 * batch * heads * q_len * k.shape[-2] * head_dim
            self.fused_attention_calls += 1
            return out
        else:
            assert "scaled_dot_product" not in packet.__name__, f"attention kernel not counted: {func}"
            return out
        self.flops += 2 * a.shape[:-1].numel() * a.shape[-1] * b.shape[-1]
        return out


class SdpaCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
