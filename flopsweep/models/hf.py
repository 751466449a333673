"""Any Hugging Face architecture, built by transformers from a config (no weights, no network: on ``meta`` too), with
the head that training uses and the loss computed as Hugging Face trains it::

    model=hf model.config=path/to/config.json            # a published config.json (or the folder holding it)
    model=hf model.model_type=llama +model.num_hidden_layers=2 ...   # a config of that type, fields overridden
    model=llama3_8b                                      # a preset: the published config's fields in a YAML file

Every key beside ``family``, ``name``, ``model_type``, ``config``, ``task`` and ``default_seq_len`` is a field of the
Hugging Face config. The task (the head) is the config's ``architectures[0]`` where it names one, else by the config:
an encoder-decoder trains as ``seq2seq``, a model that has a masked-LM head and is no decoder as ``masked-lm`` (BERT),
a language model as ``causal-lm``, a vision model as ``image-classification``; ``model.task`` chooses another.
The inputs come from the config: token ids and labels for text (labels shifted inside the model, as HF trains; no
attention mask: a full batch's is all ones, which Hugging Face drops); pixel values at ``batch.image_size`` (224
unless set) and class labels for images; an image and text a sample for an image-and-text model (Qwen2-VL, Gemma 3,
Llama 3.2 Vision: :mod:`~flopsweep.models.hf_vision_language`). Mixture-of-experts layers run through
``torch._grouped_mm``, counted whatever the routing. transformers is an optional extra: ``pip install 'flopsweep[hf]'``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.attention import sdpa_kernel

from flopsweep.core.errors import ConfigError, MissingExtra, pip, require
from flopsweep.core.shape import LANGUAGE_TASKS, LAYERS, ModelShape, from_fields
from flopsweep.models._transformers import quiet_hub_kernels
from flopsweep.models.base import FAMILIES, BatchShape, Family, ModelConfig, file_source
from flopsweep.models import hf_vision_language as vl
from flopsweep.models.hf_kinds import TASKS, no_misspelt_field, refused, task_of
from flopsweep.models.layers import DECODING

_OWN = ("family", "name", "model_type", "config", "task", "default_seq_len")
EXTRA = "hf"  # the extra it needs
DEFAULT_IMAGE_SIZE = 224
ATTENTION_KERNELS = ("sdpa", "eager", "flex_attention")  # model.attn_implementation: those whose ops are counted
DEFAULT_SEQ_LEN = 2048  # a text model's sequence where its config gives only its positions (Qwen3: 40,960)


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise MissingExtra("hf", "transformers", EXTRA) from None
    broken = _broken_torchvision()
    if broken is not None:  # transformers imports it where installed, and then builds nothing
        raise ConfigError("model.family", "hf", f"transformers cannot build models while the installed torchvision "
                          f"does not load ({broken}): install the torchvision built for torch {torch.__version__} "
                          f"(docs/models.md, 'torchvision'), or {pip('uninstall torchvision')}")
    quiet_hub_kernels()
    return transformers


@functools.lru_cache(maxsize=1)
def _broken_torchvision() -> Optional[str]:
    """Why an installed torchvision does not import (a wheel built for another torch), or None."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # noqa: BLE001 - RuntimeError (operator torchvision::nms does not exist), ImportError
        return " ".join(str(err).split())[:200]
    return None


