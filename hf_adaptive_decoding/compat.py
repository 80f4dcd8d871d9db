"""Every private transformers API this package touches, in one place.

transformers gives no public way to see hidden states while sampling, to choose a candidate generator per call, or to
resolve a call's generation config the way `generate` does. Each function below wraps one private API; its test in
`tests/test_compat.py` fails loudly, naming the API, when a transformers release changes it. The versions CI tests are
the ones `pyproject.toml` pins.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import GenerationConfig, PreTrainedModel, StoppingCriteriaList
from transformers.generation import (
    AssistedCandidateGenerator,
    CandidateGenerator,
    EarlyExitCandidateGenerator,
    GenerationMixin,
    PromptLookupCandidateGenerator,
)

# ------------------------------------------------------------------------------------------ generation (generate.py)

# transformers 5.23 renamed a model forward's `past_key_values` keyword to `cache` (the old name warns from 5.23 and
# goes in 5.40); vLLM 0.32 pins transformers < 5.20, so both names are in use.
_CACHE_KEYWORD = "cache" if Version(transformers.__version__).release >= (5, 23) else "past_key_values"


def cache_argument(cache: Any) -> dict[str, Any]:
    """`cache` as the keyword argument a model's forward takes it under in the installed transformers."""
    return {_CACHE_KEYWORD: cache}


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


CandidateWrapper = Callable[[CandidateGenerator, GenerationConfig], CandidateGenerator]
_CANDIDATE_SOURCES = {
    AssistedCandidateGenerator: "assistant_model",
    EarlyExitCandidateGenerator: "early_exit",
    PromptLookupCandidateGenerator: "prompt_lookup",
}


@contextlib.contextmanager
def candidate_generators_wrapped(model: PreTrainedModel, wrap: CandidateWrapper) -> Iterator[None]:
    """
    Within the block, every candidate generator assisted decoding builds for `model` is replaced by `wrap(generator,
    generation_config)`, with the call's resolved config: `GenerationMixin._get_candidate_generator`, which
    `_assisted_decoding` looks up on the instance, is shadowed there for the block only. The replacement is driven
    through the `CandidateGenerator` interface: `get_candidates(input_ids)` before each verification, then
    `update_candidate_strategy(input_ids, scores, num_matches)` with the target's scores at every candidate position
    plus one.
    """
    factory = type(model)._get_candidate_generator
    signature = inspect.signature(factory)

    def wrapped_factory(self: PreTrainedModel, *args: Any, **kwargs: Any) -> CandidateGenerator:
        generation_config = signature.bind(self, *args, **kwargs).arguments["generation_config"]
        return wrap(factory(self, *args, **kwargs), generation_config)

    model._get_candidate_generator = types.MethodType(wrapped_factory, model)
    try:
        yield
    finally:
        del model._get_candidate_generator


def candidate_source(generator: CandidateGenerator) -> str | None:
    """
    Which candidate source `generator` is: `"assistant_model"` (a draft model with the target's tokenizer),
    `"early_exit"` or `"prompt_lookup"`, by its exact class; `None` for any other (a draft with another tokenizer,
    multi-token prediction, ...), whose internals [`cap_draft_length`] and [`add_draft_stopping_criteria`] do not know.
    """
    return _CANDIDATE_SOURCES.get(type(generator))


def cap_draft_length(generator: CandidateGenerator, max_tokens: int) -> None:
    """
    Make `generator` propose up to `max_tokens` per cycle, every cycle. A draft model or early exit drafts that many
    unless a stopping criterion stops it: `num_assistant_tokens` is set (its schedule runs only in its own
    `update_candidate_strategy`, which a wrapper does not call) and `assistant_confidence_threshold` is switched off in
    its own copy of the generation config. Prompt lookup: `num_output_tokens`.
    """
    source = candidate_source(generator)
    if source is None:
        raise TypeError(f"cap_draft_length does not know the internals of {type(generator).__name__}.")
    if source == "prompt_lookup":
        generator.num_output_tokens = max_tokens
    else:
        generator.num_assistant_tokens = max_tokens
        generator.generation_config.assistant_confidence_threshold = 0.0


def add_draft_stopping_criteria(generator: CandidateGenerator, criteria: StoppingCriteriaList) -> None:
    """
    Have a draft model or early exit stop drafting on `criteria` too: its draft `generate` call gets them as
    `stopping_criteria` (`AssistedCandidateGenerator._prepare_generation_args`, shadowed on the instance). Each
    criterion is called after every drafted token with the draft's ids so far and the tuple of its scores, one
    `(batch, vocab)` entry per token drafted in this cycle.
    """
    if candidate_source(generator) not in ("assistant_model", "early_exit"):
        raise TypeError(f"{type(generator).__name__} drafts without a generate call: it takes no stopping criteria.")
    prepare = generator._prepare_generation_args

    def prepare_with_criteria(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**prepare(*args, **kwargs), "stopping_criteria": criteria}

    generator._prepare_generation_args = prepare_with_criteria


@contextlib.contextmanager
def early_exit_layer_count_kept(model: PreTrainedModel) -> Iterator[None]:
    """
    Early exit drafts with the target itself: `EarlyExitCandidateGenerator.get_candidates` sets the base model's
    `config.num_hidden_layers` to the exit layer while it drafts, and does not set it back when drafting raises. This
    sets it back on leaving the block.
    """
    config = getattr(model, model.base_model_prefix, model).config
    num_layers = getattr(config, "num_hidden_layers", None)
    try:
        yield
    finally:
        if num_layers is not None:
            config.num_hidden_layers = num_layers


def prompt_lookup(
    eos_token_ids: list[int],
    max_tokens: int,
    max_matching_ngram_size: int,
    max_length: int,
    device: torch.device | str | None = None,
) -> Callable[[torch.LongTensor], torch.LongTensor]:
    """
    What `generate(prompt_lookup_num_tokens=max_tokens, max_matching_ngram_size=..., max_length=...)` proposes after
    a prefix, as a function of the prefix `(1, length)` that returns the proposed tokens `(k,)`, `k <= max_tokens`
    (none where no n-gram matches): `PromptLookupCandidateGenerator`, built as `_get_candidate_generator` builds it
    (without logits processors).
    """
    lookup = PromptLookupCandidateGenerator(
        eos_token_id=torch.tensor(eos_token_ids, device=device),
        num_output_tokens=max_tokens,
        max_matching_ngram_size=max_matching_ngram_size,
        max_length=max_length,
    )

    def propose(prefix: torch.LongTensor) -> torch.LongTensor:
        candidates, _ = lookup.get_candidates(prefix)
        return candidates[0, prefix.shape[1] :]

    return propose
