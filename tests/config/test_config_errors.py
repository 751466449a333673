"""Bad input fails before any model is built, with one line that names the offending key."""

import pytest

from flopsweep.config.resolve import resolve
from flopsweep.core.errors import ConfigError
from tests.helpers import compose_config, run_app, run_cli

BAD = [
    (["batch.size=-1"], "batch.size"),
    (["batch.size=0"], "batch.size"),
    (["model.d_ff=0"], "model.d_ff=0: must be an integer >= 1"),        # it was taken as 4 * d_model, recorded as 0
    (["model.dropout=1.5"], "model.dropout=1.5: must be a probability"),
    (["model=resnet_bk_baseline", "model.dropout_p=-0.1"], "model.dropout_p"),
    (["device.peak_tflops=inf"], "device.peak_tflops=inf: must be a finite number"),
    (["tracking.experiment=''"], "tracking.experiment"),                 # a store target that can never work
    (["tracking.dir=/dev/null"], "tracking.dir='/dev/null': is not a folder"),
    (["tracking=server", "tracking.uri=ftp://example.com/x"], "tracking.uri='ftp://example.com/x': not a store"),
    (["tracking=server", "tracking.uri=null"], "tracking.uri"),
    (["batch.seq_len=4096"], "batch.seq_len"),             # gpt2_small has 1024 positions
    (["batch.seq_len=0"], "batch.seq_len"),
    (["model=vit_b16", "batch.image_size=100"], "batch.image_size"),  # not a multiple of the 16 px patch
    (["model.n_head=7"], "model.n_head"),                   # 7 does not divide 768
    (["model=qwen2_5_0_5b", "model.n_kv_head=4"], "model.n_kv_head"),  # 4 does not divide 14
    (["model.norm=batchnorm"], "model.norm"),
    (["model.act=swish"], "model.act"),
    (["model.n_layer=0"], "model.n_layer"),
    (["model.family=rnn"], "model.family"),
    (["model.name=a/b"], "model.name"),
    (["model=llama2_7b", "model.d_model=6", "model.n_head=2"], "model.n_head"),   # heads of width 3: rope needs even
    (["model=llama2_7b", "model.rope_theta=0"], "model.rope_theta"),
    (["model.norm_eps=-1"], "model.norm_eps"),
    (["model=generic", "model.num_heads=3"], "model.embed_dim"),                  # its width's own key
    (["+model.n_haed=12"], "model.n_haed"),                 # a typo added with +
    (["device=cuda"], "device='cuda': no CUDA GPU is visible to PyTorch here (device=cpu times"),  # no GPU here
    (["model=custom_example", "model.inputs=5"], "model.inputs=5"),
    (["model=custom_example", "model.inputs=[{name: src, shape: 7}]"], "model.inputs[0].shape=7"),
    (["device.threads=0"], "device.threads"),
    (["device.threads=99999"], "device.threads"),           # more than the CPUs: OpenMP would crash the job
    (["device.peak_tflops=-5"], "device.peak_tflops"),
    (["dtype.params=int4"], "dtype.params"),
    (["dtype.autocast=float8"], "dtype.autocast"),
    (["dtype=bfloat16", "dtype.autocast=float16"], "dtype.autocast"),
    (["optimizer.name=lion"], "optimizer.name"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["optimizer.eps=-1"], "optimizer.eps"),
    (["optimizer=galore_adamw", "optimizer.rank=0"], "optimizer.rank"),
    (["optimizer=galore_adamw", "optimizer.update_proj_gap=0"], "optimizer.update_proj_gap"),
    (["optimizer=sgd_momentum", "optimizer.momentum=1.5"], "optimizer.momentum"),
    (["optimizer.betas=[0.9]"], "optimizer.betas"),
    (["measure.repeats=0"], "measure.repeats"),
    (["measure.warmup=-1"], "measure.warmup"),
    (["measure.timing=sometimes"], "measure.timing"),
    (["measure.causal_attention=quarter"], "measure.causal_attention"),
    (["skip_existing=true", "tracking=none"], "skip_existing"),  # nothing to look finished runs up in
    # Hugging Face's strict config validation, one line naming the field (it was a 70-line traceback)
    (["model=hf", "model.model_type=llama", "+model.hidden_size=65", "+model.num_attention_heads=4"],
     "model: The hidden size (65) is not a multiple of the number of attention heads (4)"),
    (["model=hf", "model.model_type=llama", "+model.hidden_size=abc"], "model.hidden_size='abc': Field 'hidden_size'"),
    (["model=hf", "model.model_type=llama", "+model.hidden_size=null"], "model.hidden_size: Field 'hidden_size' "
                                                                        "expected int, got NoneType"),
    (["model=hf", "model.model_type=llama", "+model.num_hidden_layers=0"], "model.num_hidden_layers=0: must be"),
    (["model=hf", "model.model_type=llama", "+model.max_position_embeddings=0"], "model.max_position_embeddings=0"),
    # an architecture built as a part of itself without a word, now refused by the key
    (["model=hf", "model.model_type=whisper"], "model.model_type='whisper': is a speech-to-text model"),
    # built as an image classifier on its vision tower alone (87.5M of CLIP's 151M), without a word
    (["model=hf", "model.model_type=clip"], "model.model_type='clip': is an image-and-text contrastive model "
                                            "(CLIPModel), which flopsweep does not build yet; its "
                                            "CLIPForImageClassification alone is model.task=image-classification"),
    (["model=hf", "model.model_type=llava"], "is an image-and-text model (LlavaForConditionalGeneration)"),
    (["model=hf", "model.model_type=gemma3n"], "its text model is model.model_type=gemma3n_text"),
    (["model=hf", "model.model_type=llama", "+model.attn_implementation=flash_attention_2"],
     "model.attn_implementation='flash_attention_2': counted are sdpa, eager and flex_attention"),
    (["model=hf", "model.model_type=llama", "+model.attn_implementation=flex_attention", "device=cpu"],
     "device.type='cpu': model.attn_implementation=flex_attention has no backward on the CPU in PyTorch"),
    (["model=hf", "model.model_type=llava", "model.task=image-text-to-text"],
     "model.task='image-text-to-text': builds qwen2_vl, gemma3, mllama whole, not llava"),
    # a name that holds a part's: it predicted an H100's step as an H1000's
    (["device=meta", "predict.hardware=H1000"], "predict.hardware='H1000': is not in the hardware table (did you "
                                                 "mean H100?)"),
    # a letter O typed for a zero: A100, not A10G, one letter off too
    (["device=meta", "predict.hardware=A10O"], "predict.hardware='A10O': is not in the hardware table (did you "
                                                "mean A100?)"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_names_its_key(overrides, key):
    import torch

    if key == "device.type" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*overrides))
    message = str(err.value)
    assert key in message
    assert "\n" not in message


