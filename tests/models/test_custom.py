"""``model=custom``: your own model without ceremony: no template's arguments to undo, a module beside where
flopsweep runs, inputs by name (labels too), a loss returned in a dict or an object."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from flopsweep.config.resolve import resolve
from flopsweep.run.job import run_job
from tests.helpers import compose_config, run_app


def test_a_class_its_arguments_and_its_inputs_are_the_whole_config():
    """Inputs go by name (``labels`` reaches the model, declared after ``x``, taken before it) and the loss comes
    out of the dict the model returns."""
    cfg = compose_config("model=custom", "model._target_=tests.helpers.LabelledNet", "+model.features=32",
                         "+model.classes=10", "model.inputs=[{name: x, shape: [batch, 32]}, "
                         "{name: labels, shape: [batch], dtype: int64, high: 10}]", "batch.size=4", "device=cpu",
                         "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    assert result.metrics["size/params"] == 32 * 10 + 10
    assert result.metrics["flops/forward"] == 2 * (2 * 4 * 32 * 10)  # the projection, for the loss and the logits


def test_a_model_in_a_file_beside_the_command_and_its_config_beside_it(tmp_path: Path):
    """``./mymodel.py`` and ``./conf/model/mine.yaml``: ``--config-dir conf model=mine`` finds both."""
    (tmp_path / "mymodel.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n    def __init__(self, width):\n        super().__init__()\n"
        "        self.layer = torch.nn.Linear(width, width)\n\n    def forward(self, x):\n"
        "        return self.layer(x).pow(2).mean()\n")
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "mine.yaml").write_text(
        "family: custom\nname: mine\n_target_: mymodel.Net\nwidth: 48\ninputs: [{name: x, shape: [batch, 48]}]\n")
    proc = run_app("--config-dir", "conf", "model=mine", "device=meta", "batch.size=2", "tracking=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^flops/forward +9.22K$", proc.stdout, re.MULTILINE)  # 2 * 2 * 48 * 48


def test_without_a_target_it_says_which_key_is_missing():
    from flopsweep.core.errors import ConfigError

    try:
        resolve(compose_config("model=custom", "device=meta"))
    except ConfigError as err:
        assert str(err) == "model._target_: missing: the class or function that builds the model"
    else:
        raise AssertionError("model=custom without a _target_ was accepted")


BAD_FORWARDS = (
    "import sys\nimport torch\n\n\nclass Base(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.p = torch.nn.Linear(8, 8)\n\n\n"
    "class Text(Base):\n    def forward(self, x):\n        return 'loss'\n\n\n"
    "class Nothing(Base):\n    def forward(self, x):\n        self.p(x)\n\n\n"
    "class Logits(Base):\n    def forward(self, x):\n        return {'logits': self.p(x)}\n\n\n"
    "class Detached(Base):\n    def forward(self, x):\n        return self.p(x).detach().sum()\n\n\n"
    "class Exits(Base):\n    def forward(self, x):\n        sys.exit(3)\n\n\n"
    "class Fine(Base):\n    def forward(self, x):\n        return self.p(x).sum()\n")


@pytest.mark.slow  # a sweep of failing jobs, one that exits
def test_a_forward_that_returns_no_usable_loss_or_exits_fails_its_own_job_in_one_line(tmp_path: Path):
    """A string, None, a dict without a loss, a loss without a gradient: the job fails naming model._target_ and
    what the forward must return; sys.exit in a forward fails its job, and the sweep goes on to the next."""
    (tmp_path / "nets.py").write_text(BAD_FORWARDS)
    job = ["model=custom", "model.inputs=[{name: x, shape: [batch, 8]}]", "device=meta", "tracking=none"]
    for name, said in (("Text", "its forward returned no loss (str): it must return a loss tensor"),
                       ("Nothing", "its forward returned no loss (NoneType)"),
                       ("Logits", "its forward returned no loss (a dict of logits)"),
                       ("Detached", "its forward returned a loss without a gradient")):
        proc = run_app(*job, f"model._target_=nets.{name}", cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and f"model._target_='nets.{name}': {said}" in lines[0], \
            proc.stderr
    sweep = run_app("-m", *job, "model._target_=nets.Exits,nets.Fine", cwd=tmp_path)
    assert sweep.returncode == 1, sweep.stderr
    assert "model._target_='nets.Exits': its forward called sys.exit(3)" in sweep.stderr
    assert "2 jobs: 1 ok, 1 failed" in sweep.stdout


def test_pytorchs_transformer_layer_is_counted_op_by_op_in_a_forward_pass_on_the_cpu_as_on_meta():
    """Without gradients nn.TransformerEncoderLayer runs one fused op that no formula counts: a forward pass of
    custom_example counted 0 FLOPs on the CPU (218M on meta), with no word on the console."""
    flops = {}
    for device in ("meta", "cpu"):
        cfg = compose_config("model=custom_example", "workload=inference", f"device={device}", "tracking=none",
                             "measure.warmup=0", "measure.repeats=1")
        result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
        assert result.status == "ok" and not result.breakdown["uncounted_ops"], result.breakdown["uncounted_ops"]
        flops[device] = result.metrics["flops/forward"]
    d, ff, t = 256, 1024, 128  # the preset's d_model, dim_feedforward; 128 tokens: qkv, out, two linears, scores
    assert flops["cpu"] == flops["meta"] == 2 * t * (4 * d * d + 2 * d * ff) + 2 * 2 * t * t * d  # and values
