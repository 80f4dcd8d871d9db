"""`model.generate(..., assistant_model= | prompt_lookup_num_tokens= | assistant_early_exit=, decoding_adapter=draft)`.

transformers' assisted generation drafts, verifies and accepts; a draft adapter only decides, after each drafted
token, whether to stop drafting. The candidate generator transformers builds is wrapped for the one call, so the
verification and acceptance code (and hence the output distribution) is transformers' own.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, StoppingCriteria, StoppingCriteriaList
from transformers.generation import CandidateGenerator, GenerateDecoderOnlyOutput, GenerationMode

from .. import compat
from ..generation.generate import register_generate_route
from .features import DraftFeatureState, draft_token_stats
from .modeling import DraftAdapterModel, IncompatibleDraftSourceError


@dataclass
class SpeculativeGenerateOutput(GenerateDecoderOnlyOutput):
    """
    [`~transformers.generation.GenerateDecoderOnlyOutput`] plus one entry per draft-and-verify cycle.

    Args:
        draft_lengths (`torch.LongTensor` of shape `(cycles,)`): tokens drafted in each cycle.
        accepted_lengths (`torch.LongTensor` of shape `(cycles,)`): drafted tokens the target accepted (each cycle
            also adds the target's own next token).
        cycle_seconds (`torch.FloatTensor` of shape `(cycles,)`): wall time of each cycle, drafting plus verification.
    """

    draft_lengths: torch.LongTensor | None = None
    accepted_lengths: torch.LongTensor | None = None
    cycle_seconds: torch.FloatTensor | None = None


class _LastHiddenStates:
    """Forward hook on the target's decoder stack that keeps the final hidden states of its latest forward."""

    def __init__(self, model: PreTrainedModel):
        self.module = model.get_decoder()
        self.states: torch.Tensor | None = None
        self._handle = None

    def __enter__(self) -> _LastHiddenStates:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.remove()

    def _hook(self, module, args, output) -> None:
        self.states = output[0] if isinstance(output, tuple) else output.last_hidden_state


class _PolicyStop(StoppingCriteria):
    """Asks the draft adapter, after each token the draft model proposes, whether to stop drafting."""

    def __init__(self, controller: LearnedDraftGenerator):
        self.controller = controller

    def __call__(self, input_ids: torch.LongTensor, scores: tuple[torch.Tensor, ...], **kwargs) -> torch.BoolTensor:
        _, stats = draft_token_stats(scores[-1], input_ids[:, -1])
        return self.controller.decide_after_token(len(scores), input_ids.shape[1], stats)


class LearnedDraftGenerator(CandidateGenerator):
    """
    Wraps the candidate generator transformers built for this call (a draft model, early exit, or prompt lookup) and
    lets a [`DraftAdapterModel`] decide each cycle's draft length, token by token: before the first token (a cycle
    that drafts nothing costs a plain decoding step) and after each drafted one. Its features come from a
    [`DraftFeatureState`], as in the replay.

    - Draft model and early exit: the adapter's first decision is taken before the draft runs; then the draft runs up
      to `max_draft_tokens`, and a stopping criterion asks the adapter after each token (transformers' fixed
      confidence threshold is switched off for the call).
    - Prompt lookup: the looked-up continuation (up to `max_draft_tokens`) is cut where the adapter first stops; the
      adapter sees no draft probabilities then (`has_draft_probs = 0`).
    """

    requires_model_outputs = False

    def __init__(
        self,
        source: CandidateGenerator,
        adapter: DraftAdapterModel,
        hidden_states: _LastHiddenStates,
        max_length: int,
        deterministic: bool = False,
    ):
        self.kind = compat.candidate_source(source)
        if self.kind is None:
            raise IncompatibleDraftSourceError(
                f"A draft adapter controls a draft model (assistant_model= with the target's tokenizer), early exit "
                f"(assistant_early_exit=) or prompt lookup (prompt_lookup_num_tokens=); this call uses "
                f"{type(source).__name__}."
            )
        self.source, self.adapter, self.hidden_states = source, adapter, hidden_states
        self.max_length, self.deterministic = max_length, deterministic
        self.max_draft = adapter.max_draft_tokens
        compat.cap_draft_length(source, self.max_draft)
        if self.kind != "prompt_lookup":
            compat.add_draft_stopping_criteria(source, StoppingCriteriaList([_PolicyStop(self)]))
        self.state = DraftFeatureState(1, self.max_draft, adapter.device)
        self.hidden = torch.zeros(1, adapter.config.base_model_hidden_size, device=adapter.device, dtype=adapter.dtype)
        self.cycle_start = 0.0
        self.draft_lengths: list[int] = []
        self.accepted_lengths: list[int] = []
        self.cycle_seconds: list[float] = []

    def _stops(
        self, drafted: torch.Tensor, length: torch.Tensor, stats: torch.Tensor, has_draft_probs: torch.Tensor
    ) -> torch.BoolTensor:
        """The adapter's decisions after `drafted` tokens of this cycle at sequence lengths `length` (all `(n,)`)."""
        features = self.state.features(drafted, self.max_length - length, stats, has_draft_probs)
        stop, _ = self.adapter.decide_stop(features, self.hidden.expand(len(drafted), -1), self.deterministic)
        return stop

    def _stops_without_draft_probs(self, drafted: torch.Tensor, length: torch.Tensor) -> torch.BoolTensor:
        """As `_stops`, where no token with draft probabilities was just drafted (before the first, prompt lookup)."""
        stats = torch.zeros(len(drafted), 3, device=drafted.device)
        return self._stops(drafted, length, stats, torch.zeros(len(drafted), dtype=torch.bool, device=drafted.device))

    def decide_after_token(self, drafted: int, length: int, stats: torch.Tensor) -> torch.BoolTensor:
        """Stop after the `drafted`-th token of this cycle, which brought the sequence to `length` tokens and has the
        [`draft_token_stats`] `stats` `(1, 3)`? (Always at `max_draft_tokens`.)"""
        device = self.adapter.device
        stats, has_draft_probs = stats.to(device), torch.ones(1, dtype=torch.bool, device=device)
        position = torch.tensor([drafted], device=device)
        stop = self._stops(position, torch.tensor([length], device=device), stats, has_draft_probs)
        self.state.add_token(stats, has_draft_probs)
        return stop | (drafted >= self.max_draft)

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        self.cycle_start = time.perf_counter()
        if self.kind == "prompt_lookup":
            return self._cut_lookup(input_ids)
        length = input_ids.shape[1]
        # First decision: draft at all? (Not where transformers would draft nothing anyway.)
        if min(self.max_draft, self.max_length - length - 1) > 0 and self._stops_before_drafting(length):
            return input_ids, None
        return self.source.get_candidates(input_ids)

    def _stops_before_drafting(self, length: int) -> bool:
        # Not in the first cycle: the policy knows nothing yet, and transformers' draft model (or early exit) expects
        # its own first call to come before the target has added any token.
        if not self.draft_lengths:
            return False
        device = self.adapter.device
        zero = torch.zeros(1, dtype=torch.long, device=device)
        return bool(self._stops_without_draft_probs(zero, torch.tensor([length], device=device)))

    def _cut_lookup(self, input_ids: torch.LongTensor) -> tuple[torch.LongTensor, None]:
        """Prompt lookup proposes its whole continuation at once: the adapter's decisions before tokens 1..drafted
        depend on nothing it decides, so they are taken in one batch and the proposal is cut at the first stop."""
        candidate_ids, _ = self.source.get_candidates(input_ids)
        length = input_ids.shape[1]
        drafted = candidate_ids.shape[1] - length
        first = 0 if self.draft_lengths else 1  # the first cycle always drafts, as in `_stops_before_drafting`
        if drafted <= first:
            return candidate_ids, None
        counts = torch.arange(first, drafted, device=self.adapter.device)
        stop = self._stops_without_draft_probs(counts, length + counts)
        keep = first + int(torch.cat([stop, stop.new_ones(1)]).float().argmax())
        return candidate_ids[:, : length + keep], None

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        drafted = scores.shape[1] - 1
        self.draft_lengths.append(drafted)
        self.accepted_lengths.append(num_matches)
        self.cycle_seconds.append(time.perf_counter() - self.cycle_start)
        device = self.adapter.device
        ends = torch.ones(1, dtype=torch.bool, device=device)
        self.state.end_cycle(ends, torch.tensor([drafted], device=device), torch.tensor([num_matches], device=device))
        # The verification forward is the decoder's latest (drafting happens before it): its state at the last
        # accepted position is what produced the token the target just added.
        states = self.hidden_states.states
        if states is not None and self.adapter.config.use_hidden_state:
            self.hidden = states[:, states.shape[1] - (drafted + 1) + num_matches].to(self.adapter.dtype)


def _check_assisted(model: PreTrainedModel, generation_config: GenerationConfig | None, kwargs: dict) -> None:
    """Raise [`IncompatibleDraftSourceError`] unless this `generate` call runs assisted generation."""
    resolved = compat.prepare_generation_config(model, copy.deepcopy(generation_config), **kwargs)
    mode = resolved.get_generation_mode(kwargs.get("assistant_model"))
    if mode != GenerationMode.ASSISTED_GENERATION:
        raise IncompatibleDraftSourceError(
            "A draft adapter sizes the drafts of speculative decoding: pass assistant_model=<draft model>, "
            "prompt_lookup_num_tokens=<n> or assistant_early_exit=<layer> to generate() (this call would run "
            f"{mode.value!r})."
        )


def speculative_generate(
    model: PreTrainedModel,
    adapter: DraftAdapterModel,
    original_generate,
    inputs: torch.Tensor | None,
    generation_config: GenerationConfig | None,
    logits_processor,
    *args: Any,
    sampling_budget: int | None = None,
    deterministic: bool = False,
    **kwargs: Any,
):
    """`generate` in assisted mode with `adapter` sizing every draft: the route of a draft adapter through the
    patched `generate` (registered below)."""
    if sampling_budget is not None:
        raise ValueError("sampling_budget is for sequence-level decoding adapters, not for a draft adapter.")
    if not isinstance(adapter, DraftAdapterModel):
        raise ValueError(f"Expected a DraftAdapterModel, got {type(adapter).__name__}.")
    adapter.check_compatible(model)
    _check_assisted(model, generation_config, kwargs)
    controllers: list[LearnedDraftGenerator] = []
    with _LastHiddenStates(model) as hidden_states:

        def wrap(source: CandidateGenerator, resolved: GenerationConfig) -> LearnedDraftGenerator:
            controller = LearnedDraftGenerator(source, adapter, hidden_states, resolved.max_length, deterministic)
            controllers.append(controller)
            return controller

        with compat.candidate_generators_wrapped(model, wrap), compat.early_exit_layer_count_kept(model):
            result = original_generate(model, inputs, generation_config, logits_processor, *args, **kwargs)
    if not isinstance(result, GenerateDecoderOnlyOutput) or not controllers:
        return result
    controller = controllers[-1]
    return SpeculativeGenerateOutput(
        **result,
        draft_lengths=torch.tensor(controller.draft_lengths, dtype=torch.long),
        accepted_lengths=torch.tensor(controller.accepted_lengths, dtype=torch.long),
        cycle_seconds=torch.tensor(controller.cycle_seconds),
    )


register_generate_route(DraftAdapterModel, speculative_generate)
