import math

import pytest
import torch

from hf_adaptive_decoding.training.objectives import advantages, aggregate_rewards, pass_at_k


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
