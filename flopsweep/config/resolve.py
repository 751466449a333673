"""A composed config to a checked :class:`~flopsweep.build.spec.JobSpec`, or a one-line
:class:`~flopsweep.core.errors.ConfigError` naming the offending key: one small checker per group, nothing built.

Why one file (over 300 lines): it is the one place a composed config is checked, in the order the checks depend on
one another (the model before its batch, the batch before generation and the layout, the device before what may run
on it); split by group, that order would live in no file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from flopsweep.build import optimizers
from flopsweep.build.spec import MAX_BATCH, JobSpec, MaxBatch, Precision
from flopsweep.build.train_modes import OLD_SPELLINGS, TRAIN_MODES, TrainConf, Workload, trains
from flopsweep.config.schema import DeviceType
from flopsweep.core.device import Device
from flopsweep.core.errors import ConfigError, is_number, masked, one_line, require, require_int
from flopsweep.core.hardware import accelerator, unknown_part
from flopsweep.measure.calibration import Calibration
from flopsweep.measure.layout import ParallelConf
from flopsweep.measure.settings import GenerateConf, MeasureConf, PredictConf
from flopsweep.models import family as family_of
from flopsweep.models.base import BatchShape, Family, ModelConfig
from flopsweep.sinks.target import Target, target_of

PARAM_DTYPES = ("float32", "float16", "bfloat16", "int8")
AUTOCAST_DTYPES = ("bfloat16", "float16")


def resolve(cfg: DictConfig, given: Sequence[str] = ()) -> JobSpec:
    """Validate a composed config, of which ``given`` keys (``model.embed_dim``) were set on the command line. Every
    check names the offending key; nothing is built here."""
    typed_fields = _typed(given, "model")
    family, model = _model(cfg.model, typed_fields)
    _one_length(cfg.batch, model, typed_fields)
    batch = _batch(cfg.batch, model)
    device = _device(cfg.device)
    dtype = _dtype(cfg.dtype)
    opt = optimizers.OptimizerConf(**OmegaConf.to_container(cfg.optimizer))
    optimizers.check(opt)
    unread_opt = _unread([f"optimizer.{key}={getattr(opt, key)}" for key in sorted(_typed(given, "optimizer"))
                          if key != "name" and key not in optimizers.OPTIMIZERS[opt.name].reads],
                         f"with optimizer={opt.name}, which does not read it")
    workload, train, train_notes = _train(cfg, family, dtype.params)
    typed = "train=generate" if cfg.train.mode == "generate" else "workload=generate"  # as the user spelt it
    generate, batch, generate_note = _generate(cfg.generate, workload, family, model, batch,
                                               prompt_given=cfg.batch.seq_len is not None, typed=typed)
    measure = _measure(cfg.measure)
    untimed = _unread([f"measure.timing={measure.timing}"] if device.is_meta and measure.timing != MeasureConf().timing
                     else [], "on device=meta, where nothing is timed")
    require(not (measure.compile and workload is Workload.generate), "measure.compile", True,
            "times a training step or a forward pass: a generation (workload=generate) is timed eagerly")
    predict = _predict(cfg.predict, measure)
    max_batch = _max_batch(cfg.batch, device, trains(dtype.params, workload))
    model.validate_run(device.kind, trains(dtype.params, workload))
    parallel = _parallel(cfg, family, model, batch, device, dtype, workload, train, predict)
    tracking = _tracking(cfg)
    chosen = None if workload is Workload.generate else model.chosen(batch, cfg.batch.seq_len is not None)  # else
    # the generation's note says the prompt it chose
    notes = (*train_notes, generate_note, chosen, _unread_batch_keys(cfg.batch, batch, model), untimed, unread_opt)
    return JobSpec(model=model, family=family, batch=batch, device=device, dtype=dtype, optimizer=opt,
                   measure=measure, peak_tflops=cfg.device.peak_tflops, threads=cfg.device.threads, workload=workload,
                   train=train, max_batch=max_batch, generate=generate, predict=predict, parallel=parallel,
                   tracking=tracking, skip_existing=cfg.skip_existing, model_source=_source(model),
                   notes=tuple(n for n in notes if n))


def _model(node: DictConfig, given: frozenset[str]) -> tuple[Family, ModelConfig]:
    fields = OmegaConf.to_container(node, resolve=True)
    require(isinstance(fields, dict) and "family" in fields, "model.family", None,
            "missing: choose a preset (model=gpt2_small) or set model.family")
    name = fields.get("name")
    require(name is None or (isinstance(name, str) and name.strip() and not set(name) & set("/\\")), "model.name",
            name, "must be a non-empty name without / (it names the job's folder)")
    family = family_of(fields["family"])
    return family, family.config(fields, given)


def _source(model: ModelConfig) -> Optional[dict[str, Any]]:
    """The file that defines the model beyond its fields, read once for the job's fingerprint and result."""
    try:
        return model.source()
    except ConfigError:
        raise  # named by its key already
    except (OSError, ValueError) as err:  # the build reads it too, and says so by key
        raise ConfigError("model", None, f"its defining file cannot be read: {one_line(err, 200)}") from None


