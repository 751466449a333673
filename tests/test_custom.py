"""``model=custom``: your own model without ceremony: no template's arguments to undo, a module beside where
flopsweep runs, inputs by name (labels too), a loss returned in a dict or an object."""

from pathlib import Path

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
    assert "flops/forward           9.22K" in proc.stdout  # 2 * 2 * 48 * 48


def test_without_a_target_it_says_which_key_is_missing():
    from flopsweep.core.errors import ConfigError

    try:
        resolve(compose_config("model=custom", "device=meta"))
    except ConfigError as err:
        assert str(err) == "model._target_: missing: the class or function that builds the model"
    else:
        raise AssertionError("model=custom without a _target_ was accepted")
