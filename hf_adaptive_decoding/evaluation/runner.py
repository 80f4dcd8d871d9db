"""Generate and score: the one runner behind training rollouts, trainer validation, evaluation and action selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapters.modeling import DecodingAdapterModel
from ..data.prompting import encode_prompts
from ..generation.noise import noise_keys as keys_for_problems
from ..generation.policies import DecodingPolicy
from ..generation.rollout import RolloutBatch, generate_rollouts
from ..rewards.scoring import score_completions


@dataclass
class ScoredRollouts:
    """
    What [`rollout_and_score`] returns.

    Args:
        batch ([`~generation.rollout.RolloutBatch`]): the rollouts (rows are samples, grouped by input).
        completions (`list[str]`): the decoded completion of every row.
        rows (`list[dict]`): the dataset row of every sample.
        rewards (`torch.Tensor` of shape `(samples,)`): the weighted reward of every sample.
        rewards_per_func (`torch.Tensor` of shape `(samples, num_funcs)`): each function's reward (NaN: not scored).
    """

    batch: RolloutBatch
    completions: list[str]
    rows: list[dict[str, Any]]
    rewards: torch.Tensor
    rewards_per_func: torch.Tensor


def _per_input(value: int | Sequence[int] | None, count: int, device) -> torch.LongTensor | None:
    if value is None:
        return None
    values = [value] * count if isinstance(value, int) else list(value)
    return torch.tensor(values, dtype=torch.long, device=device)


def rollout_and_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    policy: DecodingAdapterModel | DecodingPolicy,
    rows: list[dict[str, Any]],
    reward_funcs: Sequence[Callable],
    *,
    num_samples: int | Sequence[int] = 1,
    token_budgets: int | Sequence[int],
    instructions: str | Sequence[str | None] | None = None,
    system_prompt: str | None = None,
    seed: int | None = None,
    problem_ids: Sequence[int | str] | None = None,
    deterministic: bool = False,
    parallel_budgets: int | Sequence[int] | None = None,
    fixed_actions: torch.LongTensor | None = None,
    sample_indices: torch.LongTensor | None = None,
    logits_processor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reward_weights: Sequence[float] | None = None,
    reward_timeout: float | None = 60.0,
    failure_reward: float = 0.0,
    rollout_engine: Callable[..., RolloutBatch] | None = None,
) -> ScoredRollouts:
    """
    Encode `rows`' prompts, roll them out under `policy` with [`~generation.rollout.generate_rollouts`], decode and
    score every sample with `reward_funcs` ([`~rewards.scoring.score_completions`]).

    With `seed`, every problem's random numbers are keyed by `(seed, problem id)` (`problem_ids`, default the rows'
    positions): any two decoders run with the same seed on the same problem draw the same numbers, whatever else is in
    their batch. Without it, keys come from torch's global generator (a seeded training run).

    The other arguments are those of `generate_rollouts`, given as one int for every input or one per input;
    `rollout_engine` is what runs them (default `generate_rollouts`, or e.g. a vLLM engine's
    [`~hf_adaptive_decoding.vllm.rollout.vllm_generate_rollouts`] with its `llm` bound).
    """
    device = model.device
    count = len(rows)
    if instructions is None or isinstance(instructions, str):
        instructions = [instructions] * count
    encoded = encode_prompts(tokenizer, [row["prompt"] for row in rows], list(instructions), system_prompt, device)
    noise = None
    if seed is not None:
        noise = keys_for_problems(seed, range(count) if problem_ids is None else problem_ids).to(device)
    batch = (rollout_engine or generate_rollouts)(
        model,
        policy,
        encoded["input_ids"],
        encoded["attention_mask"],
        num_samples=_per_input(num_samples, count, device),
        token_budgets=_per_input(token_budgets, count, device),
        deterministic=deterministic,
        logits_processor=logits_processor,
        parallel_budgets=_per_input(parallel_budgets, count, device),
        fixed_actions=fixed_actions,
        noise_keys=noise,
        sample_indices=sample_indices,
    )
    ids = batch.completion_ids.masked_fill(~batch.completion_mask, tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    sample_rows = [rows[i] for i in batch.input_index.tolist()]
    rewards, per_func = score_completions(
        reward_funcs, sample_rows, completions, reward_weights, reward_timeout, failure_reward
    )
    return ScoredRollouts(batch, completions, sample_rows, rewards.to(device), per_func.to(device))
