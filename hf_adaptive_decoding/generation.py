"""`model.generate(..., decoding_adapter=adapter)`: the adapter picks each row's decoding action inside generate."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .features import HiddenStateCapture
from .modeling import DecodingAdapterModel
from .sampling import ActionTransform

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
UNSUPPORTED_WITH_ADAPTER = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


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
    the step's forward pass, samples each row's action from the adapter's policy and applies it to the logits.

    Token level: features are the step's last hidden state and the remaining budget `b_t = max_new_tokens - t`.
    Sequence level: at the first step, the prompt embedding and the parallel budget `B`; the action is drawn once
    per prompt (rows `i * B ... i * B + B - 1` are one prompt's samples, as `generate` lays them out) and held.
    """

    def __init__(
        self,
        adapter: DecodingAdapterModel,
        capture: HiddenStateCapture,
        max_new_tokens: int | None,
        max_length: int | None,
        default_max_length: bool = False,
        max_positions: int | None = None,
        samples_per_prompt: int = 1,
        parallel_budget: int | None = None,
        deterministic: bool = False,
    ):
        self.adapter = adapter
        self.capture = capture
        self.transform = ActionTransform(adapter.decoding_config.actions)
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.default_max_length = default_max_length
        self.max_positions = max_positions
        self.samples_per_prompt = samples_per_prompt
        self.parallel_budget = parallel_budget if parallel_budget is not None else samples_per_prompt
        self.deterministic = deterministic
        self.prompt_length: int | None = None
        self.actions: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []

    @property
    def token_budget(self) -> int:
        """The token budget b: the number of new tokens generate will allow (its own length rule)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.default_max_length:  # transformers then generates `max_length` (20) new tokens, within max positions
            return min(self.max_length + self.prompt_length, self.max_positions or 2**62) - self.prompt_length
        return self.max_length - self.prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_length
        if self.adapter.level == "token":
            budget = torch.tensor(self.token_budget - step, device=scores.device)
            actions, probs = self.adapter.select_actions(self.capture.last, budget, self.deterministic)
            self.actions.append(actions)
            self.probs.append(probs)
        elif not self.actions:
            per_prompt = self.capture.prompt_embedding()[:: self.samples_per_prompt]
            budget = torch.tensor(self.parallel_budget, device=scores.device)
            actions, probs = self.adapter.select_actions(per_prompt, budget, self.deterministic)
            self.actions.append(actions.repeat_interleave(self.samples_per_prompt))
            self.probs.append(probs.repeat_interleave(self.samples_per_prompt, dim=0))
        return self.transform(scores, self.actions[-1].to(scores.device), step)

    def chosen(self, sequences: torch.LongTensor, eos_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The recorded actions and probabilities, aligned with `sequences` (token level: -1 after a row's EOS)."""
        if self.adapter.level == "sequence":
            return self.actions[0], self.probs[0]
        steps = sequences.shape[1] - self.prompt_length
        actions = torch.stack(self.actions[:steps], dim=1)
        probs = torch.stack(self.probs[:steps], dim=1)
        if eos_token_ids:
            generated = sequences[:, self.prompt_length :]
            is_eos = torch.isin(generated, torch.tensor(eos_token_ids, device=generated.device))
            finished_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
            actions = actions.masked_fill(finished_before.to(actions.device), -1)
        return actions, probs


def _eos_token_ids(generation_config: GenerationConfig) -> list[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return []
    return [
        int(e) for e in (eos.tolist() if isinstance(eos, torch.Tensor) else eos if isinstance(eos, list) else [eos])
    ]


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
    actions, probs = processor.chosen(result.sequences, _eos_token_ids(generation_config))
    return AdaptiveGenerateOutput(**result, decoding_actions=actions, decoding_action_probs=probs)


_original_generate = GenerationMixin.generate


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

    _check_adapter(self, decoding_adapter, sampling_budget)
    conflicting = {k: kwargs[k] for k in NEUTRAL_SAMPLING if k in kwargs and kwargs[k] != NEUTRAL_SAMPLING[k]}
    if conflicting:
        raise ValueError(
            f"generate() got {conflicting} together with decoding_adapter=: the adapter chooses the sampling "
            "strategy at every step, so these would be ignored. Remove them (or generate without the adapter)."
        )
    unsupported = [k for k in UNSUPPORTED_WITH_ADAPTER if kwargs.get(k) is not None]
    if unsupported or kwargs.get("num_beams", 1) != 1:
        raise ValueError(
            f"decoding_adapter= works with sampling and greedy search, not with {unsupported or ['num_beams > 1']}."
        )
    kwargs.update(NEUTRAL_SAMPLING)
    default_max_length = (
        kwargs.get("max_length") is None
        and (generation_config is None or generation_config.max_length is None)
        and self.generation_config.max_length is None
    )
    resolved_config, _ = self._prepare_generation_config(generation_config, **kwargs)
    with HiddenStateCapture(self, decoding_adapter.prompt_pooling) as capture:
        processor = AdaptiveDecodingProcessor(
            decoding_adapter,
            capture,
            max_new_tokens=resolved_config.max_new_tokens,
            max_length=resolved_config.max_length,
            default_max_length=default_max_length,
            max_positions=getattr(self.config.get_text_config(decoder=True), "max_position_embeddings", None),
            samples_per_prompt=resolved_config.num_return_sequences or 1,
            parallel_budget=sampling_budget,
            deterministic=deterministic,
        )
        processors = LogitsProcessorList([*(logits_processor or []), processor])
        result = _original_generate(self, inputs, generation_config, processors, *args, **kwargs)
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

    transformers' own warpers (from the model's generation config or generate() arguments) are removed so that
    nothing is applied on top of the adapter's choice.
    """
    if decoding_adapter is None:
        raise ValueError("custom_generate=adaptive_generate needs a `decoding_adapter=` argument.")
    _check_adapter(model, decoding_adapter, sampling_budget)
    if generation_config.num_beams != 1:
        raise ValueError(
            f"decoding_adapter= does not work with beam search (num_beams={generation_config.num_beams})."
        )
    if streamer is None:
        # transformers <= 5.23 drops `streamer` and `synced_gpus` for custom_generate callables (it keeps only the
        # callable's extra arguments), so we read them from the calling generate() frame when it is there.
        caller = inspect.currentframe().f_back
        if caller is not None and caller.f_code.co_name == "generate":
            streamer = caller.f_locals.get("streamer")
            synced_gpus = bool(caller.f_locals.get("synced_gpus") or synced_gpus)
    generation_config = generation_config.copy() if hasattr(generation_config, "copy") else generation_config
    generation_config.do_sample = True
    with HiddenStateCapture(model, decoding_adapter.prompt_pooling) as capture:
        processor = AdaptiveDecodingProcessor(
            decoding_adapter,
            capture,
            max_new_tokens=None,
            max_length=generation_config.max_length,
            samples_per_prompt=generation_config.num_return_sequences or 1,
            parallel_budget=sampling_budget,
            deterministic=deterministic,
        )
        kept = [p for p in logits_processor if not isinstance(p, BUILTIN_WARPERS)]
        last = [p for p in kept if isinstance(p, LogitNormalization)]
        processors = LogitsProcessorList([p for p in kept if p not in last] + [processor] + last)
        result = GenerationMixin._sample(
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


def patch_generate() -> None:
    """Make every transformers model's `generate` accept `decoding_adapter=`; `import hf_adaptive_decoding` does it."""
    GenerationMixin.generate = generate
