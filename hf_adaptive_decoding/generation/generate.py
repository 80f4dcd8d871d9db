"""`model.generate(..., decoding_adapter=adapter)`: the adapter picks each row's decoding action inside generate."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.generation import GenerationMixin, GenerationMode
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    MinPLogitsWarper,
    SynthIDTextWatermarkLogitsProcessor,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
    WatermarkLogitsProcessor,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from ..adapters.modeling import DecodingAdapterModel
from ..compat import (
    default_generation_params,
    generate_warper_count,
    prepare_generation_config,
    sample,
    streamer_of_calling_generate,
)
from .decision import DecisionStep, deciding, token_ids
from .features import HiddenStateCapture
from .noise import derive_keys, global_generator_key

# generate() arguments that choose a sampling strategy, with the values that switch transformers' own warper off.
# With an adapter, the adapter owns sampling: these are forced to neutral, so nothing is applied on top of its choice.
NEUTRAL_SAMPLING = {
    "do_sample": True,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_h": None,
}
BUILTIN_WARPERS = (
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
)


@dataclass
class AdaptiveGenerateOutput(GenerateDecoderOnlyOutput):
    """
    [`~transformers.generation.GenerateDecoderOnlyOutput`] plus what the decoding adapter chose.

    Args:
        decoding_actions (`torch.LongTensor`):
            Token level: `(batch, generated_length)`, the action behind each generated token, `-1` after the row
            finished. Sequence level: `(batch,)`, the action of each sequence (shared by a prompt's samples).
        decoding_action_probs (`torch.FloatTensor`):
            The policy's probabilities over actions: `(batch, generated_length, num_actions)` or
            `(batch, num_actions)`.
    """

    decoding_actions: torch.LongTensor | None = None
    decoding_action_probs: torch.FloatTensor | None = None


class AdaptiveDecodingProcessor(LogitsProcessor):
    """
    The logits processor through which a decoding adapter acts: at each step it reads the features captured from
    the step's forward pass, chooses each row's action through the shared [`~generation.decision.DecisionStep`] and
    applies it to the logits; transformers then draws the token as it would for that action alone.

    Token level: features are the step's last hidden state (or, for an entropy-only adapter, the entropy of the
    step's next-token distribution) and the remaining budget `b_t = max_new_tokens - t`.
    Sequence level: at the first step, the prompt embedding and the parallel budget `B`; the action is drawn once
    per prompt (rows `i * B ... i * B + B - 1` are one prompt's samples, as `generate` lays them out) and held.

    Actions are drawn from keyed noise (see [`~generation.noise`]) whose key is read off torch's generator without
    advancing it, so the tokens are drawn from exactly the random numbers transformers' own sampling would use: a
    policy that always picks one action generates what `generate` generates with that action's settings.
    """

    def __init__(
        self,
        adapter: DecodingAdapterModel,
        capture: HiddenStateCapture,
        token_budget: int | None = None,
        max_length: int | None = None,
        samples_per_prompt: int = 1,
        parallel_budget: int | None = None,
        deterministic: bool = False,
    ):
        self.adapter = adapter
        self.capture = capture
        self.decision = DecisionStep(adapter, deterministic)
        self._token_budget = token_budget
        self.max_length = max_length
        self.samples_per_prompt = samples_per_prompt
        self.parallel_budget = parallel_budget if parallel_budget is not None else samples_per_prompt
        self.prompt_length: int | None = None
        self.row_keys: torch.Tensor | None = None
        self.actions: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []

    @property
    def token_budget(self) -> int:
        """The token budget b: how many new tokens generate allows (given, or `max_length` minus the prompt)."""
        if self._token_budget is not None:
            return self._token_budget
        return self.max_length - self.prompt_length

    def _start(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> None:
        self.prompt_length = input_ids.shape[1]
        rows = input_ids.shape[0] if self.adapter.level == "token" else input_ids.shape[0] // self.samples_per_prompt
        call_key = torch.full((rows,), global_generator_key(scores.device), device=scores.device)
        self.row_keys = derive_keys(call_key, torch.arange(rows, device=scores.device))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self._start(input_ids, scores)
        step = input_ids.shape[1] - self.prompt_length
        if self.adapter.level == "token":
            budget = torch.tensor(self.token_budget - step, device=scores.device)
            context = self.decision.token_context(self.capture.last, scores)
            actions, probs = self.decision.token_actions(context, budget, self.row_keys, step)
            self.actions.append(actions)
            self.probs.append(probs)
        elif not self.actions:
            per_prompt = self.capture.prompt_embedding()[:: self.samples_per_prompt]
            budget = torch.tensor(self.parallel_budget, device=scores.device)
            actions, probs = self.decision.prompt_actions(per_prompt, budget, self.row_keys)
            self.actions.append(actions.repeat_interleave(self.samples_per_prompt))
            self.probs.append(probs.repeat_interleave(self.samples_per_prompt, dim=0))
        return self.decision.apply(scores, self.actions[-1], step)

    def chosen(self, sequences: torch.LongTensor, generation_config: GenerationConfig) -> tuple[torch.Tensor, ...]:
        """The recorded actions and probabilities, aligned with `sequences` (token level: -1 after a row ended)."""
        if self.adapter.level == "sequence":
            return self.actions[0], self.probs[0]
        steps = sequences.shape[1] - self.prompt_length
        actions = torch.stack(self.actions[:steps], dim=1)
        probs = torch.stack(self.probs[:steps], dim=1)
        generated = sequences[:, self.prompt_length :].to(actions.device)
        eos_ids = token_ids(generation_config.eos_token_id)
        pad_ids = token_ids(generation_config.pad_token_id)
        if not eos_ids:  # without EOS, rows never end early: every token is a real step
            return actions, probs
        is_eos = torch.isin(generated, torch.tensor(eos_ids, device=generated.device))
        after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        # After a stopping criterion ends a row, generate writes padding: a trailing run of pad tokens is no real
        # step, except its first token when that is an EOS (with pad == eos the two cannot be told apart).
        is_pad = torch.isin(generated, torch.tensor(pad_ids, device=generated.device)) if pad_ids else is_eos & False
        trailing = is_pad.flip(1).long().cumprod(dim=1).flip(1).bool()
        run_start = trailing & ~torch.nn.functional.pad(trailing[:, :-1], (1, 0), value=False)
        ended = after_eos | (trailing & ~(run_start & is_eos))
        return actions.masked_fill(ended, -1), probs


def _sampling_conflicts(values: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampling settings in `values` that were asked for (not unset, not a default) and would be overridden."""
    defaults = defaults or {}
    return {
        key: value
        for key, value in values.items()
        if key in NEUTRAL_SAMPLING
        and value is not None
        and value != NEUTRAL_SAMPLING[key]
        and value != defaults.get(key)
    }


def _raise_for_conflicts(conflicts: dict[str, Any]) -> None:
    if conflicts:
        raise ValueError(
            f"generate() got {conflicts} together with decoding_adapter=: the adapter chooses the sampling "
            "strategy at every step, so these would be ignored. Remove them (or generate without the adapter)."
        )


def _check_generation_mode(generation_config: GenerationConfig, assistant_model=None) -> None:
    mode = generation_config.get_generation_mode(assistant_model)
    if mode != GenerationMode.SAMPLE:
        raise ValueError(
            f"decoding_adapter= works with sampling and greedy search; this call would run {mode.value!r} (from "
            f"num_beams={generation_config.num_beams}, prompt_lookup_num_tokens="
            f"{generation_config.prompt_lookup_num_tokens}, assistant_early_exit="
            f"{generation_config.assistant_early_exit} or an assistant_model)."
        )


def _check_adapter(model: PreTrainedModel, adapter: Any, sampling_budget: int | None) -> None:
    if not isinstance(adapter, DecodingAdapterModel):
        raise ValueError(
            f"decoding_adapter must be a DecodingAdapterModel (e.g. from AutoDecodingAdapter.from_pretrained), got "
            f"{type(adapter).__name__}."
        )
    adapter.check_compatible(model)
    if sampling_budget is not None and (isinstance(sampling_budget, bool) or not isinstance(sampling_budget, int)):
        raise ValueError(f"sampling_budget must be a positive int, got {sampling_budget!r}.")
    if sampling_budget is not None and sampling_budget < 1:
        raise ValueError(f"sampling_budget must be a positive int, got {sampling_budget}.")
    if sampling_budget is not None and adapter.level != "sequence":
        raise ValueError(
            f"sampling_budget={sampling_budget} is the parallel budget of sequence-level adapters; this adapter is "
            "token-level and reads the remaining token budget from max_new_tokens."
        )


def _with_actions(result: Any, processor: AdaptiveDecodingProcessor, generation_config: GenerationConfig) -> Any:
    if not isinstance(result, GenerateDecoderOnlyOutput):
        return result
    actions, probs = processor.chosen(result.sequences, generation_config)
    return AdaptiveGenerateOutput(**result, decoding_actions=actions, decoding_action_probs=probs)


def _token_budget(model, config: GenerationConfig, default_max_length: bool, inputs, kwargs) -> int | None:
    """The token budget b = how many new tokens this generate call allows, by transformers' own length rule."""
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    prompt = next((x for x in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds")) if x is not None), None)
    if prompt is None:
        return None  # generate starts from a BOS token: read max_length - prompt at the first step
    prompt_length = prompt.shape[1]
    if default_max_length:  # transformers then generates `max_length` (20) new tokens, within max positions
        max_positions = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
        return min(config.max_length + prompt_length, max_positions or 2**62) - prompt_length
    return config.max_length - prompt_length


TAIL_PROCESSORS = (LogitNormalization, WatermarkLogitsProcessor, SynthIDTextWatermarkLogitsProcessor)
_original_generate = GenerationMixin.generate

# Each kind of adapter owns its route through `generate`: `route(model, adapter, original_generate, inputs,
# generation_config, logits_processor, *args, sampling_budget=, deterministic=, **kwargs)`. Draft adapters register
# theirs in `speculative/generate.py`, so generation never imports the speculative package.
GENERATE_ROUTES: dict[type, Callable] = {}


def register_generate_route(adapter_class: type, route: Callable) -> None:
    """Make `generate(decoding_adapter=x)` call `route` for every `x` that is an `adapter_class`."""
    GENERATE_ROUTES[adapter_class] = route


@functools.wraps(_original_generate)
def generate(
    self: PreTrainedModel,
    inputs: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    logits_processor: LogitsProcessorList | None = None,
    *args: Any,
    decoding_adapter: DecodingAdapterModel | None = None,
    sampling_budget: int | None = None,
    deterministic: bool = False,
    **kwargs: Any,
):
    """`GenerationMixin.generate`, plus `decoding_adapter=`, `sampling_budget=` and `deterministic=` (see README)."""
    if kwargs.get("custom_generate") is not None:  # e.g. custom_generate=adaptive_generate: it takes our arguments
        ours = {
            "decoding_adapter": decoding_adapter,
            "sampling_budget": sampling_budget,
            "deterministic": deterministic,
        }
        kwargs.update({key: value for key, value in ours.items() if value not in (None, False)})
        return _original_generate(self, inputs, generation_config, logits_processor, *args, **kwargs)
    if decoding_adapter is None:
        if sampling_budget is not None or deterministic:
            raise ValueError("`sampling_budget` and `deterministic` only apply together with `decoding_adapter=`.")
        return _original_generate(self, inputs, generation_config, logits_processor, *args, **kwargs)
    route = next((route for kind, route in GENERATE_ROUTES.items() if isinstance(decoding_adapter, kind)), None)
    if route is None:
        kinds = ", ".join(kind.__name__ for kind in GENERATE_ROUTES)
        raise ValueError(
            f"decoding_adapter must be one of {kinds} (e.g. from AutoDecodingAdapter.from_pretrained), got "
            f"{type(decoding_adapter).__name__}."
        )
    return route(
        self,
        decoding_adapter,
        _original_generate,
        inputs,
        generation_config,
        logits_processor,
        *args,
        sampling_budget=sampling_budget,
        deterministic=deterministic,
        **kwargs,
    )


def _adaptive_route(
    self: PreTrainedModel,
    decoding_adapter: DecodingAdapterModel,
    original_generate: Callable,
    inputs: torch.Tensor | None,
    generation_config: GenerationConfig | None,
    logits_processor: LogitsProcessorList | None,
    *args: Any,
    sampling_budget: int | None = None,
    deterministic: bool = False,
    **kwargs: Any,
):
    """The route of a [`DecodingAdapterModel`]: its processor chooses every row's action inside `generate`."""
    _check_adapter(self, decoding_adapter, sampling_budget)
    _raise_for_conflicts(_sampling_conflicts(kwargs))
    if generation_config is not None:
        _raise_for_conflicts(_sampling_conflicts(generation_config.to_dict()))
        generation_config = copy.deepcopy(generation_config)
        generation_config.update(**NEUTRAL_SAMPLING)
    else:
        kwargs.update(NEUTRAL_SAMPLING)
    default_max_length = (
        kwargs.get("max_length") is None
        and (generation_config is None or generation_config.max_length is None)
        and self.generation_config.max_length is None
    )
    resolved_config = prepare_generation_config(self, generation_config, **kwargs)
    _check_generation_mode(resolved_config, kwargs.get("assistant_model"))
    token_budget = _token_budget(self, resolved_config, default_max_length, inputs, kwargs)
    with HiddenStateCapture(self, decoding_adapter.prompt_pooling) as capture, deciding(decoding_adapter):
        processor = AdaptiveDecodingProcessor(
            decoding_adapter,
            capture,
            token_budget=token_budget,
            max_length=resolved_config.max_length,
            samples_per_prompt=resolved_config.num_return_sequences or 1,
            parallel_budget=sampling_budget,
            deterministic=deterministic,
        )
        processors = LogitsProcessorList([*(logits_processor or []), processor])
        result = original_generate(self, inputs, generation_config, processors, *args, **kwargs)
    return _with_actions(result, processor, resolved_config)


def adaptive_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria,
    generation_config: GenerationConfig,
    decoding_adapter: DecodingAdapterModel | None = None,
    sampling_budget: int | None = None,
    deterministic: bool = False,
    synced_gpus: bool = False,
    streamer=None,
    **model_kwargs: Any,
):
    """
    The same adaptive decoding through transformers' own `custom_generate=` mechanism, without relying on the
    import-time patch: `model.generate(**inputs, custom_generate=adaptive_generate, decoding_adapter=adapter)`.

    As with the patched `generate`: sampling settings you ask for are refused, the warpers generate built from the
    model's own sampling defaults are replaced by the adapter's action, and warpers you pass yourself in
    `logits_processor=` stay (they run before it). With `num_return_sequences > 1` also pass `do_sample=True`:
    transformers validates the call as greedy search before handing it over.
    """
    if decoding_adapter is None:
        raise ValueError("custom_generate=adaptive_generate needs a `decoding_adapter=` argument.")
    _check_adapter(model, decoding_adapter, sampling_budget)
    # The merged config holds the model's defaults too; only settings that differ from them were asked for.
    # (do_sample is already resolved to False when unset, so an explicit False cannot be told apart: it is ignored.)
    requested = {k: v for k, v in generation_config.to_dict().items() if k != "do_sample"}
    model_defaults = {k: v for k, v in model.generation_config.to_dict().items() if v is not None}
    defaults = {**default_generation_params(), **model_defaults}  # e.g. top_k=50
    _raise_for_conflicts(_sampling_conflicts(requested, defaults))
    processors_config = generation_config  # what generate built `logits_processor` from
    generation_config = copy.deepcopy(generation_config)
    generation_config.do_sample = True
    _check_generation_mode(generation_config)
    if streamer is None:  # transformers drops them for custom_generate callables (see compat)
        streamer, caller_synced = streamer_of_calling_generate(inspect.currentframe().f_back)
        synced_gpus = synced_gpus or caller_synced
    with HiddenStateCapture(model, decoding_adapter.prompt_pooling) as capture, deciding(decoding_adapter):
        processor = AdaptiveDecodingProcessor(
            decoding_adapter,
            capture,
            max_length=generation_config.max_length,
            samples_per_prompt=generation_config.num_return_sequences or 1,
            parallel_budget=sampling_budget,
            deterministic=deterministic,
        )
        processors = _replace_generate_warpers(logits_processor, processors_config, processor)
        result = sample(
            model,
            input_ids,
            logits_processor=processors,
            stopping_criteria=stopping_criteria,
            generation_config=generation_config,
            synced_gpus=synced_gpus,
            streamer=streamer,
            **model_kwargs,
        )
    return _with_actions(result, processor, generation_config)


def _replace_generate_warpers(
    processors: LogitsProcessorList, generation_config: GenerationConfig, adapter_processor: LogitsProcessor
) -> LogitsProcessorList:
    """
    generate appends its own warpers after the user's processors (then watermarking and normalisation): put the
    adapter's processor in their place, and keep any warper the user passed among their own processors.
    """
    processors = list(processors)
    tail = []
    while processors and isinstance(processors[-1], TAIL_PROCESSORS):
        tail.insert(0, processors.pop())
    for _ in range(generate_warper_count(generation_config)):
        if processors and isinstance(processors[-1], BUILTIN_WARPERS):
            processors.pop()
    return LogitsProcessorList([*processors, adapter_processor, *tail])


register_generate_route(DecodingAdapterModel, _adaptive_route)


def patch_generate() -> None:
    """Make every transformers model's `generate` accept `decoding_adapter=`; `import hf_adaptive_decoding` does it."""
    GenerationMixin.generate = generate
