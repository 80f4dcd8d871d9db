"""Training rollouts: generation under a decoding adapter that records what REINFORCE needs, and stops paying for
rows that have finished."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from ..adapters.modeling import DecodingAdapterModel
from .features import HiddenStateCapture, next_token_entropy
from .generate import _token_ids
from .policies import DecodingPolicy
from .sampling import ActionTransform


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
) -> RolloutBatch:
    """
    Sample completions of left-padded prompts, the adapter choosing the decoding action (token level: at every step
    from `[h_t; b_t]`; sequence level: once per input from `[e; B]` with `B = num_samples[i]`).

    The prompt is prefilled once per input; its KV cache is then expanded to the input's samples. A row ends at EOS
    or when it has generated `token_budgets[i]` tokens; finished rows are dropped from the batch and from its KV
    cache at once, so they cost nothing afterwards.

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
    """
    device = input_ids.device
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
    num_samples = num_samples.to(device)
    parallel_budgets = num_samples if parallel_budgets is None else parallel_budgets.to(device)
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
    token_budgets = token_budgets.to(device)
    token_level = adapter.level == "token"
    transform = ActionTransform(adapter.decoding_config.actions)
    eos_ids = torch.tensor(_token_ids(model.generation_config.eos_token_id), device=device, dtype=torch.long)
    pad_id = _token_ids(model.generation_config.pad_token_id) or _token_ids(model.generation_config.eos_token_id)
    pad_id = pad_id[0] if pad_id else 0

    input_index = torch.repeat_interleave(torch.arange(len(input_ids), device=device), num_samples)
    rows = len(input_index)
    max_new_tokens = int(token_budgets.max())
    completion_ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros((rows, max_new_tokens), dtype=torch.bool, device=device)
    records: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("features", "budgets", "actions", "probs", "rows", "max", "entropy")
    }

    cache = DynamicCache(config=model.config)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    pooling = adapter.decoding_config.prompt_pooling if not token_level else "last"  # token level: h_t only
    with HiddenStateCapture(model, pooling) as capture:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        if fixed_actions is not None:
            row_actions = fixed_actions.to(device)
        elif not token_level:  # one decision per input, before its samples are spread out
            prompt_features = capture.prompt_embedding()
            prompt_actions, prompt_probs = adapter.select_actions(prompt_features, parallel_budgets, deterministic)
            _record(
                records, prompt_features, parallel_budgets, prompt_actions, prompt_probs, torch.arange(len(input_ids))
            )
            row_actions = prompt_actions[input_index]
        # Spread each prompt's cache, mask and last positions over its samples.
        cache.batch_select_indices(input_index)
        logits, attention_mask = logits[input_index], attention_mask[input_index]
        next_position = position_ids[input_index, -1:] + 1
        hidden = capture.last[input_index]
        active = torch.arange(rows, device=device)  # the original row of each row still in the batch
        row_budgets = token_budgets[input_index]

        for step in range(max_new_tokens):
            scores = logits.float()
            if token_level:
                remaining = row_budgets - step
                entropy = next_token_entropy(scores)  # recorded, and the context of entropy-only adapters
                context = entropy[:, None] if adapter.context_features == "entropy" else hidden
                row_actions, probs = adapter.select_actions(context, remaining, deterministic)
                max_probs = (scores.amax(-1) - scores.logsumexp(-1)).exp()
                _record(records, context, remaining, row_actions, probs, active, max_probs, entropy)
            if logits_processor is not None:
                scores = logits_processor(scores)
            next_tokens = torch.multinomial(transform(scores, row_actions, step).softmax(-1), 1).squeeze(-1)
            completion_ids[active, step] = next_tokens
            completion_mask[active, step] = True
            finished = torch.isin(next_tokens, eos_ids) | (row_budgets <= step + 1)
            keep = (~finished).nonzero().squeeze(-1)
            if len(keep) == 0:
                break
            if len(keep) < len(active):
                cache.batch_select_indices(keep)
                active, row_budgets, attention_mask = active[keep], row_budgets[keep], attention_mask[keep]
                next_tokens, next_position = next_tokens[keep], next_position[keep]
                if not token_level:
                    row_actions = row_actions[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
            logits = model(
                input_ids=next_tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_position,
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            hidden = capture.last
            next_position = next_position + 1

    packed = {key: torch.cat(values) if values else None for key, values in records.items()}
    return RolloutBatch(
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        input_index=input_index,
        features=packed["features"],
        budgets=packed["budgets"],
        actions=packed["actions"],
        action_probs=packed["probs"],
        decision_rows=packed["rows"].to(device) if packed["rows"] is not None else None,
        max_probs=packed["max"],
        entropies=packed["entropy"],
    )


def _record(records, features, budgets, actions, probs, rows, max_probs=None, entropies=None) -> None:
    records["features"].append(features.detach().clone())
    records["budgets"].append(budgets.expand(len(features)).float())
    records["actions"].append(actions)
    records["probs"].append(probs)
    records["rows"].append(rows)
    if max_probs is not None:
        records["max"].append(max_probs)
        records["entropy"].append(entropies)