def test_valid_config_resolves():
    spec = resolve(compose_config("model=bert_base", "batch.size=8", "dtype=bfloat16", "device=cpu"))
    assert spec.batch.size == 8 and spec.batch.seq_len == 128 and spec.dtype.params == "bfloat16"


def test_a_spec_carries_what_was_resolved_so_nothing_below_reads_the_config_again(tmp_path, monkeypatch):
    """device=auto decided (with the CPU's model as its name), mixed precision typed, batch.size=max a policy beside
    a batch that builds, and the tracking target and skip_existing the job uses."""
    import torch

    from flopsweep.core.hardware import cpu_model

    monkeypatch.chdir(tmp_path)
    spec = resolve(compose_config("device.type=auto", "dtype.autocast=bfloat16", "batch.size=max",
                                  "batch.memory_budget_gib=2", "skip_existing=true"))
    if torch.cuda.is_available():
        assert spec.device.is_cuda and str(spec.device) == "cuda:0"
        assert spec.device.name == torch.cuda.get_device_name(0)
    else:
        assert (spec.device.kind, str(spec.device), spec.device.name) == ("cpu", "cpu", cpu_model())
    assert spec.dtype.compute == "bfloat16" and spec.dtype.weights is torch.float32
    assert spec.dtype.autocast_dtype is torch.bfloat16
    assert spec.batch.size == 1 and spec.max_batch is not None and spec.max_batch.budget_bytes == 2 * 2**30
    assert spec.skip_existing and spec.tracking.experiment == "flopsweep"
    assert spec.tracking.uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    meta = resolve(compose_config("device=meta", "tracking=none"))
    assert meta.device.is_meta and meta.device.name is None and meta.tracking is None and meta.max_batch is None


def test_a_device_is_one_of_its_kinds():
    from flopsweep.core.device import Device

    assert str(Device("cuda", 1, "NVIDIA H100 80GB HBM3")) == "cuda:1"
    for kind, index in (("tpu", None), ("cuda", None), ("cpu", 0)):
        with pytest.raises(ValueError):
            Device(kind, index)