def _one_length(batch: DictConfig, model: ModelConfig, typed: frozenset[str]) -> None:
    """A model field a batch key builds the model for (ResNet-BK's ``n_seq``), given on the command line beside that
    key with another value, is refused: the batch's would be taken without a word."""
    for key, name in model.set_by_batch.items():
        given = getattr(model, name)
        require(name not in typed or batch[key] is None or batch[key] == given, f"model.{name}", given,
                f"differs from batch.{key}={batch[key]}, which sets it (the batch builds the model for its {key}, "
                "so that one sweep scales every family): give one of them")


def _batch(batch: DictConfig, model: ModelConfig) -> BatchShape:
    if batch.size != MAX_BATCH:
        require(isinstance(batch.size, int) and not isinstance(batch.size, bool) and batch.size >= 1, "batch.size",
                batch.size, f"must be an integer >= 1 or {MAX_BATCH}")
    if batch.seq_len is not None:
        require_int(batch.seq_len, "batch.seq_len")
    if batch.image_size is not None:
        require_int(batch.image_size, "batch.image_size")
    # batch.size=max: built at batch 1 until the run stage has chosen the batch
    shape = model.resolve_batch(1 if batch.size == MAX_BATCH else batch.size, batch.seq_len, batch.image_size)
    model.validate_common()
    model.validate(shape)
    return shape


def _unread_batch_keys(batch: DictConfig, shape: BatchShape, model: ModelConfig) -> Optional[str]:
    """A note for ``batch.seq_len`` or ``batch.image_size`` given to a model that does not read it (a ViT's tokens
    are its image's patches), which changed nothing without a word."""
    unread = [f"batch.{key}={given}" for key, given, used in (("seq_len", batch.seq_len, shape.seq_len),
                                                            ("image_size", batch.image_size, shape.image_size))
              if given is not None and used is None]
    return _unread(unread, f"with {model.name or 'this model'}, which does not read it")


def _typed(given: Sequence[str], group: str) -> frozenset[str]:
    """The fields of ``group`` (``model``) among the keys the command line set (``model.n_layer``: ``n_layer``)."""
    return frozenset(key[len(group) + 1:] for key in given if key.startswith(f"{group}."))


def _unread(keys: list[str], why: str) -> Optional[str]:
    """The note for keys set that change nothing in this job, and why (they were taken without a word); None for
    none."""
    return f"{', '.join(keys)} change{'s' if len(keys) == 1 else ''} nothing {why}" if keys else None


def _device(device: DictConfig) -> Device:
    import torch

    from flopsweep.measure.timing import device_name

    kind = DeviceType(device.type)
    if kind is DeviceType.auto:
        kind = DeviceType.cuda if torch.cuda.is_available() else DeviceType.cpu
    if device.threads is not None:
        require_int(device.threads, "device.threads")
        cpus = os.cpu_count() or 1
        require(device.threads <= cpus, "device.threads", device.threads, f"must be at most {cpus}, the CPUs here "
                "(more threads than CPUs only slow the timing, and too many crash OpenMP)")
    if device.peak_tflops is not None:
        require(is_number(device.peak_tflops) and 0 < device.peak_tflops < math.inf, "device.peak_tflops",
                device.peak_tflops, "must be a finite number > 0")
    if kind is DeviceType.cuda:
        require(torch.cuda.is_available(), "device", "cuda", "no CUDA GPU is visible to PyTorch here (device=cpu "
                "times the step on the CPU, device=meta counts it without one)")
        require_int(device.index, "device.index", 0)
        require(device.index < torch.cuda.device_count(), "device.index", device.index,
                f"only {torch.cuda.device_count()} CUDA device(s) visible")
        return Device("cuda", device.index, device_name(f"cuda:{device.index}"))
    return Device(kind.value, None, None if kind is DeviceType.meta else device_name(kind.value))


