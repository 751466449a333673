"""The formula registry: one formula per op, formulas that name their op's schema arguments, and the public way to
count an op of your own."""

import inspect

import pytest
import torch
from torch import nn

import flopsweep
from flopsweep.measure import formulas
from flopsweep.measure.count import count_step
from flopsweep.measure.meta import MetaLikeCPU


@torch.library.custom_op("flopsweep_test::scaled_add", mutates_args=())
def scaled_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    return x + alpha * y


@scaled_add.register_fake
def _(x, y, alpha):
    return torch.empty_like(x)


class UsesScaledAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_add(self.proj(x), x, 0.5).sum()


@pytest.fixture
def own_registry(monkeypatch):
    """The registry as it is, restored after the test: a formula registered here leaves with it."""
    monkeypatch.setattr(formulas, "FORMULAS", dict(formulas.FORMULAS))
    monkeypatch.setattr(formulas, "_rules", {})


def test_an_op_registered_twice_is_refused(own_registry):
    before = formulas.FORMULAS[torch.ops.aten.mm]
    with pytest.raises(ValueError, match="aten.mm.*registered already"):
        flopsweep.formula(torch.ops.aten.mm)(lambda self, mat2, **_: formulas.OpCost(matmul=7))
    assert formulas.FORMULAS[torch.ops.aten.mm] is before



@pytest.mark.parametrize("op,how", [(torch.ops.aten.add, "pointwise: one FLOP an output element"),
                                    (torch.ops.aten.view, "free: it moves or makes data")])
def test_an_op_counted_without_a_formula_is_refused_too(own_registry, op, how):
    """aten.add, a pointwise op counted by PyTorch's tag with no entry in the formulas, took a user's formula: its
    count changed (1536 FLOPs to 1024) where conventions.md says a counted op is refused."""
    with pytest.raises(ValueError, match=rf"^aten\.{op.__name__} is counted already \({how}\): one op, one formula$"):
        flopsweep.formula(op)(lambda **_: formulas.OpCost(elementwise=1))
    assert op not in formulas.FORMULAS


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_your_own_op_is_uncounted_until_its_formula_is_registered_then_counted(own_registry, device):
    with torch.device(device):
        model, x = UsesScaledAdd(), torch.randn(4, 16)
    with MetaLikeCPU() if device == "meta" else torch.no_grad():
        before = count_step(model, {"x": x}, None, backward=False)
    assert before.uncounted == {"flopsweep_test.scaled_add": 1}

    @flopsweep.formula(torch.ops.flopsweep_test.scaled_add)
    def _scaled_add(x, y, alpha, *, result, **_):
        assert alpha == 0.5 and x.shape == y.shape == result.shape  # its arguments by their schema names
        return flopsweep.OpCost(elementwise=2 * result.numel())  # a multiply and an add per element

    with MetaLikeCPU() if device == "meta" else torch.no_grad():
        after = count_step(model, {"x": x}, None, backward=False)
    assert after.uncounted == {}
    op = after.forward.by_op["flopsweep_test.scaled_add"]
    assert (op.calls, op.matmul, op.elementwise) == (1, 0, 2 * 4 * 16)
    assert after.forward.matmul == before.forward.matmul == 2 * 4 * 16 * 16  # the linear layer, as before


def _named_parameters(fn) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds} - {"result", "options"}


@pytest.mark.parametrize("op", [op for op, entry in formulas.FORMULAS.items() if entry.named], ids=str)
def test_every_formula_names_arguments_its_op_has(op):
    """A formula's parameters are its op's schema argument names, for every overload of the op (a name that is not
    one would never be bound, and the formula would read its default instead)."""
    names = _named_parameters(formulas.FORMULAS[op].fn)
    for overload in op.overloads():
        schema = {argument.name for argument in getattr(op, overload)._schema.arguments}
        assert names <= schema, (overload, sorted(names - schema))


@pytest.mark.parametrize("op", ["aten::mm", torch.ops.aten.mm.default])
def test_a_formula_for_a_name_or_one_overload_is_refused_as_never_matched(own_registry, op):
    """A count looks formulas up by the op's packet: a string or an overload would register and never count."""
    with pytest.raises(TypeError, match="not an op's packet"):
        flopsweep.formula(op)(lambda self, mat2, **_: formulas.OpCost(matmul=7))
    assert op not in formulas.FORMULAS
