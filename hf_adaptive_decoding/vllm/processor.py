"""The decoding adapter inside vLLM: a logits processor that picks each row's action and applies it to its logits.

[`AdapterLogitsProcessor`] keeps each request's state (its token budget, its noise key, its parallel budget, the
action a sequence-level adapter chose for it) as vLLM adds, removes and moves requests in its persistent batch. At
every step it reads the final hidden states [`~hf_adaptive_decoding.vllm.models`] kept from the same forward pass,
decides through the package's one per-step path ([`~generation.decision.DecisionStep`]) and returns the transformed
logits; the request's own `SamplingParams` are neutral (temperature 1, no truncation), so vLLM's sampler draws from
them exactly. Greedy rows keep only their argmax.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from ..adapters.modeling import AutoDecodingAdapter
from ..generation.decision import DecisionStep
from ..generation.noise import derive_keys
from .models import SAMPLED

# Set on the engine's model config (`hf_overrides`) by AdaptiveLLM and `hf-adaptive-decoding serve`.
ADAPTER_ATTRIBUTE = "hfad_decoding_adapter"
DETERMINISTIC_ATTRIBUTE = "hfad_deterministic"
ENGINE_ATTRIBUTE = "hfad_engine"
# Per-request values AdaptiveLLM puts in `SamplingParams.extra_args`: the request's number (its actions are recorded
# under it), its noise key, and the parallel budget B of its prompt (a sequence-level feature).
REQUEST_KEY, NOISE_KEY, PARALLEL_BUDGET_KEY = "hfad_request", "hfad_noise_key", "hfad_parallel_budget"

# The processors of this process by engine id, so that AdaptiveLLM (whose engine runs in its own process) can read
# what its processor recorded.
PROCESSORS: dict[str, AdapterLogitsProcessor] = {}
_request_numbers = itertools.count()


@dataclass
class Records:
    """What the processor decided, step by step: per decided row its request number, its position (tokens it had
    generated before this step) and its action."""

    requests: list[torch.Tensor]
    positions: list[torch.Tensor]
    actions: list[torch.Tensor]


class AdapterLogitsProcessor(LogitsProcessor):
    """
    A vLLM (V1) logits processor that runs a decoding adapter on every step of every request.

    The adapter comes from the model config's `hfad_decoding_adapter` (a folder or Hub id, set with
    `hf_overrides`); without it the processor changes nothing. Use [`~hf_adaptive_decoding.vllm.AdaptiveLLM`] or
    `hf-adaptive-decoding serve`, which set it up; requests must leave temperature, top-k, top-p and min-p at their
    neutral values (the adapter owns them) and use no penalties (vLLM applies those after logits processors).
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        conflicts = adapter_conflicts(sampling_params)
        if conflicts:
            raise ValueError(
                f"The decoding adapter chooses temperature, top-k, top-p and min-p itself, and vLLM would apply "
                f"penalties after it; this request sets {', '.join(conflicts)}. Leave them at their defaults."
            )

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        hf_config = vllm_config.model_config.hf_config
        source = getattr(hf_config, ADAPTER_ATTRIBUTE, None)
        self.adapter = None
        if source is None:
            return
        self.adapter = AutoDecodingAdapter.from_pretrained(source).to(device=device, dtype=torch.float32).eval()
        if self.adapter.level == "sequence" and self.adapter.prompt_pooling != "last":
            raise ValueError(
                f"The adapter at {source!r} pools the prompt's hidden states with {self.adapter.prompt_pooling!r}; in "
                "vLLM only the prompt's last position is seen (prefix caching skips the rest), so only "
                "prompt_pooling='last' adapters run here."
            )
        self.decision = DecisionStep(self.adapter, deterministic=bool(getattr(hf_config, DETERMINISTIC_ATTRIBUTE, 0)))
        rows = vllm_config.scheduler_config.max_num_seqs
        self.max_tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.keys = torch.zeros(rows, dtype=torch.long, device=device)
        self.parallel_budgets = torch.ones(rows, dtype=torch.long, device=device)
        self.requests = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.sequence_actions = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.output_ids: list[list[int]] = [[] for _ in range(rows)]
        self.default_max_tokens = vllm_config.model_config.max_model_len
        self.records = Records([], [], [])
        # Only an AdaptiveLLM in this process reads (and so empties) the records; a server keeps none.
        engine = getattr(hf_config, ENGINE_ATTRIBUTE, None)
        self.recording = engine is not None
        if self.recording:
            PROCESSORS[engine] = self

    def is_argmax_invariant(self) -> bool:
        return self.adapter is None

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.adapter is None or batch_update is None:
            return
        # A removed row's slot is refilled by an added or moved request before it is read again.
        for index, params, _, output_ids in batch_update.added:
            extra = params.extra_args or {}
            number = extra.get(REQUEST_KEY)
            number = next(_request_numbers) + (1 << 40) if number is None else number
            self.requests[index] = number
            key = extra.get(NOISE_KEY, params.seed if params.seed is not None else number)
            self.keys[index] = derive_keys(torch.tensor([key]), 0)[0]
            self.max_tokens[index] = params.max_tokens if params.max_tokens is not None else self.default_max_tokens
            self.parallel_budgets[index] = extra.get(PARALLEL_BUDGET_KEY, params.n)
            self.sequence_actions[index] = -1
            self.output_ids[index] = output_ids
        for source, target, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            for state in (self.max_tokens, self.keys, self.parallel_budgets, self.requests, self.sequence_actions):
                state[[source, target]] = state[[target, source]] if swap else state[[source, source]]
            if swap:
                self.output_ids[source], self.output_ids[target] = self.output_ids[target], self.output_ids[source]
            else:
                self.output_ids[target] = self.output_ids[source]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.adapter is None:
            return logits
        rows = logits.shape[0]
        hidden = SAMPLED.hidden_states
        if hidden is None or hidden.shape[0] != rows:
            raise RuntimeError(
                f"The adapter's logits processor got {rows} rows of logits but the model kept hidden states of shape "
                f"{None if hidden is None else tuple(hidden.shape)}: the engine does not run an HfadAdaptive "
                "architecture, or runs speculative decoding (not supported with adapters)."
            )
        hidden = hidden.to(torch.float32)
        scores = logits.float()
        generated = torch.tensor(list(map(len, self.output_ids[:rows])), device=logits.device)
        keys = self.keys[:rows]
        if self.adapter.level == "token":
            context = self.decision.token_context(hidden, scores)  # entropy / max probability only if it reads them
            remaining = self.max_tokens[:rows] - generated
            actions, _ = self.decision.token_actions(context, remaining, keys, generated)
        else:
            # Decided on every step a request has not generated its first token yet: the last step of a chunked
            # prefill sees the prompt's last position, and its decision is the one that stays.
            chosen, _ = self.decision.prompt_actions(hidden, self.parallel_budgets[:rows], keys)
            undecided = (generated == 0) | (self.sequence_actions[:rows] < 0)
            actions = torch.where(undecided, chosen, self.sequence_actions[:rows])
            self.sequence_actions[:rows] = actions
        if self.recording:
            self.records.requests.append(self.requests[:rows].clone())
            self.records.positions.append(generated)
            self.records.actions.append(actions)
        return self.decision.apply(scores, actions)

    def take_actions(self, requests: list[int]) -> dict[int, list[int]]:
        """Each request's actions, one per generated token in order (the last decision at each position), and
        forget them. Records of other requests stay."""
        if not self.records.actions:
            return {number: [] for number in requests}
        numbers = torch.cat(self.records.requests).cpu()
        positions = torch.cat(self.records.positions).cpu()
        actions = torch.cat(self.records.actions).cpu()
        wanted = torch.isin(numbers, torch.tensor(requests, dtype=torch.long))
        taken: dict[int, dict[int, int]] = {number: {} for number in requests}
        for number, position, action in zip(
            numbers[wanted].tolist(), positions[wanted].tolist(), actions[wanted].tolist(), strict=True
        ):
            taken[number][position] = action  # a later decision at the same position replaces an earlier one
        keep = ~wanted
        self.records = Records([numbers[keep]], [positions[keep]], [actions[keep]])
        return {number: [by_position[p] for p in sorted(by_position)] for number, by_position in taken.items()}


def adapter_conflicts(params: SamplingParams) -> list[str]:
    """The settings of `params` that a decoding adapter cannot share control with, as `name=value` strings."""
    neutral = {
        "temperature": 1.0,
        "top_p": 1.0,
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
    }
    conflicts = [f"{name}={getattr(params, name)}" for name, off in neutral.items() if getattr(params, name) != off]
    if params.top_k not in (0, -1):
        conflicts.append(f"top_k={params.top_k}")
    return conflicts