def _dtype(dtype: DictConfig) -> Precision:
    require(dtype.params in PARAM_DTYPES, "dtype.params", dtype.params, f"must be one of {', '.join(PARAM_DTYPES)}")
    if dtype.autocast is not None:
        require(dtype.autocast in AUTOCAST_DTYPES, "dtype.autocast", dtype.autocast,
                f"must be one of {', '.join(AUTOCAST_DTYPES)} or null")
        require(dtype.params == "float32", "dtype.autocast", dtype.autocast,
                f"mixed precision needs float32 weights, not dtype.params={dtype.params}")
    return Precision(dtype.params, dtype.autocast)


def _train(cfg: DictConfig, family: Family, params_dtype: str) -> tuple[Workload, TrainConf, list[str]]:
    """``workload`` and, for a training step, ``train.*`` (what trains), with notes: the old spellings
    ``train=inference`` and ``train=generate`` are read as their workload, and a key the mode does not read changes
    nothing (``train.rank`` with ``train=full``)."""
    workload, train, notes = Workload(cfg.workload), TrainConf(**OmegaConf.to_container(cfg.train, resolve=True)), []
    if train.mode in OLD_SPELLINGS:
        old = OLD_SPELLINGS[train.mode]
        require(workload in (Workload.train, old), "train.mode", train.mode,
                f"is the old spelling of workload={old.value}, which contradicts workload={workload.value}")
        notes.append(f"train={train.mode} is now workload={old.value} (the old spelling is read as it, for a while)")
        workload, train = old, TrainConf()
    mode = TRAIN_MODES[train.mode]
    require(workload is Workload.train or train.mode == "full", "train.mode", train.mode,
            f"chooses what trains: it needs workload=train, not workload={workload.value}")
    require(params_dtype != "int8" or not mode.freezes, "train.mode", train.mode,
            "int8 weights are an inference build: use dtype=float32 (or bfloat16) to train")
    mode.check(train, family)
    if params_dtype == "int8" and workload is Workload.train:
        notes.append("dtype=int8: weights that do not train, measured forward only (workload=inference's pass)")
    for key in (f.name for f in dataclasses.fields(TrainConf) if f.name != "mode" and f.name not in mode.reads):
        if getattr(train, key) != getattr(TrainConf(), key):  # set, where the default is unread anyway
            readers = [name for name, other in TRAIN_MODES.items() if key in other.reads]
            chosen = f"train.mode={train.mode}" if workload is Workload.train else f"workload={workload.value}"
            notes.append(_unread([f"train.{key}={getattr(train, key)}"],
                                 f"with {chosen} ({' and '.join(readers)} read{'s' if len(readers) == 1 else ''} it)"))
    return workload, train, notes


class CannotGenerate(ConfigError):
    """A generation asked of a model that cannot generate (an encoder, a CNN)."""


def _generate(node: DictConfig, workload: Workload, family: Family, model: ModelConfig, batch: BatchShape,
              prompt_given: bool, typed: str = "workload=generate") -> tuple[GenerateConf, BatchShape, Optional[str]]:
    """``generate.*`` checked, and the batch a generation runs: a prompt not given is the model's default length, cut
    to leave room in its positions for the new tokens (GPT-2's 1,024 positions: a prompt of 897 before 128 new),
    and said (the note); in another workload, a key set that it does not read is said."""
    generate = GenerateConf(**OmegaConf.to_container(node))
    if workload is not Workload.generate:  # a key set for a generation changes nothing here: said
        unread = [f"generate.{k}={v}" for k, v in dataclasses.asdict(generate).items()
                  if v != getattr(GenerateConf(), k)]
        return generate, batch, _unread(unread, f"with workload={workload.value} (workload=generate reads it)")
    require_int(generate.new_tokens, "generate.new_tokens")
    if family.generator is None or family.generator(model) is None:  # said of the key as the user typed it
        raise CannotGenerate(typed, None, "needs a decoder with a KV cache (the decoder family, or model=hf as a "
                             f"causal-lm); {model.name or family.name} is a {family.name} model{_task_of(model)}")
    longest = family.longest(model) if family.longest is not None else None
    note = None
    if not prompt_given:
        note = model.chosen(batch, False) or f"batch.seq_len not given: a prompt of {batch.seq_len:,} tokens (the " \
            "model's default)"
        if longest is not None and batch.seq_len + generate.new_tokens - 1 > longest:
            batch = dataclasses.replace(batch, seq_len=max(1, longest - generate.new_tokens + 1))
            note = (f"batch.seq_len not given: a prompt of {batch.seq_len:,} tokens, leaving room in the model's "
                    f"{longest:,} positions for generate.new_tokens={generate.new_tokens}")
    context = batch.seq_len + generate.new_tokens - 1
    if longest is not None:  # (its line formatted only where there is a longest)
        require(context <= longest, "generate.new_tokens", generate.new_tokens, f"with batch.seq_len={batch.seq_len} "
                f"makes a context of {context:,} tokens, over the model's {longest:,} positions")
    return generate, batch, note


