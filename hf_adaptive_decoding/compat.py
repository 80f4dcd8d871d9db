"""Every private transformers API this package touches, in one place.

transformers gives no public way to see hidden states while sampling, to choose a candidate generator per call, or to
resolve a call's generation config the way `generate` does. Each function below wraps one private API; its test in
`tests/test_compat.py` fails loudly, naming the API, when a transformers release changes it. The versions CI tests are
the ones `pyproject.toml` pins.
"""

from __future__ import annotations

import inspect
from types import FrameType
from typing import Any

from transformers import GenerationConfig, PreTrainedModel
from transformers.generation import GenerationMixin

# ------------------------------------------------------------------------------------------ generation (generate.py)


def prepare_generation_config(
    model: PreTrainedModel, generation_config: GenerationConfig | None, **kwargs: Any
) -> GenerationConfig:
    """The settings a `generate` call will run with (the model's defaults, `generation_config`, then `kwargs`), as
    `generate` itself resolves them: `GenerationMixin._prepare_generation_config`."""
    resolved, _ = model._prepare_generation_config(generation_config, **kwargs)
    return resolved


def default_generation_params() -> dict[str, Any]:
    """The library-wide defaults `generate` falls back on (e.g. `top_k=50`):
    `GenerationConfig._get_default_generation_params`."""
    return GenerationConfig._get_default_generation_params()


def sample(model: PreTrainedModel, input_ids, **kwargs: Any):
    """transformers' sampling / greedy loop, `GenerationMixin._sample`: what a `custom_generate=` callable runs."""
    return GenerationMixin._sample(model, input_ids, **kwargs)


def streamer_of_calling_generate(frame: FrameType | None) -> tuple[Any, bool]:
    """`(streamer, synced_gpus)` of the `generate` call whose frame is `frame`, or `(None, False)`.

    transformers (checked up to 5.25) hands a `custom_generate=` callable only the arguments its signature adds to
    `_sample`'s, so `streamer` and `synced_gpus` are dropped; they are read from `generate`'s local variables.
    """
    if frame is None or frame.f_code.co_name != "generate":
        return None, False
    return frame.f_locals.get("streamer"), bool(frame.f_locals.get("synced_gpus"))


def sample_signature_has(*names: str) -> bool:
    """Whether `GenerationMixin._sample` takes these keyword arguments (what [`sample`] passes)."""
    return set(names) <= set(inspect.signature(GenerationMixin._sample).parameters)


def generate_warper_count(config: GenerationConfig) -> int:
    """How many warpers `generate` appends after the user's processors for `config`: the rule of
    `GenerationMixin._get_logits_processor`, mirrored (it builds them only together with every other processor)."""
    if not config.do_sample:
        return 0
    return sum(
        [
            config.temperature is not None and config.temperature != 1.0,
            config.top_h is not None,
            config.top_k is not None and config.top_k != 0,
            config.top_p is not None and config.top_p < 1.0,
            config.min_p is not None,
            config.typical_p is not None and config.typical_p < 1.0,
            config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0,
            config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0,
        ]
    )


def logits_processors_of_generate(model: PreTrainedModel, generation_config: GenerationConfig, input_length: int):
    """The processors `generate` builds for `generation_config` (`GenerationMixin._get_logits_processor`); used by
    tests to check [`generate_warper_count`] against transformers itself."""
    return model._get_logits_processor(
        generation_config=generation_config,
        input_ids_seq_length=input_length,
        encoder_input_ids=None,
        prefix_allowed_tokens_fn=None,
        logits_processor=None,
        device=model.device,
    )


# ------------------------------------------------------------------------------------------ speculative decoding
