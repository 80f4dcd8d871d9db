import math
from fractions import Fraction

import pytest
import torch

from hf_adaptive_decoding import estimate_pass_at_k
from hf_adaptive_decoding.training.objectives import aggregate_rewards, pass_at_k

# (n, c, k) by hand: every case of n <= 6, and some larger ones where the binomials are large.
CASES = [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)]
CASES += [(200, 3, 100), (200, 0, 200), (200, 199, 1), (1000, 10, 50), (10_000, 1, 9_999)]


def closed_form(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_estimate_pass_at_k_matches_the_closed_form():
    for n, c, k in CASES:
        expected = closed_form(n, c, k)
        assert estimate_pass_at_k([n], [c], k) == pytest.approx([expected], rel=1e-9, abs=1e-12), (n, c, k)


def test_estimate_pass_at_k_by_hand():
    # 1 correct of 4: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@4 = 1; none or all correct: 0 or 1.
    assert estimate_pass_at_k(4, [1, 1, 0, 4], 2) == pytest.approx([0.5, 0.5, 0.0, 1.0])
    assert estimate_pass_at_k([4, 5], [1, 2], 1) == pytest.approx([0.25, 0.4])
    assert estimate_pass_at_k([4.0], [3.0], 4) == [1.0]  # counts as tensors' tolist() gives them


@pytest.mark.parametrize(
    ("num_samples", "num_correct", "k", "message"),
    [
        (4, [5], 1, "must be in \\[0, num_samples\\]"),
        (4, [-1], 1, "must be in \\[0, num_samples\\]"),
        (4, [1], 5, "k must be in \\[1, num_samples\\]"),
        (4, [1], 0, "k must be in \\[1, num_samples\\]"),
        (4, [1], 1.0, "k must be an int"),
        ([4, 4], [1], 1, "2 sample counts for 1 problems"),
        (4, [1.5], 1, "num_correct must be whole numbers"),
        (4.5, [1], 1, "num_samples must be whole numbers"),
    ],
)
def test_estimate_pass_at_k_rejects_impossible_counts(num_samples, num_correct, k, message):
    with pytest.raises(ValueError, match=message):
        estimate_pass_at_k(num_samples, num_correct, k)


def test_the_torch_pass_at_k_is_the_same_estimator():
    for k in (1, 2, 3):
        rows = [(n, c) for n, c, kk in CASES if kk == k]
        n, c = torch.tensor([row[0] for row in rows]), torch.tensor([row[1] for row in rows])
        result = pass_at_k(n, c, k)
        assert result.dtype == torch.float32
        expected = torch.tensor([closed_form(*row, k) for row in rows])
        torch.testing.assert_close(result, expected)
    # Sequence level: counts of a group's samples are float tensors.
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert aggregate_rewards(rewards, group, 3, "pass@k", k=2).tolist() == pytest.approx([1.0, 0.0, 1.0])
