"""What a vLLM engine needs to run a decoding adapter, checked before it starts: [`adapter_engine_settings`]."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig

from ..adapters.modeling import AutoDecodingAdapter, DecodingAdapterModel, check_base_model_config
from ..adapters.shipped import resolve_adapter
from ..default_model import build_default_model_cache
from . import models
from .processor import ADAPTER_ATTRIBUTE, DETERMINISTIC_ATTRIBUTE

LOGITS_PROCESSOR = "hf_adaptive_decoding.vllm.processor:AdapterLogitsProcessor"


@dataclass
class AdapterEngineSettings:
    """The model vLLM loads, the adapter, and the `hf_overrides` that make the engine run it."""

    model: str
    adapter: DecodingAdapterModel
    hf_overrides: dict[str, Any]


def adapter_engine_settings(
    model: str | os.PathLike | None,
    decoding_adapter: str | os.PathLike | None,
    deterministic: bool = False,
    hf_overrides: dict[str, Any] | None = None,
) -> AdapterEngineSettings:
    """
    Resolve `model` (`None`: the embedded default model's folder) and `decoding_adapter` (a shipped adapter's short
    name, a folder or a Hub id), refuse an adapter built for another model or one vLLM cannot feed, and return the
    engine settings: `hf_overrides` (extending the caller's) select the model's `HfadAdaptive` architecture and name
    the adapter for [`~hf_adaptive_decoding.vllm.processor.AdapterLogitsProcessor`].
    """
    if decoding_adapter is None:
        raise ValueError("vLLM needs a decoding_adapter here: a shipped adapter's name, a folder or a Hub id.")
    model_path = str(build_default_model_cache()) if model is None else str(model)
    adapter_source = resolve_adapter(decoding_adapter)
    adapter = AutoDecodingAdapter.from_pretrained(adapter_source)
    if not isinstance(adapter, DecodingAdapterModel):
        raise ValueError(f"{str(decoding_adapter)!r} is a {type(adapter).__name__}, not a decoding adapter.")
    model_config = AutoConfig.from_pretrained(model_path)
    check_base_model_config(adapter.config, model_config, model_path, "the vLLM engine's model")
    if adapter.level == "sequence" and adapter.prompt_pooling != "last":
        raise ValueError(
            f"The adapter {str(decoding_adapter)!r} mean-pools the prompt's hidden states "
            f"(prompt_pooling={adapter.prompt_pooling!r}); vLLM's logits path sees only the prompt's last position, "
            "so only prompt_pooling='last' sequence adapters run on vLLM. Use model.generate for it."
        )
    architecture = (model_config.architectures or [None])[0]
    if architecture is None:
        raise ValueError(f"The config of {model_path!r} names no architecture for vLLM to load.")
    overrides = dict(hf_overrides or {})
    overrides.update(
        {
            "architectures": [models.adaptive_architecture_name(architecture)],
            ADAPTER_ATTRIBUTE: str(adapter_source),
            DETERMINISTIC_ATTRIBUTE: bool(deterministic),
        }
    )
    return AdapterEngineSettings(model_path, adapter, overrides)
