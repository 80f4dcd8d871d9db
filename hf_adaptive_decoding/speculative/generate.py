"""`model.generate(..., assistant_model= | prompt_lookup_num_tokens= | assistant_early_exit=, decoding_adapter=draft)`.

transformers' assisted generation drafts, verifies and accepts; a draft adapter only decides, after each drafted
token, whether to stop drafting. The candidate generator transformers builds is wrapped for the one call, so the
verification and acceptance code (and hence the output distribution) is transformers' own.
"""

from __future__ import annotations

import copy
import math
import time
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, StoppingCriteria, StoppingCriteriaList
from transformers.generation.candidate_generator import (
    AssistedCandidateGenerator,
    CandidateGenerator,
    EarlyExitCandidateGenerator,
    PromptLookupCandidateGenerator,
)
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.utils import GenerateDecoderOnlyOutput

from ..generation.features import next_token_entropy
from .modeling import DRAFT_FEATURES, DraftAdapterModel, IncompatibleDraftSourceError

ACCEPTANCE_EMA_DECAY = 0.8
REMAINING_TOKENS_SCALE = math.log1p(1024)


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
        drafted = len(scores)
        logits = scores[-1].float()
        probs = logits.softmax(dim=-1)
        token_prob = probs.gather(-1, input_ids[:, -1:]).squeeze(-1)
        top2 = probs.topk(2, dim=-1).values
        entropy = next_token_entropy(logits) / math.log(logits.shape[-1])
        return self.controller.decide(
            drafted, input_ids.shape[1], token_prob, entropy, top2[:, 0] - top2[:, 1], has_draft_probs=True
        )


