"""The base of flopsweep's dispatch modes (counting, the meta kernel cache, live bytes)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class EagerDispatchMode(TorchDispatchMode):
    """A dispatch mode that sees every op of an eager step. PyTorch wraps each mode's ``__torch_dispatch__`` in
    ``torch._disable_dynamo`` so that ``torch.compile`` does not trace into it: three Python calls around every op,
    for every mode (8 % of counting ResNet-BK's 660k ops). flopsweep's modes run eager steps only, so they opt out,
    through the class hook PyTorch documents for that (``_should_skip_dynamo``)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False
