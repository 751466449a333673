"""The job's record (core/result.py): its status a type, the parts of ``info`` that several layers read as records,
kept in result.json as the dicts earlier versions wrote and read back from files those versions (or a hand) wrote."""

import json

import pytest

from flopsweep.core.result import JobTimes, Result, Status, TimingInfo, Tracking


def test_a_status_is_a_type_that_reads_and_writes_as_its_name():
    result = Result("oom", "out of memory", {})
    assert result.status is Status.OOM and result.status == "oom" and f"{result.status}" == "oom"
    assert result.status.failed and not Result("skipped", None, {}).status.failed
    assert json.loads(result.to_json())["status"] == "oom"
    with pytest.raises(ValueError, match="status 'done' is none of ok, failed, skipped, oom, lost"):
        Result("done", None, {})


def test_a_file_with_a_status_no_version_wrote_is_not_a_result(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"status": "finished", "config": {}}))
    with pytest.raises(ValueError, match=r"result.json: not a flopsweep result \(status 'finished'"):
        Result.read(path)
    assert Result.read_or_none(path) is None


def test_the_records_are_written_as_the_dicts_they_were_and_read_back(tmp_path):
    result = Result("ok", None, {"model": {"name": "tiny"}}, {"flops/forward": 1.0})
    result.tracking = Tracking(False, uri="http://127.0.0.1:5000", experiment="e", error="refused")
    result.job_times = JobTimes(10.0, 12.5)
    result.info["timing"] = {"method": "full", "repeats": 3, "threads": 2, "device_name": "cpu", "warmup": 1,
                             "step_min_s": 0.1, "step_max_s": 0.2, "blocks": None}  # as run/assemble.py writes it
    result.write(tmp_path / "result.json")
    data = json.loads((tmp_path / "result.json").read_text())
    # only the fields that are set: the files earlier versions wrote, and what they read
    assert data["info"]["tracking"] == {"logged": False, "uri": "http://127.0.0.1:5000", "experiment": "e",
                                        "error": "refused"}
    assert data["info"]["job"] == {"start": 10.0, "end": 12.5}
    back = Result.read(tmp_path / "result.json")
    assert back.tracking == Tracking(False, "http://127.0.0.1:5000", "e", error="refused")
    assert back.timing == TimingInfo("full", 3, 2, "cpu", 1, 0.1, 0.2) and back.device_name == "cpu"
    assert back.job_times == JobTimes(10.0, 12.5) and back.model_name == "tiny"


def test_a_record_a_hand_or_a_newer_version_wrote_reads_as_far_as_it_goes(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"status": "ok", "config": {}, "metrics": {"a": 1.0}, "info": {
        "tracking": {"uri": "sqlite:///x.db"},                           # no 'logged': not a record of a try
        "timing": {"device_name": "NVIDIA A100-SXM4-80GB"},               # only the part, by hand
        "prediction": {"part": "A100", "digest": "abc", "added_later": 1}}}))  # a key this version does not know
    result = Result.read(path)
    assert result.tracking is None
    assert result.device_name == "NVIDIA A100-SXM4-80GB" and result.timing.method is None
    assert (result.predicted_by.part, result.predicted_by.digest) == ("A100", "abc")
    assert result.bottleneck is None and result.layout == {} and result.source_digest is None


@pytest.mark.parametrize("model, label", [
    ({"name": "gpt2_small", "family": "decoder"}, "gpt2_small"),                  # a preset: its name
    ({"name": "hf", "config": "models/Llama-3.1-8B/config.json"}, "hf:Llama-3.1-8B"),  # a config.json: its folder
    ({"name": "hf", "config": "configs/qwen3.json"}, "hf:qwen3"),                 # another file: its name
    ({"name": "hf", "config": "docs/examples/Llama-3.2-1B"}, "hf:Llama-3.2-1B"),  # a folder: whole (it read Llama-3)
    ({"name": "hf", "model_type": "mixtral"}, "hf:mixtral"),                      # fields: the type
    ({"name": "custom", "_target_": "mypkg.models.Net"}, "custom:Net"),           # your own model: its class
    ({"name": "custom_example", "_target_": "examples.custom_model.TinyNet"}, "custom_example"),  # a preset of it
])
def test_a_model_is_named_by_what_it_is(model, label):
    from omegaconf import OmegaConf

    from flopsweep.config.compose import model_folder
    from flopsweep.core.result import model_label
    from flopsweep.sinks.identity import run_name

    assert model_label(model) == label == Result("ok", None, {"model": model}).model_name
    assert run_name({"model": model, "batch": {"size": 8}}).startswith(f"{label}|b8|")
    # its job folder too (every HF config's was ..._hf): as the resolver in conf/config.yaml is given the fields
    assert model_folder(OmegaConf.create(model)) == label.replace(":", "-")


def test_a_runs_name_says_what_differs_from_the_plain_training_step_of_its_model():
    """A LoRA fine-tune, an SGD step, a compiled step and a 1,024-GPU layout were all named like the plain run."""
    from flopsweep.sinks.identity import run_name

    base = {"model": {"name": "gpt3_175b"}, "batch": {"size": 8, "seq_len": 2048}, "dtype": {"name": "bfloat16"},
            "device": {"type": "meta"}, "train": {"mode": "full"}, "optimizer": {"name": "adamw"}}
    assert run_name(base) == "gpt3_175b|b8|s2048|bfloat16|meta"
    assert run_name({**base, "train": {"mode": "lora", "rank": 8}}).endswith("|meta|lora")
    assert run_name({**base, "optimizer": {"name": "sgd"}, "measure": {"compile": True}}).endswith("|meta|sgd|compiled")
    layout = {"dp": 16, "tp": 8, "pp": 8, "zero": 1, "cp": None, "micro_batch_size": 1, "recompute": "none",
              "sequence_parallel": False}
    assert run_name({**base, "parallel": layout}).endswith("|meta|dp16tp8pp8zero1")
    # what else tells two layouts' steps apart: three of the docs' commands shared one name
    other = {**layout, "micro_batch_size": 2, "recompute": "full", "sequence_parallel": True}
    assert run_name({**base, "parallel": other, "predict": {"fused": True}}).endswith(
        "|meta|dp16tp8pp8zero1|mb2|seqpar|recompute=full|fused")
    assert run_name({**base, "workload": "generate"}).endswith("|meta|generate")  # AdamW or not: nothing steps


def test_a_users_model_file_that_names_only_its_family_gets_a_folder_named_as_its_run():
    """A --config-dir model file (family, _target_, inputs; no name, as models.md's recipe) got a folder ..._?,
    its run and console custom:Net."""
    from omegaconf import OmegaConf

    from flopsweep.config.compose import model_folder

    assert model_folder(OmegaConf.create({"family": "custom", "_target_": "mymodel.Net"})) == "custom-Net"