def _task_of(model: ModelConfig) -> str:
    task = getattr(model, "task", None)
    return f" ({task})" if task else ""


def _predict(node: DictConfig, measure: MeasureConf) -> PredictConf:
    """``predict.hardware``: a part of the hardware table, or a calibration profile (a JSON file that exists);
    ``predict.fused`` follows ``measure.compile`` unless given."""
    predict = PredictConf(**OmegaConf.to_container(node))
    if predict.hardware is not None:
        hardware = str(predict.hardware)
        require(hardware.strip() != "", "predict.hardware", hardware, "must name a part or a profile file")
        is_file = hardware.endswith(".json")
        require(not is_file or Path(hardware).is_file(), "predict.hardware", hardware,
                "no such calibration profile (flopsweep-calibrate writes one)")
        require(is_file or accelerator(hardware) is not None, "predict.hardware", hardware,
                f"{unknown_part(hardware)}; or a profile file (.json)")
        if is_file:
            try:
                Calibration.load(Path(hardware))
            except (OSError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
                raise ConfigError("predict.hardware", hardware, one_line(err, 200)) from None
        predict.hardware = hardware
    require(predict.fused is None or isinstance(predict.fused, bool), "predict.fused", predict.fused,
            "must be true or false")
    if predict.fused is None:
        predict.fused = measure.compile
    return predict


def _parallel(cfg: DictConfig, family: Family, model: ModelConfig, batch: BatchShape, device: Device,
              dtype: Precision, workload: Workload, train: TrainConf, predict: PredictConf) -> Optional[ParallelConf]:
    """``parallel.*``: None where no key is set; else the layout checked against the model's shape and the batch
    (measure/layout.py), and what the rank counter needs: a full training step of a transformer on meta."""
    node = ParallelConf(**OmegaConf.to_container(cfg.parallel))
    if not node.set:
        return None
    require(device.is_meta, "device.type", str(device), "parallel.* counts a layout rank by rank without memory: it "
            "needs device=meta")
    require(cfg.batch.size != MAX_BATCH, "batch.size", MAX_BATCH, "parallel.* takes the global batch of a step: give a "
            "number")
    require(train.mode == "full" and dtype.params in ("float32", "bfloat16", "float16"), "train.mode", train.mode,
            "parallel.* counts full training (train=full, weights in float32, bfloat16 or float16)")
    require(workload is Workload.train, "workload", workload.value, "parallel.* counts a training step")
    require(cfg.optimizer.name != "none", "optimizer.name", "none", "parallel.* counts a step with its optimizer")
    shape = family.shape(model)
    require(bool(shape.heads and shape.layers), "parallel", None, f"counts transformer decoders: "
            f"{model.name or family.name} has no attention heads")
    require(not shape.experts or dtype.compute == "bfloat16", "dtype.name", cfg.dtype.name, "a mixture of experts' "
            "grouped matmuls run in bfloat16 (the kernels GPUs have): use dtype=bfloat16 or mixed_bf16")
    layout = node.layout()
    layout.check_model(heads=shape.heads, kv_heads=shape.kv_heads, layers=shape.layers, batch_size=batch.size,
                       seq_len=batch.seq_len, experts=shape.experts)
    layout.check_counted(mixed_precision=dtype.autocast is not None,
                         causal_half=cfg.measure.causal_attention == "half")
    if node.gpus is not None:
        require_int(node.gpus, "parallel.gpus")
        require(layout.world_size == node.gpus, "parallel.gpus", node.gpus, "is the world size a layout search targets "
                f"(+sweep=layouts): this layout's dp * tp * pp * cp is {layout.world_size}")
    if node.gpus_per_node is not None:
        require_int(node.gpus_per_node, "parallel.gpus_per_node")
        part = accelerator(predict.hardware) if predict.hardware and not predict.hardware.endswith(".json") else None
        domain = part.interconnect.domain if part is not None and part.interconnect is not None else None
        require(domain is None or node.gpus_per_node <= domain, "parallel.gpus_per_node", node.gpus_per_node,
                f"is more than the {domain} GPUs one scale-up domain of the {predict.hardware} joins")
    return node


def _measure(node: DictConfig) -> MeasureConf:
    measure = MeasureConf(**OmegaConf.to_container(node))
    require(is_number(measure.memory_share) and 0 < measure.memory_share <= 1, "measure.memory_share",
            measure.memory_share, "must be a number in (0, 1]")
    require_int(measure.warmup, "measure.warmup", 0)
    require_int(measure.repeats, "measure.repeats")
    require_int(measure.module_depth, "measure.module_depth", 0)
    require(not measure.profile or measure.count, "measure.profile", True,
            "needs the counted step (measure.count=true): the profile is per-module FLOPs and latency")
    require(measure.timing in ("full", "per_block"), "measure.timing", measure.timing, "must be full or per_block")
    require(measure.causal_attention in ("full", "half"), "measure.causal_attention", measure.causal_attention,
            "must be full or half")
    require(isinstance(measure.compile, bool), "measure.compile", measure.compile, "must be true or false")
    require(not measure.compile or measure.timing == "full", "measure.compile", True,
            "times the whole compiled step: not with measure.timing=per_block")
    return measure


def _max_batch(batch: DictConfig, device: Device, training: bool) -> Optional[MaxBatch]:
    """``batch.size=max`` as the policy the run stage follows (its budget, ``batch.memory_budget_gib``, in bytes),
    or None for a given batch size; the budget is checked either way."""
    gib = batch.memory_budget_gib
    if gib is not None:
        require(is_number(gib) and 0 < gib < math.inf, "batch.memory_budget_gib", gib,
                "must be a finite number of GiB > 0")
    if batch.size != MAX_BATCH:
        return None
    require(training, "batch.size", MAX_BATCH, "sizes a training step: it needs workload=train and weights that "
            "train (not dtype=int8)")
    require(gib is not None or not device.is_meta, "batch.memory_budget_gib", None,
            "missing: batch.size=max on device=meta needs a budget (meta has no memory of its own)")
    return MaxBatch(None if gib is None else round(gib * 2**30))  # round: 0.001 GiB read back as 0.001


def _tracking(cfg: DictConfig) -> Optional[Target]:
    """Where the job's run goes, computed once for the job; a target that can never work is refused here, before
    the job is measured."""
    require(not cfg.skip_existing or cfg.tracking.kind != "none", "skip_existing", True,
            "needs a store to find finished runs in: tracking=local or tracking=server")
    return target_of(cfg.tracking, Path.cwd())


def job_config(cfg: DictConfig, spec: JobSpec) -> dict[str, Any]:
    """The job's config as recorded: resolved, with the model and batch as built (a JSON file, batch.image_size
    (ViT) or batch.seq_len (ResNet-BK) can change the model, and a batch.seq_len or image_size left out is the
    model's default; a generation's prompt, as cut to leave room for its new tokens)."""
    config = recorded(cfg)
    config["model"] = {**config["model"], **dataclasses.asdict(spec.model)}
    config["batch"] = {**config["batch"], **dataclasses.asdict(spec.batch)}
    if spec.max_batch is not None:  # the policy, until the run stage records the batch it chose
        config["batch"]["size"] = MAX_BATCH
    # only what the chosen optimizer and train mode read: a full fine-tune records no LoRA rank, AdamW no GaLore gap
    kept = {"name", *optimizers.OPTIMIZERS[spec.optimizer.name].reads}
    config["optimizer"] = {k: v for k, v in config["optimizer"].items() if k in kept}
    config["workload"] = spec.workload.value  # train=generate, the old spelling, recorded as what it means
    if spec.workload is Workload.train:
        kept = {"mode", *TRAIN_MODES[spec.train.mode].reads}
        config["train"] = {k: v for k, v in config["train"].items() if k in kept}
    else:  # nothing trains
        config.pop("train", None)
    if not spec.generates:
        config.pop("generate", None)
    if spec.parallel is None:
        config.pop("parallel", None)
    return config


def recorded(cfg: DictConfig, resolve: bool = True) -> dict[str, Any]:
    """A composed config as a job records it (``result.json``, MLflow): plain values, the password of any address in
    it masked (``MLFLOW_TRACKING_URI`` resolved into ``tracking.uri``)."""
    def hidden(value: Any) -> Any:
        if isinstance(value, str):
            return masked(value)
        if isinstance(value, dict):
            return {k: hidden(v) for k, v in value.items()}
        return [hidden(v) for v in value] if isinstance(value, list) else value

    return hidden(OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True))
