import math

import pytest
import torch

from hf_adaptive_decoding import DRAFT_FEATURES
from hf_adaptive_decoding.speculative.features import (
    ACCEPTANCE_EMA_DECAY,
    REMAINING_TOKENS_SCALE,
    DraftFeatureState,
    draft_token_stats,
)


def _column(features: torch.Tensor, name: str) -> list[float]:
    return features[:, DRAFT_FEATURES.index(name)].tolist()


def test_draft_token_stats_of_a_drafted_token_and_of_the_greedy_one():
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]).log()  # probs 2/3, 1/3, 0, 0 and 0, 0, 1, 0
    greedy, stats = draft_token_stats(logits)
    assert greedy.tolist() == [0, 2]
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(4)
    torch.testing.assert_close(stats, torch.tensor([[2 / 3, entropy, 1 / 3], [1.0, 0.0, 1.0]]))
    tokens, drafted = draft_token_stats(logits, torch.tensor([1, 2]))
    assert tokens.tolist() == [1, 2]
    torch.testing.assert_close(drafted[:, 0], torch.tensor([1 / 3, 1.0]))
    torch.testing.assert_close(drafted[:, 1:], stats[:, 1:])


def test_the_state_follows_a_cycle_token_by_token_then_folds_it_into_the_acceptance_statistics():
    state = DraftFeatureState(rows=2, max_draft_tokens=4)
    stats = torch.tensor([[0.5, 0.2, 0.1], [0.9, 0.1, 0.8]])
    seen = torch.tensor([True, False])  # the second row decides before its first token: its stats are not read
    features = state.features(torch.tensor([1, 0]), torch.tensor([15, -3]), stats, seen)
    assert features.shape == (2, len(DRAFT_FEATURES))
    assert _column(features, "draft_prob") == [0.5, 0.0] and _column(features, "has_draft_probs") == [1.0, 0.0]
    assert _column(features, "cumulative_draft_prob") == [0.5, 0.0]
    assert _column(features, "position") == [0.25, 0.0]
    assert _column(features, "acceptance_ema") == [0.5, 0.5] and _column(features, "has_hidden_state") == [0.0, 0.0]
    remaining = _column(features, "remaining_tokens")
    assert remaining[0] == pytest.approx(math.log1p(15) / REMAINING_TOKENS_SCALE) and remaining[1] == 0.0
    state.add_token(stats, seen)
    state.add_token(torch.tensor([[0.4, 0.0, 0.0], [0.9, 0.0, 0.0]]), torch.tensor([True, False]))
    features = state.features(torch.tensor([3, 1]), torch.tensor([13, 4]), stats, torch.tensor([True, True]))
    assert _column(features, "cumulative_draft_prob") == pytest.approx([0.5 * 0.4 * 0.5, 0.9])
    # Row 0 ends a cycle that drafted 3 and had 2 accepted; row 1's ends having drafted nothing; neither goes on.
    state.end_cycle(torch.tensor([True, True]), torch.tensor([3, 0]), torch.tensor([2, 0]))
    ema = ACCEPTANCE_EMA_DECAY * 0.5 + (1 - ACCEPTANCE_EMA_DECAY) * 2 / 3
    assert state.acceptance_ema.tolist() == pytest.approx([ema, 0.5])
    assert state.last_accepted.tolist() == [0.5, 0.0] and state.has_hidden_state.tolist() == [1.0, 1.0]
    assert state.cumulative_prob.tolist() == [1.0, 1.0]
    state.end_cycle(torch.tensor([False, True]), torch.tensor([4, 2]), torch.tensor([4, 1]))
    assert state.acceptance_ema[0] == pytest.approx(ema) and state.last_accepted.tolist() == [0.5, 0.25]


def test_a_one_row_state_builds_several_decisions_of_its_cycle_at_once():
    state = DraftFeatureState(rows=1, max_draft_tokens=5)
    state.end_cycle(torch.tensor([True]), torch.tensor([5]), torch.tensor([5]))
    counts = torch.arange(0, 4)
    features = state.features(counts, 10 - counts, torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool))
    assert features.shape == (4, len(DRAFT_FEATURES))
    assert _column(features, "position") == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert _column(features, "last_accepted") == [1.0] * 4 and _column(features, "has_hidden_state") == [1.0] * 4