@pytest.mark.parametrize("args,key", [
    (["batch.size=-1"], "batch.size"),
    (["model.n_head=7"], "model.n_head"),
    # a typo: rejected by Hydra's struct mode at compose time, with the key meant (Hydra advised appending it with +)
    (["batch.sizee=8"], "batch.sizee: no such key (did you mean batch.size?)"),  # + added a key nothing reads
    (["batch_size=4"], "batch_size: no such key (did you mean batch.size?)"),  # +batch_size=4 ran batch 1
    (["batch.foo=1"], "batch.foo: no such key (batch's keys: size, seq_len, image_size, memory_budget_gib)"),
    (["devce=meta"], "devce: no such key (did you mean device?"),
    (["batch.sise=8"], "batch.sise: no such key (did you mean batch.size?"),  # a letter off: no suggestion before
    (["workload=infer"], "workload='infer': must be one of train, inference, generate (did you mean inference?)"),
    (["model=bert_base", "train=generate"], "train=generate: needs a decoder with a KV cache"),  # as typed: it
    # named workload='generate', a key the user never typed
    (["model.n_layr=4"], "model.n_layr: no such key (did you mean model.n_layer?)"),  # the default preset's family
    # a typed family's fields, not another's (generic's num_heads), and no +key to add (bert refuses it after)
    (["model=bert_base", "model.num_heads=8"], "model.num_heads: no such key (did you mean model.n_head?)"),
    (["model=generic", "model.n_head=8"], "model.n_head: no such key (did you mean model.num_heads?)"),
    (["model=hf", "model.hidden_sz=8"], "model.hidden_sz: no such key (+model.hidden_sz=... adds one)"),  # a config's
    (["model=custom", "model.target=x"], "model.target: no such key (did you mean model._target_?"),  # not itself
    (["model=gpt2_smal"], "model=gpt2_smal: no such option (did you mean model=gpt2_small?)"),  # not 65 presets
    (["device=cdua"], "cdua"),                # an option that does not exist
    (["batch.size=abc"], "batch.size"),       # the schema's type check
    (["batch.seq_len=abc"], "batch.seq_len='abc': must be an integer"),  # OmegaConf's merge message before
    (["measure.profile=maybe"], "measure.profile='maybe': must be true or false"),
    (["measure.memory_share=x"], "measure.memory_share='x': must be a number"),
    (["model=gpt2_small,gpt2_medium"], "model=gpt2_small,gpt2_medium: values with commas run one job each only in a "
                                       "sweep: flopsweep -m model=gpt2_small,gpt2_medium ..."),  # Hydra's 3 choices
    (["model.n_layer=${oops}"], "model.n_layer: Interpolation key 'oops' not found"),  # resolved in the job
    (["model=nope"], "of them: flopsweep --help lists them)"),  # not 65 presets in 700 characters: where they are
    (["dtype=fp9"], "dtype=fp9: no such option (one of bfloat16, float16, float32, int8, mixed_bf16, mixed_fp16)"),
    (["device=gpu"], "device=gpu: no such option (did you mean device=cuda?)"),  # not the nearest spelling, cpu
    (["optimizer=adamW"], "(did you mean optimizer=adamw?)"),  # not adam
    (["dtype=BF16"], "(did you mean dtype=bfloat16?)"),
    (["+sweep=gpt3_famly"], "+sweep=gpt3_famly: no such option (did you mean +sweep=gpt3_family?)"),  # sweep=...
    (["gpt2_small"], "gpt2_small: an override is key=value (did you mean model=gpt2_small?)"),  # Hydra's grammar
    (["gpt3_family"], "(did you mean +sweep=gpt3_family?)"),
    (["--model=gpt2_small"], "--model: not a flag of flopsweep, which takes overrides, key=value (did you mean "
                             "model=gpt2_small?)"),  # argparse's usage of Hydra's flags before
    (["--batch=4"], "--batch: not a flag of flopsweep, which takes overrides, key=value (did you mean "
                    "batch.size=4?)"),  # it gave one example for every flag
    (["--seq-len=128"], "(did you mean batch.seq_len=128?)"),
    (["--batch-size=8"], "(did you mean batch.size=8?)"),
    (["--foo=3"], "--foo: not a flag of flopsweep, which takes overrides, key=value (model=gpt2_small, batch.size=8)"),
    (["-m", "model=gpt2_small", "model.n_layer=1,abc"], "model.n_layer='abc': must be an integer"),  # before any job
    (["tracking=server", "tracking.uri=ftp://example.com/x"], "tracking.uri='ftp://example.com/x'"),  # not measured
    (["-m", "model=gpt2_small", "batch.seq_len=range(16,16)"], "batch.seq_len=range(16,16): sweeps no value"),
    (["-m", "model=glob(nope*)"], "model=glob(nope*): sweeps no value"),  # it exited 0 with an empty table
])
def test_cli_error_is_one_line_and_has_no_traceback(tmp_path, args, key):
    flags = [a for a in args if a.startswith("-")]  # -m goes first, device=meta before the value under test
    run = run_cli if args == ["batch.size=-1"] else run_app  # the process contract once, the same app in-process after
    proc = run(*flags, "device=meta", *(a for a in args if a not in flags), cwd=tmp_path)
    assert proc.returncode == 2  # a usage error, whether Hydra or the schema refuses it (ours exited 1)
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # Hydra's own errors too: they are several lines as Hydra prints them
    assert line.startswith("flopsweep: error: ") and key in line, proc.stderr
    if "-m" not in flags:  # one command refused: nothing to keep, no folder, no run
        assert "results:" not in proc.stdout and not list(tmp_path.glob("outputs/runs/*/*")), proc.stdout
        assert not list(tmp_path.glob("outputs/mlartifacts/*")) and not list(tmp_path.glob("outputs/mlruns/*"))