@dataclass
class Config(ModelConfig):
    family: str = "hf"
    model_type: Optional[str] = None
    config: Optional[str] = None          # a config.json, or a folder holding one
    task: Optional[str] = None            # None: from the config (see the module's docstring)
    fields: dict[str, Any] = field(default_factory=dict)  # the config's fields, over the file's or the type's
    default_seq_len: Optional[int] = None

    def hf_config(self) -> Any:
        return _hf_config(self.model_type, self.config, json.dumps(self.fields, sort_keys=True), _stamp(self.config))

    def source(self) -> Optional[dict[str, Any]]:
        """A ``model.config`` file: its digest, and the architecture's fields it gave (what was built, beside the
        fields overridden)."""
        if not self.config:
            return None
        path = config_file(self.config)
        return {**file_source(path), "fields": json.loads(path.read_text())}

    def resolved_task(self) -> str:
        return task_of(self.task, self.hf_config())

    def resolve_batch(self, size: int, seq_len: Optional[int], image_size: Optional[int]) -> BatchShape:
        if self.resolved_task() == "image-text-to-text":
            return dataclasses.replace(self._text_batch(size, seq_len),
                                       image_size=image_size or vl.default_image_size(self.hf_config()))
        if self.resolved_task() == "image-classification":
            made = getattr(self.hf_config(), "image_size", None)
            return BatchShape(size, None, image_size or (made if isinstance(made, int) else DEFAULT_IMAGE_SIZE))
        return self._text_batch(size, seq_len)

    def _text_batch(self, size: int, seq_len: Optional[int]) -> BatchShape:
        longest = max_positions(self.hf_config())
        default = self.default_seq_len or (min(DEFAULT_SEQ_LEN, longest) if longest else DEFAULT_SEQ_LEN)
        return BatchShape(size, seq_len if seq_len is not None else default)

    def chosen(self, batch: BatchShape, seq_len_given: bool) -> Optional[str]:
        """A text model's sequence length where neither ``batch.seq_len`` nor ``model.default_seq_len`` gives one."""
        if seq_len_given or self.default_seq_len or batch.seq_len is None:
            return None
        longest = max_positions(self.hf_config())
        allows = f"the model allows {longest:,}" if longest else "its positions have no limit"
        return (f"batch.seq_len not given: {batch.seq_len:,} tokens, flopsweep's default for a Hugging Face config "
                f"({allows}; set batch.seq_len or model.default_seq_len)")

    def validate_run(self, device: str, training: bool) -> None:
        require(not (device == "cpu" and training and self.fields.get("attn_implementation") == "flex_attention"),
                "device.type", "cpu", "model.attn_implementation=flex_attention has no backward on the CPU in "
                "PyTorch: count the training step on device=meta (its FLOPs and memory), or time workload=inference on "
                "the CPU")

    def validate(self, batch: BatchShape) -> None:
        require(self.task is None or self.task in TASKS, "model.task", self.task, f"must be one of {', '.join(TASKS)}")
        self.task = self.resolved_task()  # recorded with the job: what was built, and what the projection reads
        chosen = self.fields.get("attn_implementation")
        require(chosen in (None, *ATTENTION_KERNELS), "model.attn_implementation", chosen,
                "counted are sdpa, eager and flex_attention (PyTorch's fused kernels, the default; the decomposed "
                "matmuls and softmax; FlexAttention over its block mask's tiles); flash-attn's kernels are not "
                "counted yet")
        hf = self.hf_config()
        # zero layers, or positions the user set, as our families refuse them (XLNet's own -1 is no limit)
        for name in (*LAYERS, *(n for n in ("max_position_embeddings", "n_positions") if n in self.fields)):
            value = getattr(hf, name, None)
            require(not (isinstance(value, int) and not isinstance(value, bool) and value < 1), f"model.{name}", value,
                    "must be an integer >= 1")
        if self.resolved_task() == "image-classification":
            made = getattr(hf, "image_size", None)
            require(not isinstance(made, int) or batch.image_size == made, "batch.image_size", batch.image_size,
                    f"this model's config is built for image_size={made}: set model.image_size instead")
            return
        images = vl.image_tokens(hf, batch.image_size) if self.resolved_task() == "image-text-to-text" else 0
        longest = max_positions(hf)
        if longest is not None:
            require(1 <= batch.seq_len <= longest - images, "batch.seq_len", batch.seq_len,
                    f"must be between 1 and the model's max_position_embeddings={longest}" +
                    (f" less its {images} image tokens" if images else ""))
        require(isinstance(getattr(hf.get_text_config(), "vocab_size", None), int), "model.vocab_size", None,
                "missing: a text model's config needs a vocab_size")


def load(fields: dict[str, Any]) -> Config:
    config = Config(family="hf", name=fields.get("name", "hf"), model_type=fields.get("model_type"),
                    config=fields.get("config"), task=fields.get("task"), default_seq_len=fields.get("default_seq_len"),
                    fields={k: v for k, v in fields.items() if k not in _OWN})
    require(bool(config.model_type) or bool(config.config), "model.model_type", None,
            "missing: give model.model_type (llama, gpt2, bert, t5, resnet, ...) or model.config=PATH")
    return config


def config_file(path: str) -> Path:
    """``model.config``: a config.json, or the folder that holds one."""
    file = Path(path).expanduser()
    return file / "config.json" if file.is_dir() else file


def _stamp(path: Optional[str]) -> Optional[str]:
    """A config file's digest: an edited file is read again, not taken from the cache (its modification time can
    stay the same over two writes close together)."""
    try:
        return file_source(config_file(path))["sha256"] if path else None
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _hf_config(model_type: Optional[str], path: Optional[str], fields_json: str,
               stamp: Optional[str] = None) -> Any:
    """The Hugging Face config: the file's (or the type's defaults), its fields overridden; one line naming the key
    for a type transformers does not know, a file it cannot read, or a field it refuses. ``stamp``: the file's, so
    that the cache never serves an edited file's old fields."""
    transformers = transformers_module()
    fields = json.loads(fields_json)
    base: dict[str, Any] = {}
    if path:
        file = config_file(path)
        try:
            base = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError("model.config", path, f"is not a readable config.json ({err})") from None
        require(isinstance(base, dict), "model.config", path, "is not a config.json (a JSON object)")
    kind = model_type or base.get("model_type")
    require(bool(kind), "model.model_type", None, f"missing: {path} names no model_type")
    given = {k: v for k, v in {**base, **fields}.items() if k != "model_type"}
    try:
        config = transformers.AutoConfig.for_model(kind, **given)
    except Exception as err:  # noqa: BLE001 - ValueError, TypeError, huggingface_hub's strict validation errors
        raise refused(err, kind, given, transformers) from None
    no_misspelt_field(transformers, kind, fields)
    if getattr(config, "is_encoder_decoder", False):  # labels become decoder inputs by a shift that needs these
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = config.pad_token_id
    return config


