"""The generic transformer of the JSON format (``embed_dim``, ``num_heads``, ...): from overrides and from a JSON file;
its modes; bad input."""

import json

import pytest

from flopsweep.config.resolve import resolve
from flopsweep.core.errors import ConfigError
from tests.helpers import REPO, compose_config, run_app

FIELDS = dict(embed_dim=256, num_heads=4, ff_dim=1024, seq_len=64, memory_seq_len=32, num_encoder_blocks=3,
              num_decoder_blocks=2)


def test_json_file_equals_overrides(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(FIELDS))
    from_json = resolve(compose_config("model=generic", f"model.json_file={path}"))
    from_overrides = resolve(compose_config("model=generic", *(f"model.{k}={v}" for k, v in FIELDS.items())))
    for key in FIELDS:
        assert getattr(from_json.model, key) == getattr(from_overrides.model, key) == FIELDS[key]
    assert from_json.batch == from_overrides.batch


@pytest.mark.slow  # a run and a sweep of 768-wide models
def test_the_command_line_sets_a_field_over_the_json_file_in_a_run_and_in_a_sweep(tmp_path):
    """migrating.md: the file's values replace the preset's; a field set beside it on the command line replaces the
    file's (it was the file's 12 blocks, its job named num_decoder_blocks=12, and a sweep over embed_dim two same
    jobs)."""
    example = f"model.json_file={REPO / 'docs/examples/transformer.json'}"  # 768 wide, 12 decoder blocks
    run = run_app("model=generic", example, "model.num_decoder_blocks=2", "device=meta", "tracking=none",
                  "hydra.run.dir=run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "generic(json_file=" in run.stdout and ",num_decoder_blocks=2)|" in run.stdout
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["model"]["num_decoder_blocks"] == 2
    sweep = run_app("-m", "model=generic", example, "model.embed_dim=384,1536", "device=meta", "tracking=none",
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    widths = [json.loads((tmp_path / "sweep" / f"{n}_generic" / "result.json").read_text())["config"]["model"]
              for n in (0, 1)]
    assert [(m["embed_dim"], m["num_decoder_blocks"]) for m in widths] == [(384, 12), (1536, 12)]


def test_example_json_in_docs_is_a_decoder():
    spec = resolve(compose_config("model=generic", f"model.json_file={REPO / 'docs/examples/transformer.json'}",
                                  "device=meta"))
    assert spec.model.num_encoder_blocks == 0 and not spec.model.has_memory and spec.batch.seq_len == 2048


@pytest.mark.parametrize("overrides,key", [
    (["model.json_file=/nonexistent.json"], "model.json_file"),
    (["model.num_heads=5"], "model.num_heads"),
    (["model.num_encoder_blocks=0", "model.num_decoder_blocks=0"], "model.num_encoder_blocks"),
    (["model.memory_seq_len=0"], "model.memory_seq_len"),
])
def test_bad_input_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(compose_config("model=generic", *overrides))


def test_json_with_unknown_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**FIELDS, "embed_dims": 3}))
    with pytest.raises(ConfigError, match="embed_dims"):
        resolve(compose_config("model=generic", f"model.json_file={path}"))
