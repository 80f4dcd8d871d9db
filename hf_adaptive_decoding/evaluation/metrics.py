"""Metrics of sampled solutions, in plain Python (no torch, no numpy): the unbiased pass@k estimator."""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def _count(value: numbers.Real, what: str) -> int:
    """A count given as an int or an integral float (as tensors' `tolist()` give them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise ValueError(f"{what} must be whole numbers, got {value!r}.")
    return int(value)


def estimate_pass_at_k(
    num_samples: int | Sequence[numbers.Real], num_correct: Sequence[numbers.Real], k: int
) -> list[float]:
    """
    Unbiased pass@k of each problem (Chen et al., 2021): the probability that at least one of `k` samples drawn
    without replacement from the `n` generated ones is correct, `1 - C(n - c, k) / C(n, k)`, computed as
    `1 - prod_{i < k} (n - c - i) / (n - i)` without forming the binomials (1.0 when fewer than `k` samples are
    wrong). The one implementation of the project: [`~training.objectives.pass_at_k`] applies it to tensors.

    Args:
        num_samples (`int` or `Sequence[int]`): samples `n` drawn per problem (one for all, or one per problem).
        num_correct (`Sequence[int]`): correct samples `c` per problem, `0 <= c <= n`.
        k (`int`): `1 <= k <= n`.

    Returns:
        `list[float]`: pass@k of each problem, in `num_correct`'s order.
    """
    correct = [_count(c, "num_correct") for c in num_correct]
    if isinstance(num_samples, numbers.Real):
        samples = [_count(num_samples, "num_samples")] * len(correct)
    else:
        samples = [_count(n, "num_samples") for n in num_samples]
    if len(samples) != len(correct):
        raise ValueError(f"{len(samples)} sample counts for {len(correct)} problems.")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an int, got {k!r}.")
    values = []
    for n, c in zip(samples, correct, strict=True):
        if not 0 <= c <= n:
            raise ValueError(f"num_correct must be in [0, num_samples], got {c} correct of {n}.")
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, num_samples], got k={k} with {n} samples.")
        if n - c < k:
            values.append(1.0)
            continue
        all_wrong = 1.0
        for i in range(k):
            all_wrong *= (n - c - i) / (n - i)
        values.append(1.0 - all_wrong)
    return values
