import itertools
import math

import pytest
import torch

from hf_adaptive_decoding import AdaptiveDecodingConfig, DecodingAdapterConfig, DecodingAdapterModel
from hf_adaptive_decoding.training.objectives import (
    advantages,
    aggregate_rewards,
    expected_policy_loss,
    pass_at_k,
    rewards_at_budgets,
)


def test_pass_at_k_matches_the_closed_form():
    n = torch.tensor([4, 4, 4, 8, 5])
    c = torch.tensor([0, 1, 4, 3, 5])
    for k in (1, 2, 3):
        expected = [
            1 - math.comb(ni - ci, k) / math.comb(ni, k) for ni, ci in zip(n.tolist(), c.tolist(), strict=True)
        ]
        torch.testing.assert_close(pass_at_k(n, c, k), torch.tensor(expected))


def test_aggregate_rewards():
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert aggregate_rewards(rewards, group, 3, "mean").tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert aggregate_rewards(rewards, group, 3, "best_of_b").tolist() == [1.0, 0.0, 1.0]
    assert aggregate_rewards(rewards, group, 3, "pass@k", k=1).tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert aggregate_rewards(rewards, group, 3, "pass@k", k=2).tolist() == pytest.approx([1.0, 0.0, 1.0])


def test_baselines():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    prompt = torch.tensor([0, 0, 0, 1, 1, 1])
    torch.testing.assert_close(advantages(rewards, prompt, "batch_mean"), rewards - 0.5)
    loo = advantages(rewards, prompt, "leave_one_out")
    torch.testing.assert_close(loo, torch.tensor([1.0, -0.5, -0.5, -1.0, 0.5, 0.5]))
    torch.testing.assert_close(advantages(rewards, prompt, "moving_average", 0.25), rewards - 0.25)
    # One rollout per prompt: leave-one-out over the batch instead.
    single = advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 1, 2]), "leave_one_out")
    torch.testing.assert_close(single, torch.tensor([1.0, -0.5, -0.5]))


def test_rewards_at_budgets_are_the_expected_best_of_b_drawn_from_the_samples():
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 0.0], [0.2, 0.5, 0.1, 0.9, 0.0, 0.3]])
    budgets = [1, 2, 3, 6]
    estimated = rewards_at_budgets(rewards, budgets, "best_of_b")
    assert estimated.shape == (2, 4)
    for row, values in zip(rewards.tolist(), estimated.tolist(), strict=True):
        brute_force = [
            sum(max(draw) for draw in itertools.combinations(row, b)) / math.comb(len(row), b) for b in budgets
        ]
        assert values == pytest.approx(brute_force)
    pass_at_budgets = [pass_at_k(torch.tensor([6]), torch.tensor([2]), b).item() for b in budgets]
    assert estimated[0].tolist() == pytest.approx(pass_at_budgets)  # 0/1 rewards: best of B is the unbiased pass@B
    assert rewards_at_budgets(rewards, [1, 6], "mean").flatten().tolist() == pytest.approx([1 / 3] * 4)
    assert rewards_at_budgets(rewards, [1, 2], "pass@k", k=2)[:, 0].tolist() == pytest.approx(
        [1 - math.comb(4, 2) / math.comb(6, 2), 1 - math.comb(5, 2) / math.comb(6, 2)]
    )


def test_expected_policy_loss_is_minus_the_expected_advantage_and_weights_groups():
    config = DecodingAdapterConfig(
        decoding=AdaptiveDecodingConfig.from_preset("mixed-seq", budget_feature="log").to_dict(),
        base_model_hidden_size=8,
        adapter_hidden_size=16,
        budget_logits=True,
    )
    torch.manual_seed(0)
    adapter = DecodingAdapterModel(config).eval()
    torch.nn.init.normal_(adapter.output_layer.weight)
    features, budgets = torch.randn(3, 8), torch.tensor([1.0, 8.0, 4.0])
    action_advantages, weights = torch.randn(3, 6), torch.tensor([1.0, 1.0, 0.0])
    loss, parts = expected_policy_loss(adapter, features, budgets, action_advantages, weights, entropy_coef=0.0)
    probs = adapter(features, budgets).logits.softmax(-1)
    expected = -(probs[:2] * action_advantages[:2]).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    assert parts["entropy"] == pytest.approx(float(-(probs[:2] * probs[:2].log()).sum(-1).mean()))
    loss.backward()  # the filtered group's advantage does not reach the gradient
    grads = [p.grad.clone() for p in adapter.parameters()]
    adapter.zero_grad()
    changed = action_advantages.clone()
    changed[2] = 100.0
    expected_policy_loss(adapter, features, budgets, changed, weights, entropy_coef=0.0)[0].backward()
    assert all(torch.allclose(a, p.grad) for a, p in zip(grads, adapter.parameters(), strict=True))


def test_rewards_at_budgets_refuses_budgets_beyond_the_samples():
    with pytest.raises(ValueError, match=r"in \[1, 4\].*\[1, 8\]"):
        rewards_at_budgets(torch.zeros(2, 4), [1, 8], "best_of_b")
