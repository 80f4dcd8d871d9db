"""Sequence-level training with every action tried on every prompt (`AdapterTrainerConfig.action_sampling="all"`)."""

from __future__ import annotations

import dataclasses

import torch

from ..generation.noise import choose_actions
from ..generation.rollout import RolloutBatch
from .objectives import expected_policy_loss, rewards_at_budgets


class AllActionsMixin:
    """
    The rollout, advantages, update and metrics of [`AdapterTrainer`] when `action_sampling="all"`: each prompt is
    decoded under every action of the space, `num_generations` samples each, sample `j` of every action on the same
    random numbers (common random numbers: actions are compared on the same luck). Every parallel budget's reward of
    every action is estimated from those samples ([`~objectives.rewards_at_budgets`]), and the update is the exact
    expected policy gradient at every budget ([`~objectives.expected_policy_loss`]): no action or budget goes unseen
    because the policy stopped drawing it, which is what made a sampled policy forget greedy at B = 1
    (recipes/results/experiments.md, Q3).
    """

    def _all_actions_rollout(self, rows: list[dict], cot: list[bool]):
        """`action_sampling="all"`: every action on every prompt, `num_generations` samples each; the samples of one
        prompt share their random numbers across actions (sample `j` of every action draws the same uniforms), so
        actions are compared on common noise. Returns what [`_training_rollout`] does, with one decision per prompt
        and parallel budget (its action drawn from the policy, for the metrics) and every action's reward at it."""
        args, adapter = self.args, self.unwrapped_adapter
        num_prompts, num_actions, samples = len(rows), len(adapter.decoding_config.actions), args.num_generations
        budgets = sorted(set(args.parallel_budgets))
        device = self.accelerator.device
        fixed_actions = torch.arange(num_actions, device=device).repeat_interleave(samples).repeat(num_prompts)
        sample_indices = torch.arange(samples, device=device).repeat(num_actions * num_prompts)
        batch, rewards, per_func = self._rollout(
            rows,
            cot,
            [num_actions * samples] * num_prompts,
            [args.max_completion_length] * num_prompts,
            False,
            fixed_actions=fixed_actions,
            sample_indices=sample_indices,
        )
        per_budget = rewards_at_budgets(
            rewards.view(num_prompts, num_actions, samples), budgets, args.reward_aggregation, args.pass_k
        )
        unit_rewards = per_budget.transpose(1, 2).reshape(num_prompts * len(budgets), num_actions)
        features = batch.prompt_features.repeat_interleave(len(budgets), dim=0)
        group_budgets = torch.tensor(budgets, device=device, dtype=torch.float).repeat(num_prompts)
        with torch.no_grad():
            probs = adapter.eval()(features, group_budgets).logits.float().softmax(-1)
        batch = dataclasses.replace(
            batch,
            features=features,
            budgets=group_budgets,
            actions=choose_actions(probs, False, None),
            action_probs=probs,
            decision_rows=torch.arange(num_prompts, device=device).repeat_interleave(len(budgets)),
        )
        unit_prompt = batch.decision_rows
        return batch, rewards, per_func, unit_rewards, unit_prompt, cot

    def _all_actions_advantages(self, action_rewards: torch.Tensor):
        """`action_sampling="all"`: every action's advantage over the mean of the prompt's actions at that budget,
        scaled as `scale_rewards` says; groups whose actions all score alike are left out when `filter_prompts`."""
        args, accelerator = self.args, self.accelerator
        all_rewards = accelerator.gather(action_rewards)
        all_advantages = all_rewards - all_rewards.mean(-1, keepdim=True)
        if args.scale_rewards == "batch":
            all_advantages = all_advantages / (all_rewards.std(unbiased=False) + 1e-4)
        elif args.scale_rewards == "group":
            all_advantages = all_advantages / (all_rewards.std(-1, unbiased=False, keepdim=True) + 1e-4)
        keep = torch.ones(len(all_rewards), dtype=torch.bool, device=all_rewards.device)
        if args.filter_prompts:
            keep = all_rewards.amax(-1) > all_rewards.amin(-1)
        mine = slice(
            accelerator.process_index * len(action_rewards), (accelerator.process_index + 1) * len(action_rewards)
        )
        return all_advantages[mine], keep[mine], all_rewards, keep

    def _all_actions_update(self, batch: RolloutBatch, action_advantages: torch.Tensor, keep: torch.Tensor):
        args = self.args
        weight = keep.float()
        self.adapter.train(not args.disable_dropout)
        normalizer = self.accelerator.reduce(weight.sum(), "sum") / self.accelerator.num_processes
        with self.accelerator.autocast():
            loss, parts = expected_policy_loss(
                self.adapter, batch.features, batch.budgets, action_advantages, weight, args.entropy_coef, normalizer
            )
        return loss.detach(), parts, weight, self._optimizer_step(loss)

    def _all_actions_metrics(self, batch: RolloutBatch, action_rewards: torch.Tensor) -> dict[str, float]:
        """What the policy expects to earn at each parallel budget (`expected_reward/B=<B>`) against the best single
        action of the step (`best_action_reward/B=<B>`), over all processes' prompts (`action_rewards` gathered)."""
        budgets = sorted(set(self.args.parallel_budgets))
        probs = self.accelerator.gather(batch.action_probs).view(-1, len(budgets), action_rewards.shape[-1])
        rewards = action_rewards.view(probs.shape)
        expected, best = (probs * rewards).sum(-1).mean(0), rewards.mean(0).amax(-1)
        metrics = {}
        for budget, policy_value, best_value in zip(budgets, expected.tolist(), best.tolist(), strict=True):
            metrics[f"expected_reward/B={budget}"] = policy_value
            metrics[f"best_action_reward/B={budget}"] = best_value
        return metrics