def test_a_custom_model_that_refuses_its_arguments_gives_its_own_reason():
    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job

    cfg = compose_config("model=custom_example", "model.nhead=3", "device=meta", "tracking=none")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    message = result.error
    assert result.status == "failed"
    assert message.startswith("model._target_='torch.nn.TransformerEncoderLayer': could not be built: ")
    assert "divisible" in message and "\n" not in message  # PyTorch's own words, not Hydra's wrapper's first line


BUILT_BAD = [  # found when the model is built (on meta first for a cpu job), still before anything is measured
    (["train=lora", "train.rank=100000"], "train.rank=100000: must be at most the width of the layers it adapts "
                                          "(768: blocks.0.attn.qkv is 768 -> 2304)"),  # it built a 5.6 G "adapter"
    (["train=dora", "train.rank=769"], "train.rank=769: must be at most the width"),
    (["model.d_model=1000000000", "model.n_head=1"], "model.d_model=1000000000: too large: a tensor of "
                                                     "[3000000000, 1000000000] elements overflows"),
    (["model=custom_example", "model._target_=math.pi"], "model._target_='math.pi': could not be built: "),
    (["model=custom_example", "model._target_=collections.OrderedDict"],
     "model._target_='collections.OrderedDict': built a collections.OrderedDict, not a torch.nn.Module"),
    (["model=custom_example", "model.inputs.0.shape=[batch,seq_len,128]"],
     "model.inputs[0].shape=['batch', 'seq_len', 128]: the model refused its inputs: AssertionError: "),
    (["model=custom_example", "model.inputs.0.shape=[batch,seq_len,128]", "device=cpu"],
     "model.inputs[0].shape=['batch', 'seq_len', 128]: the model refused its inputs: "),
]


@pytest.mark.parametrize("overrides,key", BUILT_BAD, ids=[" ".join(o) for o, _ in BUILT_BAD])
def test_a_value_found_bad_when_the_model_is_built_names_its_key(overrides, key):
    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job

    cfg = compose_config("model.n_layer=1", "device=meta", "batch.seq_len=16", *overrides) \
        if "model=custom_example" not in overrides else compose_config("device=meta", "batch.seq_len=16", *overrides)
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "failed"
    assert result.error.startswith(key) and "\n" not in result.error, result.error


def test_a_misspelt_key_of_a_custom_models_input_is_refused_naming_it():
    """dtpye: int64 was left out without a word: the input stayed float32."""
    from flopsweep.core.errors import ConfigError
    from tests.helpers import custom_model

    with pytest.raises(ConfigError) as err:
        resolve(compose_config(*custom_model("tests.helpers.BugInForward", "[{name:x,shape:[batch,4],dtpye:int64}]"),
                               "device=meta"))
    assert str(err.value) == ("model.inputs[0].dtpye='int64': no such key: an input takes name, shape, dtype, high "
                              "(did you mean dtype?)")


def test_mse_takes_the_floating_output_of_a_dict():
    """A forward returning {"logits": ...} with model.loss=mse was refused: 'has no floating output (a dict of
    logits) ... or set model.loss=mse', which was set."""
    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job
    from tests.helpers import custom_model

    cfg = compose_config(*custom_model("tests.helpers.LogitsOnly", "[{name:x,shape:[batch,4]}]", loss="mse"),
                         "device=meta", "batch.size=2")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
    assert result.metrics["flops/forward"] == 2 * 2 * 4 * 3  # the projection, the one matmul-class op


def test_a_bug_in_a_models_own_forward_says_where_it_was_raised():
    """It read as bad inputs alone, and no file held a traceback: nothing to debug from."""
    import re

    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job
    from tests.helpers import custom_model

    cfg = compose_config(*custom_model("tests.helpers.BugInForward", "[{name:x,shape:[batch,4]}]"), "device=meta")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert re.fullmatch(r"model.inputs\[0\].shape=\['batch', 4\]: the model refused its inputs \(raised at "
                        r"helpers.py:\d+, in forward\): RuntimeError: my own bug \(\(1, 4\)\)", result.error), \
        result.error


def test_an_adapter_as_wide_as_its_layer_is_allowed():
    from omegaconf import OmegaConf

    from flopsweep.run.job import run_job

    cfg = compose_config("model.n_layer=1", "device=meta", "batch.seq_len=16", "train=dora", "train.rank=768")
    result = run_job(resolve(cfg), OmegaConf.to_container(cfg, resolve=True))
    assert result.status == "ok", result.error
