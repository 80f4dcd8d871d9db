"""The REINFORCE pieces of adapter training: reward aggregation, baselines, and the policy-gradient loss."""

from __future__ import annotations

import math

import torch

from ..adapters.modeling import DecodingAdapterModel
from ..evaluation.metrics import estimate_pass_at_k
from ..generation.rollout import RolloutBatch


def pass_at_k(num_samples: torch.Tensor, num_correct: torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased pass@k from `n` samples of which `c` are correct (Chen et al., 2021): `1 - C(n-c, k) / C(n, k)`,
    by [`~evaluation.metrics.estimate_pass_at_k`], as float32 on `num_samples`' device."""
    values = estimate_pass_at_k(num_samples.tolist(), num_correct.tolist(), k)
    return torch.tensor(values, dtype=torch.float32, device=num_samples.device)


def aggregate_rewards(
    rewards: torch.Tensor, group: torch.LongTensor, num_groups: int, how: str, k: int | None = None
) -> torch.Tensor:
    """
    Sequence level: the reward of each action from the rewards of its `B` samples.

    Args:
        rewards (`torch.Tensor` of shape `(rows,)`): per-sample rewards.
        group (`torch.LongTensor` of shape `(rows,)`): the action (decision) each sample belongs to.
        num_groups (`int`): number of decisions.
        how (`str`): `"mean"`, `"best_of_b"` or `"pass@k"` (samples with reward > 0.5 count as correct).
        k (`int`, *optional*): `k` of pass@k.
    """
    counts = torch.zeros(num_groups, device=rewards.device).index_add_(0, group, torch.ones_like(rewards))
    if how == "mean":
        return torch.zeros(num_groups, device=rewards.device).index_add_(0, group, rewards) / counts
    if how == "best_of_b":
        best = torch.full((num_groups,), -math.inf, device=rewards.device)
        return best.scatter_reduce(0, group, rewards, reduce="amax")
    correct = torch.zeros(num_groups, device=rewards.device).index_add_(0, group, (rewards > 0.5).float())
    return pass_at_k(counts, correct, k)


def advantages(
    rewards: torch.Tensor, prompt: torch.LongTensor, baseline: str, moving_average: float | None = None
) -> torch.Tensor:
    """
    `reward - baseline` per rollout.

    Args:
        rewards (`torch.Tensor` of shape `(n,)`): one reward per rollout of the whole step (all processes).
        prompt (`torch.LongTensor` of shape `(n,)`): the prompt each rollout answers.
        baseline (`str`): `"batch_mean"`, `"leave_one_out"` (mean of the prompt's other rollouts; the batch's other
            rollouts when a prompt has only one) or `"moving_average"` (`moving_average`, or the batch mean before
            there is one).
    """
    if baseline == "moving_average":
        return rewards - (rewards.mean() if moving_average is None else moving_average)
    if baseline == "batch_mean":
        return rewards - rewards.mean()
    num_prompts = int(prompt.max()) + 1
    totals = torch.zeros(num_prompts, device=rewards.device).index_add_(0, prompt, rewards)
    counts = torch.zeros(num_prompts, device=rewards.device).index_add_(0, prompt, torch.ones_like(rewards))
    if bool((counts[prompt] > 1).all()):
        return rewards - (totals[prompt] - rewards) / (counts[prompt] - 1)
    if len(rewards) == 1:
        return torch.zeros_like(rewards)
    return rewards - (rewards.sum() - rewards) / (len(rewards) - 1)


def policy_loss(
    adapter: torch.nn.Module,
    batch: RolloutBatch,
    decision_advantages: torch.Tensor,
    decision_weights: torch.Tensor,
    entropy_coef: float,
    normalizer: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """
    REINFORCE with an entropy bonus, `-(sum_d w_d A_d log pi(a_d | x_d) + entropy_coef sum_d w_d H(pi(. | x_d))) /
    sum_d w_d`, over the batch's decisions `d`, recomputed with gradients from the recorded features.

    Args:
        adapter: the adapter (or its distributed wrapper) to differentiate.
        batch ([`RolloutBatch`]): the rollouts.
        decision_advantages (`torch.Tensor` of shape `(decisions,)`): the advantage each decision is credited with.
        decision_weights (`torch.Tensor` of shape `(decisions,)`): 1 for decisions in the loss, 0 for masked ones.
        entropy_coef (`float`): the entropy bonus's coefficient (TRL's `entropy_coef`).
        normalizer (`torch.Tensor` or `float`, *optional*): what to divide by instead of this batch's `sum_d w_d`.
            With data parallelism, pass `(sum of w_d over all processes) / num_processes`: the averaged gradient is
            then that of the whole step's mean, however the kept decisions fall across processes.
    """
    logits = adapter(batch.features, batch.budgets).logits.float()
    log_probs = logits.log_softmax(dim=-1)
    chosen = log_probs.gather(-1, batch.actions[:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    total = (decision_weights.sum() if normalizer is None else torch.as_tensor(normalizer)).clamp(min=1e-8)
    pg_loss = -(decision_weights * decision_advantages * chosen).sum() / total
    mean_entropy = (decision_weights * entropy).sum() / total
    return pg_loss - entropy_coef * mean_entropy, {"pg_loss": pg_loss.detach(), "entropy": mean_entropy.detach()}


def decision_weights_and_advantages(
    adapter: DecodingAdapterModel,
    batch: RolloutBatch,
    rollout_advantages: torch.Tensor,
    rollout_keep: torch.Tensor,
    max_prob_threshold: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Credit each decision with its rollout's advantage and weight it 0 when its rollout was filtered out or (token
    level) its step's next-token max probability exceeds `max_prob_threshold`.
    """
    advantage = rollout_advantages[batch.decision_rows]
    weight = rollout_keep[batch.decision_rows].float()
    if adapter.level == "token" and max_prob_threshold is not None:
        weight = weight * (batch.max_probs <= max_prob_threshold).float()
    return advantage, weight


def rewards_at_budgets(rewards: torch.Tensor, budgets: list[int], how: str, k: int | None = None) -> torch.Tensor:
    """
    Sequence level with `action_sampling="all"`: each action's reward at every parallel budget, estimated from the
    same `n` samples of it.

    Args:
        rewards (`torch.Tensor` of shape `(..., n)`): the rewards of an action's `n` samples.
        budgets (`list[int]`): the parallel budgets `B`, each at most `n`.
        how (`str`): as in [`aggregate_rewards`]. `"best_of_b"` is the expected best of `B` samples drawn without
            replacement from the `n` (for 0/1 rewards, the unbiased pass@B): with the rewards in increasing order,
            `sum_i r_(i) C(i - 1, B - 1) / C(n, B)`. `"mean"` and `"pass@k"` do not depend on `B`.
        k (`int`, *optional*): `k` of pass@k.

    Returns:
        `torch.Tensor` of shape `(..., len(budgets))`.
    """
    n = rewards.shape[-1]
    if not budgets or any(not 1 <= budget <= n for budget in budgets):
        raise ValueError(f"Every parallel budget must be in [1, {n}] (the samples per action); got {budgets}.")
    if how == "mean":
        return rewards.mean(-1, keepdim=True).expand(*rewards.shape[:-1], len(budgets))
    if how != "best_of_b":
        correct = (rewards > 0.5).sum(-1)
        estimate = pass_at_k(torch.full_like(correct, n).flatten(), correct.flatten(), k).view(correct.shape)
        return estimate[..., None].expand(*rewards.shape[:-1], len(budgets))
    # weights[j, i]: the chance that the (i + 1)-th smallest of n rewards is the best of budgets[j] drawn from them
    weights = torch.tensor(
        [[math.comb(i, budget - 1) / math.comb(n, budget) for i in range(n)] for budget in budgets],
        dtype=torch.float64,
        device=rewards.device,
    )
    ordered = rewards.sort(dim=-1).values.double()
    return (ordered @ weights.T).to(rewards.dtype)


def expected_policy_loss(
    adapter: torch.nn.Module,
    features: torch.Tensor,
    budgets: torch.Tensor,
    action_advantages: torch.Tensor,
    group_weights: torch.Tensor,
    entropy_coef: float,
    normalizer: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """
    The all-action policy gradient of a contextual bandit whose every action was tried: `-(sum_g w_g sum_a
    pi(a | x_g) A_g(a) + entropy_coef sum_g w_g H(pi(. | x_g))) / sum_g w_g` over groups `g` (a prompt at one
    parallel budget). Its gradient is the exact gradient of the expected advantage under the policy, the expectation
    that REINFORCE estimates from sampled actions, so no action's signal is lost to the draw.

    Args:
        adapter: the adapter (or its distributed wrapper) to differentiate.
        features (`torch.Tensor` of shape `(groups, context_size)`): what the adapter saw of each group's prompt.
        budgets (`torch.Tensor` of shape `(groups,)`): each group's parallel budget `B`.
        action_advantages (`torch.Tensor` of shape `(groups, num_actions)`): every action's advantage.
        group_weights (`torch.Tensor` of shape `(groups,)`): 1 for groups in the loss, 0 for filtered ones.
        entropy_coef, normalizer: as in [`policy_loss`].
    """
    log_probs = adapter(features, budgets).logits.float().log_softmax(dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(dim=-1)
    total = (group_weights.sum() if normalizer is None else torch.as_tensor(normalizer)).clamp(min=1e-8)
    pg_loss = -(group_weights * (probs * action_advantages).sum(-1)).sum() / total
    mean_entropy = (group_weights * entropy).sum() / total
    return pg_loss - entropy_coef * mean_entropy, {"pg_loss": pg_loss.detach(), "entropy": mean_entropy.detach()}
