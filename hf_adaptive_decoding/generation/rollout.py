"""Training rollouts: generation under a decoding adapter that records what REINFORCE needs, and stops paying for
rows that have finished."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from .. import compat
from ..adapters.modeling import DecodingAdapterModel
from .decision import DecisionStep, token_ids
from .features import HiddenStateCapture, next_token_entropy, next_token_max_prob
from .noise import TOKEN_STREAM, derive_keys, keyed_uniforms, random_keys, sample_from_logits
from .policies import DecodingPolicy


@dataclass
class RolloutBatch:
    """
    The outcome of [`generate_rollouts`].

    Rows are the generated samples: input `i` expands into `num_samples[i]` consecutive rows. Decisions are the
    adapter's choices, packed: token level, one per generated token of every row; sequence level, one per input
    (all of its rows share it).

    Args:
        completion_ids (`torch.LongTensor` of shape `(rows, max_new_tokens)`): generated tokens, pad after the end.
        completion_mask (`torch.BoolTensor` of shape `(rows, max_new_tokens)`): real tokens (the EOS included).
        input_index (`torch.LongTensor` of shape `(rows,)`): the input each row was generated from.
        features (`torch.Tensor` of shape `(decisions, hidden_size)`): what the adapter saw (detached).
        budgets (`torch.Tensor` of shape `(decisions,)`): the raw budget it saw (remaining tokens, or `B`).
        actions (`torch.LongTensor` of shape `(decisions,)`): the action it chose.
        action_probs (`torch.FloatTensor` of shape `(decisions, num_actions)`): its policy at that decision.
        decision_rows (`torch.LongTensor` of shape `(decisions,)`): the row (token level) or input (sequence level)
            of each decision.
        max_probs (`torch.FloatTensor` of shape `(decisions,)`, *optional*): token level, the language model's
            next-token max probability at each decision (before the action was applied).
        entropies (`torch.FloatTensor` of shape `(decisions,)`, *optional*): token level, the entropy (nats) of
            the language model's next-token distribution at each decision (before the action was applied).
        prompt_features (`torch.Tensor` of shape `(inputs, hidden_size)`, *optional*): sequence level, what the
            adapter sees of each input (its pooled prompt hidden states), recorded whatever chose the actions (also
            with `fixed_actions`).
    """

    completion_ids: torch.LongTensor
    completion_mask: torch.BoolTensor
    input_index: torch.LongTensor
    features: torch.Tensor
    budgets: torch.Tensor
    actions: torch.LongTensor
    action_probs: torch.FloatTensor
    decision_rows: torch.LongTensor
    max_probs: torch.FloatTensor | None = None
    entropies: torch.FloatTensor | None = None
    prompt_features: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())


@torch.no_grad()
def generate_rollouts(
    model: PreTrainedModel,
    adapter: DecodingAdapterModel | DecodingPolicy,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    num_samples: torch.LongTensor,
    token_budgets: torch.LongTensor,
    deterministic: bool = False,
    logits_processor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    parallel_budgets: torch.LongTensor | None = None,
    fixed_actions: torch.LongTensor | None = None,
    noise_keys: torch.LongTensor | None = None,
    sample_indices: torch.LongTensor | None = None,
) -> RolloutBatch:
    """
    Sample completions of left-padded prompts, the adapter choosing the decoding action (token level: at every step
    from `[h_t; b_t]`; sequence level: once per input from `[e; B]` with `B = num_samples[i]`).

    The prompt is prefilled once per input; its KV cache is then expanded to the input's samples. A row ends at EOS
    or when it has generated `token_budgets[i]` tokens; finished rows are dropped from the batch and from its KV
    cache at once, so they cost nothing afterwards.

    Every random number of a row is keyed by its input's `noise_keys` entry, its sample index and the position (see
    [`~generation.noise`]): a row's tokens and actions do not depend on the other rows, and two policies that agree
    on a prefix draw the same next token.

    Args:
        model ([`~transformers.PreTrainedModel`]): the frozen causal LM (left-padded inputs).
        adapter ([`DecodingAdapterModel`] or [`~policies.DecodingPolicy`]): the policy; used as it is (call
            `.eval()` for rollouts without dropout). A [`~policies.ConstantPolicy`] gives static decoding.
        input_ids, attention_mask (`torch.LongTensor` of shape `(inputs, prompt_length)`): the prompts.
        num_samples (`torch.LongTensor` of shape `(inputs,)`): samples per input (the parallel budget `B`).
        token_budgets (`torch.LongTensor` of shape `(inputs,)`): the token budget `b` of each input's samples.
        deterministic (`bool`): take the policy's most likely action instead of sampling one.
        logits_processor (`Callable`, *optional*): applied to each step's next-token logits `(rows, vocab)` before
            the chosen action (e.g. an [`~policies.EntropyDynamicTemperatureLogitsWarper`]); what is recorded
            (max probability, entropy, features) is read from the language model's logits before it.
        parallel_budgets (`torch.LongTensor` of shape `(inputs,)`, *optional*): sequence level, the budget `B` the
            policy is told, when it differs from the number of samples drawn (e.g. to estimate Pass@k at `B = k`
            from more than `k` samples). Default: `num_samples`.
        fixed_actions (`torch.LongTensor` of shape `(rows,)`, *optional*): sequence level, each row's action, chosen
            by the caller instead of the policy (e.g. to run many static strategies on one prompt's samples, which
            share its prefill). No decisions are recorded then.
        noise_keys (`torch.LongTensor` of shape `(inputs,)`, *optional*): the key of each input's random numbers,
            e.g. [`~generation.noise.noise_keys`] of a seed and the problem ids. Default: drawn from torch's global
            generator (one draw per input).
        sample_indices (`torch.LongTensor` of shape `(rows,)`, *optional*): the sample index whose noise each row
            uses; default `0 .. num_samples[i] - 1` within each input. Rows of one input with the same index draw the
            same random numbers (e.g. all strategies of a problem on its first sample's noise).
    """
    check_rollout_inputs(adapter, input_ids, num_samples, token_budgets, parallel_budgets, fixed_actions)
    device = input_ids.device
    rows = rollout_rows(input_ids, num_samples, noise_keys, sample_indices)
    num_samples, input_index, noise_keys, sample_indices = rows
    pooling = adapter.decoding_config.prompt_pooling if adapter.level == "sequence" else "last"  # token level: h_t
    with HiddenStateCapture(model, pooling) as capture:
        rollout = _Rollout(
            model, capture, DecisionStep(adapter, deterministic), logits_processor, token_budgets.to(device)
        )
        rollout.prefill(input_ids, attention_mask, input_index, noise_keys.to(device), sample_indices.to(device))
        if fixed_actions is not None:
            rollout.row_actions = fixed_actions.to(device)
        elif adapter.level == "sequence":
            parallel = num_samples if parallel_budgets is None else parallel_budgets.to(device)
            rollout.decide_per_prompt(parallel, noise_keys.to(device), input_index)
        rollout.spread(input_index)
        for step in range(rollout.max_new_tokens):
            if not rollout.step(step):
                break
    return rollout.result(input_index)


def rollout_rows(
    input_ids: torch.Tensor,
    num_samples: torch.LongTensor,
    noise_keys: torch.LongTensor | None,
    sample_indices: torch.LongTensor | None,
) -> tuple[torch.LongTensor, ...]:
    """`(num_samples, input_index, noise_keys, sample_indices)` on the inputs' device: the input of every row, and
    the defaults of [`generate_rollouts`] for the keys (drawn) and the sample indices (`0 .. num_samples[i] - 1`)."""
    device = input_ids.device
    num_samples = num_samples.to(device)
    input_index = torch.repeat_interleave(torch.arange(len(input_ids), device=device), num_samples)
    noise_keys = random_keys(len(input_ids), device) if noise_keys is None else noise_keys.to(device)
    if sample_indices is None:
        starts = torch.cumsum(num_samples, 0) - num_samples
        sample_indices = torch.arange(len(input_index), device=device) - starts[input_index]
    return num_samples, input_index, noise_keys, sample_indices.to(device)


def check_rollout_inputs(adapter, input_ids, num_samples, token_budgets, parallel_budgets, fixed_actions) -> None:
    """Refuse inputs [`generate_rollouts`] (or another rollout engine) cannot run, naming the bad values."""
    if parallel_budgets is not None and adapter.level != "sequence":
        raise ValueError("parallel_budgets is a sequence-level input; a token-level policy is told b_t, not B.")
    checked = [("num_samples", num_samples), ("token_budgets", token_budgets)]
    if parallel_budgets is not None:
        checked.append(("parallel_budgets", parallel_budgets))
    for name, values in checked:
        if values.shape != (len(input_ids),) or bool((values < 1).any()):
            raise ValueError(
                f"{name} must hold one int >= 1 per input ({len(input_ids)} inputs), got {values.tolist()}."
            )
    num_actions = len(adapter.decoding_config.actions)
    if fixed_actions is not None and (
        adapter.level != "sequence"
        or fixed_actions.shape != (int(num_samples.sum()),)
        or bool(((fixed_actions < 0) | (fixed_actions >= num_actions)).any())
    ):
        raise ValueError(
            f"fixed_actions needs a sequence-level policy and one action index in [0, {num_actions}) per row "
            f"({int(num_samples.sum())} rows); got a {adapter.level}-level policy and {fixed_actions.tolist()}."
        )


class _Rollout:
    """The state of one [`generate_rollouts`] call: the batch still decoding, its cache, and what was recorded."""

    def __init__(self, model, capture: HiddenStateCapture, decision: DecisionStep, logits_processor, token_budgets):
        self.model, self.capture, self.decision, self.logits_processor = model, capture, decision, logits_processor
        self.token_level = decision.policy.level == "token"
        self.token_budgets = token_budgets
        self.max_new_tokens = int(token_budgets.max())
        eos, pad = token_ids(model.generation_config.eos_token_id), token_ids(model.generation_config.pad_token_id)
        self.eos_ids = torch.tensor(eos, device=token_budgets.device, dtype=torch.long)
        self.pad_id = (pad or eos or [0])[0]
        self.records: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("features", "budgets", "actions", "probs", "rows", "max", "entropy")
        }
        self.cache = DynamicCache(config=model.config)
        self.row_actions: torch.Tensor | None = None

    def prefill(self, input_ids, attention_mask, input_index, noise_keys, sample_indices) -> None:
        device, rows = input_ids.device, len(input_index)
        self.completion_ids = torch.full((rows, self.max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        self.completion_mask = torch.zeros((rows, self.max_new_tokens), dtype=torch.bool, device=device)
        self.row_keys = derive_keys(noise_keys[input_index], sample_indices)
        self.position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self.attention_mask = attention_mask
        self.logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self.position_ids,
            **compat.cache_argument(self.cache),
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        self.prompt_features = self.capture.prompt_embedding() if not self.token_level else None
        self.hidden = self.capture.last

    def decide_per_prompt(self, parallel_budgets, noise_keys, input_index) -> None:
        """Sequence level: one decision per input, before its samples are spread out."""
        features = self.prompt_features
        actions, probs = self.decision.prompt_actions(features, parallel_budgets, derive_keys(noise_keys, -1))
        self._record(features, parallel_budgets, actions, probs, torch.arange(len(features)))
        self.row_actions = actions[input_index]

    def spread(self, input_index) -> None:
        """Spread each prompt's cache, mask and last positions over its samples."""
        self.cache.batch_select_indices(input_index)
        self.logits, self.attention_mask = self.logits[input_index], self.attention_mask[input_index]
        self.next_position = self.position_ids[input_index, -1:] + 1
        self.hidden = self.hidden[input_index]
        self.active = torch.arange(len(input_index), device=input_index.device)  # original row of each live row
        self.row_budgets = self.token_budgets[input_index]

    def step(self, step: int) -> bool:
        """Choose, draw and record this step's tokens; drop finished rows; run the next forward. False when done."""
        scores = self.logits.float()
        if self.token_level:
            remaining = self.row_budgets - step
            # Recorded, and part of the context of entropy and stats adapters: computed once.
            entropy, max_probs = next_token_entropy(scores), next_token_max_prob(scores)
            context = self.decision.token_context(self.hidden, scores, entropy, max_probs)
            self.row_actions, probs = self.decision.token_actions(context, remaining, self.row_keys, step)
            self._record(context, remaining, self.row_actions, probs, self.active, max_probs, entropy)
        if self.logits_processor is not None:
            scores = self.logits_processor(scores)
        transformed = self.decision.apply(scores, self.row_actions, step)
        next_tokens = sample_from_logits(transformed, keyed_uniforms(self.row_keys, step, TOKEN_STREAM))
        self.completion_ids[self.active, step] = next_tokens
        self.completion_mask[self.active, step] = True
        finished = torch.isin(next_tokens, self.eos_ids) | (self.row_budgets <= step + 1)
        keep = (~finished).nonzero().squeeze(-1)
        if len(keep) == 0:
            return False
        if len(keep) < len(self.active):
            self._keep(keep)
            next_tokens = next_tokens[keep]
        self._forward(next_tokens)
        return True

    def _keep(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.active, self.row_budgets, self.row_keys = self.active[keep], self.row_budgets[keep], self.row_keys[keep]
        self.attention_mask, self.next_position = self.attention_mask[keep], self.next_position[keep]
        if not self.token_level:
            self.row_actions = self.row_actions[keep]

    def _forward(self, next_tokens: torch.Tensor) -> None:
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(len(self.active), 1)], 1)
        self.logits = self.model(
            input_ids=next_tokens[:, None],
            attention_mask=self.attention_mask,
            position_ids=self.next_position,
            **compat.cache_argument(self.cache),
            use_cache=True,
        ).logits[:, -1]
        self.hidden = self.capture.last
        self.next_position = self.next_position + 1

    def _record(self, features, budgets, actions, probs, rows, max_probs=None, entropies=None) -> None:
        self.records["features"].append(features.detach().clone())
        self.records["budgets"].append(budgets.expand(len(features)).float())
        self.records["actions"].append(actions)
        self.records["probs"].append(probs)
        self.records["rows"].append(rows.to(actions.device))
        if max_probs is not None:
            self.records["max"].append(max_probs)
            self.records["entropy"].append(entropies)

    def result(self, input_index: torch.Tensor) -> RolloutBatch:
        packed = {key: torch.cat(values) if values else None for key, values in self.records.items()}
        return RolloutBatch(
            completion_ids=self.completion_ids,
            completion_mask=self.completion_mask,
            input_index=input_index,
            features=packed["features"],
            budgets=packed["budgets"],
            actions=packed["actions"],
            action_probs=packed["probs"],
            decision_rows=packed["rows"],
            max_probs=packed["max"],
            entropies=packed["entropy"],
            prompt_features=None if self.prompt_features is None else self.prompt_features.detach().clone(),
        )
