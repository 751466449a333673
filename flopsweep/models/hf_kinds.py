"""What a Hugging Face config is to flopsweep (:mod:`flopsweep.models.hf`): the head it trains with (its task), the
model types flopsweep does not build yet (speech, the image-and-text ones beside Qwen2-VL, Gemma 3 and Llama 3.2
Vision: refused rather than built as a part of themselves), and transformers' refusal of a config as one line naming
the key, a misspelt field's included."""

from __future__ import annotations

import re
from typing import Any, Optional

from flopsweep.core.errors import ConfigError, nearest, require
from flopsweep.models._transformers import auto_mappings
from flopsweep.models.hf_vision_language import VISION_LANGUAGE

TASKS = {  # model.task -> (transformers' auto class, its mapping of model types to classes)
    "causal-lm": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    "masked-lm": ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    "seq2seq": ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    "image-classification": ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    "image-text-to-text": ("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
}

# what transformers builds a model type as that flopsweep does not (yet): its whole model, for what it takes in
OTHER_MODALITIES = {"MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES": "a speech-to-text model",
                    "MODEL_FOR_CTC_MAPPING_NAMES": "a speech model",
                    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "an image-and-text model",
                    "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES": "an image-to-text model",
                    "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES": "an image-and-text contrastive model"}


def refused(err: Exception, kind: str, given: dict[str, Any], transformers: Any) -> ConfigError:
    """transformers' refusal of a config as one line naming the key: the field its strict validation names (a value of
    the wrong type, a null width), else the model type it does not know, else ``model`` (heads that do not divide the
    width, checked across fields)."""
    named = re.match(r"Validation error for field '(\w+)'", str(err))  # huggingface_hub's strict dataclasses
    field = named.group(1) if named else None
    cause = err.__cause__ or err
    words = " ".join(str(cause).split())[:300]
    if field is not None:
        return ConfigError(f"model.{field}", given.get(field), words)
    if "Unrecognized" in str(err):  # transformers' list of every type, cut mid-word: the one meant instead
        near = nearest(kind, transformers.CONFIG_MAPPING.keys())
        return ConfigError("model.model_type", kind, f"transformers {transformers.__version__} has no such model type"
                           + (f" (did you mean {near}?)" if near else ""))
    return ConfigError("model", None, words)


def task_of(task: Optional[str], hf: Any) -> str:
    if task == "image-text-to-text" and hf.model_type not in VISION_LANGUAGE:
        raise ConfigError("model.task", task, f"builds {', '.join(VISION_LANGUAGE)} whole, not {hf.model_type}")
    if task is not None:
        return task
    modeling_auto = auto_mappings()
    kind = hf.model_type
    named = [(name, arch) for arch in getattr(hf, "architectures", None) or [] for name, (_, mapping) in TASKS.items()
             if arch in getattr(modeling_auto, mapping).values()]
    known = {name: kind in getattr(modeling_auto, mapping) for name, (_, mapping) in TASKS.items()}
    if named:  # the config's own architecture
        chosen, built = named[0]
    else:
        chosen = "seq2seq" if getattr(hf, "is_encoder_decoder", False) and known["seq2seq"] else \
            "masked-lm" if known["masked-lm"] and not getattr(hf, "is_decoder", False) else \
            next((name for name in ("causal-lm", "image-classification", "masked-lm", "seq2seq") if known[name]), None)
        built = getattr(modeling_auto, TASKS[chosen][1])[kind] if chosen else None
    both = modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(kind)
    if kind in VISION_LANGUAGE and (not named or built == both):  # built whole: image and text (Gemma 3's class is
        return "image-text-to-text"                                   # transformers' causal LM of its type too)
    text = f"{kind}_text" if f"{kind}_text" in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else None
    for mapping, what in OTHER_MODALITIES.items():  # fed text alone, or a part built as if it were the whole: said
        whole = getattr(modeling_auto, mapping, {}).get(kind)
        if whole is not None:
            part = (f"; its {built} alone is model.task={chosen}" if built and built != whole else "") + \
                (f"; its text model is model.model_type={text}" if text else "")
            raise ConfigError("model.model_type", kind, f"is {what} ({whole}), which flopsweep does not build yet"
                              f"{part}")
    if chosen is None:
        raise ConfigError("model.task", None, f"missing: transformers has no training head for {kind!r} among "
                                              f"{', '.join(TASKS)}")
    return chosen


def no_misspelt_field(transformers: Any, kind: str, fields: dict[str, Any]) -> None:
    """A field the type's config does not have, next to one it has (``hiden_size``), is refused naming both: the
    config takes any field as an attribute no model reads, and the job counted the type's default sizes (6.74B
    parameters for a Llama with ``+model.hiden_size=1024``). A field with no near neighbour is left alone: a
    model's code may read it with a default."""
    known = set(transformers.AutoConfig.for_model(kind).to_dict())
    for field, value in fields.items():
        near = nearest(field, known, cutoff=0.85) if field not in known else None
        require(near is None, f"model.{field}", value, f"is no field of transformers' {kind} config: did you mean "
                f"model.{near}?")