class LearnedDraftGenerator(CandidateGenerator):
    """
    Wraps the candidate generator transformers built for this call (a draft model, early exit, or prompt lookup) and
    lets a [`DraftAdapterModel`] decide each cycle's draft length, token by token: before the first token (a cycle
    that drafts nothing costs a plain decoding step) and after each drafted one.

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
        self.source, self.adapter, self.hidden_states = source, adapter, hidden_states
        self.max_length, self.deterministic = max_length, deterministic
        self.max_draft = adapter.max_draft_tokens
        if type(source) in (AssistedCandidateGenerator, EarlyExitCandidateGenerator):
            self.kind = "early_exit" if isinstance(source, EarlyExitCandidateGenerator) else "assistant_model"
            source.num_assistant_tokens = self.max_draft
            source.generation_config.assistant_confidence_threshold = 0.0  # the source's own copy of the config
            prepare = source._prepare_generation_args
            stop = StoppingCriteriaList([_PolicyStop(self)])

            def prepare_with_policy(_, *args, **kwargs):
                return {**prepare(*args, **kwargs), "stopping_criteria": stop}

            source._prepare_generation_args = types.MethodType(prepare_with_policy, source)
        elif type(source) is PromptLookupCandidateGenerator:
            self.kind = "prompt_lookup"
            source.num_output_tokens = self.max_draft
        else:
            raise IncompatibleDraftSourceError(
                f"A draft adapter controls a draft model (assistant_model= with the target's tokenizer), early exit "
                f"(assistant_early_exit=) or prompt lookup (prompt_lookup_num_tokens=); this call uses "
                f"{type(source).__name__}."
            )
        device = adapter.device
        self.hidden = torch.zeros(1, adapter.config.base_model_hidden_size, device=device, dtype=adapter.dtype)
        self.has_hidden = 0.0
        self.acceptance_ema, self.last_accepted = 0.5, 0.0
        self.cumulative_prob = torch.ones(1, device=device)
        self.cycle_start = 0.0
        self.draft_lengths: list[int] = []
        self.accepted_lengths: list[int] = []
        self.cycle_seconds: list[float] = []

    def features(self, drafted: torch.Tensor, length: torch.Tensor, token_prob, entropy, margin, has_draft_probs):
        """`DRAFT_FEATURES` rows for drafted-token counts `drafted` at sequence lengths `length`, both `(rows,)`."""
        rows = drafted.shape[0]
        constant = torch.tensor(
            [float(has_draft_probs), self.acceptance_ema, self.last_accepted, self.has_hidden], device=drafted.device
        ).expand(rows, -1)
        remaining = torch.log1p((self.max_length - length).clamp(min=0).float()) / REMAINING_TOKENS_SCALE
        columns = {
            "draft_prob": token_prob,
            "draft_entropy": entropy,
            "draft_margin": margin,
            "has_draft_probs": constant[:, 0],
            "cumulative_draft_prob": self.cumulative_prob.expand(rows) * token_prob if has_draft_probs else token_prob,
            "position": drafted.float() / self.max_draft,
            "acceptance_ema": constant[:, 1],
            "last_accepted": constant[:, 2],
            "remaining_tokens": remaining,
            "has_hidden_state": constant[:, 3],
        }
        return torch.stack([columns[name].float() for name in DRAFT_FEATURES], dim=-1)

    def decide(self, drafted: int, length: int, token_prob, entropy, margin, has_draft_probs: bool) -> torch.Tensor:
        """Stop after the `drafted`-th token of this cycle? (Always at `max_draft_tokens`.)"""
        device = token_prob.device
        rows = self.features(
            torch.tensor([drafted], device=device),
            torch.tensor([length], device=device),
            token_prob,
            entropy,
            margin,
            has_draft_probs,
        )
        self.cumulative_prob = self.cumulative_prob * token_prob
        stop, _ = self.adapter.decide_stop(rows, self.hidden, self.deterministic)
        return stop | (drafted >= self.max_draft)

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        self.cycle_start = time.perf_counter()
        self.cumulative_prob = torch.ones(1, device=self.adapter.device)
        length = input_ids.shape[1]
        if self.kind != "prompt_lookup":
            # First decision: draft at all? (Not where transformers would draft nothing anyway.)
            if min(self.max_draft, self.max_length - length - 1) > 0 and self._stops_before_drafting(length):
                return input_ids, None
            return self.source.get_candidates(input_ids)
        candidate_ids, _ = self.source.get_candidates(input_ids)
        drafted = candidate_ids.shape[1] - length
        first = 0 if self.draft_lengths else 1  # the first cycle always drafts, as in `_stops_before_drafting`
        if drafted <= first:
            return candidate_ids, None
        # Prompt lookup proposes its whole continuation at once: the adapter's decisions before tokens 1..drafted
        # depend on nothing it decides, so they are taken in one batch and the proposal is cut at the first stop.
        counts = torch.arange(first, drafted, device=self.adapter.device)
        zeros = torch.zeros(len(counts), device=self.adapter.device)
        rows = self.features(counts, length + counts, zeros, zeros, zeros, has_draft_probs=False)
        stop, _ = self.adapter.decide_stop(rows, self.hidden.expand(len(counts), -1), self.deterministic)
        keep = first + int(torch.cat([stop, stop.new_ones(1)]).float().argmax())
        return candidate_ids[:, : length + keep], None

    def _stops_before_drafting(self, length: int) -> bool:
        # Not in the first cycle: the policy knows nothing yet, and transformers' draft model (or early exit) expects
        # its own first call to come before the target has added any token.
        if not self.draft_lengths:
            return False
        device = self.adapter.device
        zero = torch.zeros(1, device=device)
        rows = self.features(
            torch.zeros(1, dtype=torch.long, device=device),
            torch.tensor([length], device=device),
            zero,
            zero,
            zero,
            has_draft_probs=False,
        )
        stop, _ = self.adapter.decide_stop(rows, self.hidden, self.deterministic)
        return bool(stop)

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        drafted = scores.shape[1] - 1
        self.draft_lengths.append(drafted)
        self.accepted_lengths.append(num_matches)
        self.cycle_seconds.append(time.perf_counter() - self.cycle_start)
        if drafted > 0:
            self.acceptance_ema = ACCEPTANCE_EMA_DECAY * self.acceptance_ema + (1 - ACCEPTANCE_EMA_DECAY) * (
                num_matches / drafted
            )
        self.last_accepted = num_matches / self.max_draft
        # The verification forward is the decoder's latest (drafting happens before it): its state at the last
        # accepted position is what produced the token the target just added.
        states = self.hidden_states.states
        if states is not None and self.adapter.config.use_hidden_state:
            self.hidden = states[:, states.shape[1] - (drafted + 1) + num_matches].to(self.adapter.dtype)
        self.has_hidden = 1.0  # as in the replay, whether or not the policy reads the state


def speculative_generate(
    model: PreTrainedModel,
    adapter: DraftAdapterModel,
    original_generate,
    inputs: torch.Tensor | None,
    generation_config,
    logits_processor,
    *args: Any,
    deterministic: bool = False,
    **kwargs: Any,
):
    """`generate` in assisted mode with `adapter` sizing every draft (called by the patched `generate`)."""
    if not isinstance(adapter, DraftAdapterModel):
        raise ValueError(f"Expected a DraftAdapterModel, got {type(adapter).__name__}.")
    adapter.check_compatible(model)
    resolved, _ = model._prepare_generation_config(copy.deepcopy(generation_config), **kwargs)
    mode = resolved.get_generation_mode(kwargs.get("assistant_model"))
    if mode != GenerationMode.ASSISTED_GENERATION:
        raise IncompatibleDraftSourceError(
            "A draft adapter sizes the drafts of speculative decoding: pass assistant_model=<draft model>, "
            "prompt_lookup_num_tokens=<n> or assistant_early_exit=<layer> to generate() (this call would run "
            f"{mode.value!r})."
        )
    controllers: list[LearnedDraftGenerator] = []
    original_factory = type(model)._get_candidate_generator

    with _LastHiddenStates(model) as hidden_states:

        def factory(self, **factory_kwargs):
            source = original_factory(self, **factory_kwargs)
            max_length = factory_kwargs["generation_config"].max_length
            controllers.append(LearnedDraftGenerator(source, adapter, hidden_states, max_length, deterministic))
            return controllers[-1]

        # `_assisted_decoding` looks the factory up on the instance: shadow it for this call only.
        model._get_candidate_generator = types.MethodType(factory, model)
        # Early exit truncates the target's layer count while it drafts, without restoring it if drafting fails.
        base_config = getattr(model, model.base_model_prefix, model).config
        num_layers = getattr(base_config, "num_hidden_layers", None)
        try:
            result = original_generate(model, inputs, generation_config, logits_processor, *args, **kwargs)
        finally:
            del model._get_candidate_generator
            if num_layers is not None:
                base_config.num_hidden_layers = num_layers
    if not isinstance(result, GenerateDecoderOnlyOutput) or not controllers:
        return result
    controller = controllers[-1]
    return SpeculativeGenerateOutput(
        **result,
        draft_lengths=torch.tensor(controller.draft_lengths, dtype=torch.long),
        accepted_lengths=torch.tensor(controller.accepted_lengths, dtype=torch.long),
        cycle_seconds=torch.tensor(controller.cycle_seconds),
    )