def max_positions(hf: Any) -> Optional[int]:
    """The longest sequence the config allows, its text model's where it has one (a multimodal ``text_config``)."""
    for config in (hf, getattr(hf, "text_config", None)):
        for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


class Model(nn.Module):
    """The Hugging Face model with its training head; ``forward`` returns the loss it computes."""

    def __init__(self, cfg: Config):
        super().__init__()
        transformers = transformers_module()
        auto = getattr(transformers, TASKS[cfg.resolved_task()][0])
        try:
            self.net = auto.from_config(cfg.hf_config())
        except (ValueError, TypeError, KeyError, AssertionError) as err:  # AssertionError: torch's own checks
            raise ConfigError("model", cfg.name, f"transformers cannot build it: {' '.join(str(err).split())[:300]}") \
                from None
        self.images_and_text = cfg.resolved_task() == "image-text-to-text"

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.images_and_text:
            return vl.loss(self.net, **inputs)
        return self.net(**inputs).loss


@dataclass
class Steps:
    """A causal LM's :class:`~flopsweep.models.base.Generator`: the model's own cache (``DynamicCache``, with what
    its architecture keeps: fewer KV heads, sliding windows, MLA's), the logits of the last position only
    (``logits_to_keep=1``, as ``generate`` asks)."""

    net: nn.Module
    vocab_size: int

    @functools.cached_property
    def _names(self) -> tuple[str, dict[str, int]]:
        """What this transformers version calls the cache (5.2x renamed ``past_key_values`` ``cache``), and
        ``logits_to_keep=1`` where the model takes it."""
        takes = inspect.signature(self.net.forward).parameters
        return ("cache" if "cache" in takes else "past_key_values",
                {"logits_to_keep": 1} if "logits_to_keep" in takes else {})

    def _run(self, tokens: torch.Tensor, cache: Any) -> Any:
        name, keep = self._names
        return getattr(self.net(input_ids=tokens, use_cache=True, **{name: cache}, **keep), name)

    def prefill(self, tokens: torch.Tensor) -> Any:
        return self._run(tokens, None)

    def decode(self, tokens: torch.Tensor, cache: Any) -> Any:
        with sdpa_kernel(DECODING):  # not cuDNN's attention, which builds a graph for each new length
            return self._run(tokens, cache)


def generator(cfg: Config) -> Optional[Callable[[Model], Steps]]:
    if cfg.resolved_task() != "causal-lm":
        return None
    return lambda model: Steps(model.net, cfg.hf_config().vocab_size)


def example_inputs(cfg: Config, batch: BatchShape, device) -> dict[str, torch.Tensor]:
    hf = cfg.hf_config()
    if cfg.resolved_task() == "image-text-to-text":
        return vl.example_inputs(hf, batch, device)
    if cfg.resolved_task() == "image-classification":
        channels = getattr(hf, "num_channels", 3)
        labels = max(int(getattr(hf, "num_labels", 2)), 1)
        return {"pixel_values": torch.randn(batch.size, channels, batch.image_size, batch.image_size, device=device),
                "labels": torch.randint(0, labels, (batch.size,), device=device)}
    shape = (batch.size, batch.seq_len)  # no padding: a full batch's attention mask is all ones, which HF drops (and
    return {"input_ids": torch.randint(0, hf.vocab_size, shape, device=device),  # reads, which meta cannot)
            "labels": torch.randint(0, hf.vocab_size, shape, device=device)}


def shape(cfg: Config) -> ModelShape:
    """From the Hugging Face config, its defaults included: ``num_key_value_heads``, ``head_dim``, the experts
    (``num_local_experts``, ``n_routed_experts``, ...), MLA's ``kv_lora_rank``, a ``text_config``'s."""
    task = cfg.resolved_task()
    return from_fields(cfg.hf_config().to_dict(), task in LANGUAGE_TASKS, task == "image-classification")


FAMILIES.add("hf", Family("hf", Config, Model, example_inputs, shape, load=load, generator=generator,
                          longest=lambda cfg: max_positions(cfg.hf_config())))
