"""The draft adapter's inputs, built by one piece of code live (while transformers drafts) and on replayed traces.

[`LearnedDraftGenerator`] keeps one [`DraftFeatureState`] for its generation; [`simulate_drafting`] keeps one for all
its episodes in step. Both take each decision from `DraftFeatureState.features`, and so see the same `DRAFT_FEATURES`
for the same history.
"""

from __future__ import annotations

import math

import torch

from ..generation.features import next_token_entropy
from .modeling import DRAFT_FEATURES

ACCEPTANCE_EMA_DECAY = 0.8
REMAINING_TOKENS_SCALE = math.log1p(1024)


def draft_token_stats(
    logits: torch.Tensor, tokens: torch.LongTensor | None = None
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """
    What the adapter sees of a drafted token: its probability under the draft, and the entropy (over log(vocabulary))
    and top-1 minus top-2 margin of the distribution it was drafted from.

    Args:
        logits (`torch.FloatTensor` of shape `(rows, vocab_size)`): the draft's scores where each token was drafted.
        tokens (`torch.LongTensor` of shape `(rows,)`, *optional*): the drafted tokens; by default the greedy ones.

    Returns:
        `(tokens, stats)`: the tokens, and `stats` of shape `(rows, 3)` holding (probability, entropy, margin).
    """
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    top2 = probs.topk(2, dim=-1)
    if tokens is None:
        tokens, token_prob = top2.indices[:, 0], top2.values[:, 0]
    else:
        token_prob = probs.gather(-1, tokens[:, None]).squeeze(-1)
    entropy = next_token_entropy(logits) / math.log(logits.shape[-1])
    return tokens, torch.stack([token_prob, entropy, top2.values[:, 0] - top2.values[:, 1]], dim=-1)


class DraftFeatureState:
    """
    What a draft adapter's features remember, within a cycle and across cycles, for `rows` generations in step (one
    live; one per episode in the replay).

    Per decision, [`~DraftFeatureState.features`] builds the `DRAFT_FEATURES` rows and [`~DraftFeatureState.add_token`]
    folds the token just drafted into the cycle's running product; [`~DraftFeatureState.end_cycle`] folds the cycles
    that end into the acceptance statistics and starts the next ones.

    Args:
        rows (`int`): how many generations.
        max_draft_tokens (`int`): the adapter's cap on a cycle's draft, the scale of `position` and `last_accepted`.
        device (`torch.device`, *optional*): where the state and the features live.
    """

    def __init__(self, rows: int, max_draft_tokens: int, device: torch.device | str | None = None):
        self.max_draft_tokens = max_draft_tokens
        self.acceptance_ema = torch.full((rows,), 0.5, device=device)
        self.last_accepted = torch.zeros(rows, device=device)
        self.has_hidden_state = torch.zeros(rows, device=device)  # 1 once a cycle has ended: the target has run
        self.cumulative_prob = torch.ones(rows, device=device)  # product of this cycle's draft probabilities so far

    def features(
        self,
        drafted: torch.LongTensor,
        remaining: torch.LongTensor,
        stats: torch.FloatTensor,
        has_draft_probs: torch.BoolTensor,
    ) -> torch.FloatTensor:
        """
        The `DRAFT_FEATURES` of one decision per row: whether to stop after the `drafted`-th token of the cycle.

        Args:
            drafted (`torch.LongTensor` of shape `(n,)`): tokens drafted so far in the cycle (0: before the first).
            remaining (`torch.LongTensor` of shape `(n,)`): tokens the call may still generate, counting the drafted
                ones as generated.
            stats (`torch.FloatTensor` of shape `(n, 3)`): [`draft_token_stats`] of the token just drafted; read only
                where `has_draft_probs`.
            has_draft_probs (`torch.BoolTensor` of shape `(n,)`): whether a token with draft probabilities was just
                drafted (not before the first token, nor for prompt lookup).

        `n` is `rows`, or any number for a state of one row (one generation's decisions at several points of a cycle
        whose decisions depend on nothing it decides, as for a prompt-lookup proposal).

        Returns:
            `torch.FloatTensor` of shape `(n, len(DRAFT_FEATURES))`.
        """
        seen = has_draft_probs.float()
        stats = stats.float() * seen[:, None]
        columns = {
            "draft_prob": stats[:, 0],
            "draft_entropy": stats[:, 1],
            "draft_margin": stats[:, 2],
            "has_draft_probs": seen,
            "cumulative_draft_prob": self.cumulative_prob * stats[:, 0],
            "position": drafted.float() / self.max_draft_tokens,
            "acceptance_ema": self.acceptance_ema,
            "last_accepted": self.last_accepted,
            "remaining_tokens": torch.log1p(remaining.clamp(min=0).float()) / REMAINING_TOKENS_SCALE,
            "has_hidden_state": self.has_hidden_state,
        }
        return torch.stack(torch.broadcast_tensors(*(columns[name] for name in DRAFT_FEATURES)), dim=-1)

    def add_token(self, stats: torch.FloatTensor, has_draft_probs: torch.BoolTensor) -> None:
        """Fold the token just drafted (the `stats` and `has_draft_probs` given to `features`, one row per row) into
        this cycle's `cumulative_draft_prob`."""
        token_prob = torch.where(has_draft_probs, stats[:, 0].float(), torch.ones_like(self.cumulative_prob))
        self.cumulative_prob = self.cumulative_prob * token_prob

    def end_cycle(self, ends: torch.BoolTensor, drafted: torch.LongTensor, accepted: torch.LongTensor) -> None:
        """
        Close the cycles of the rows where `ends`, which drafted `drafted` tokens of which the target accepted
        `accepted` (all `(rows,)`), and start their next cycles; a cycle that drafted nothing leaves the acceptance
        average as it was.
        """
        cycled = ends & (drafted > 0)
        updated = ACCEPTANCE_EMA_DECAY * self.acceptance_ema + (1 - ACCEPTANCE_EMA_DECAY) * accepted / drafted.clamp(
            min=1
        )
        self.acceptance_ema = torch.where(cycled, updated, self.acceptance_ema)
        self.last_accepted = torch.where(ends, accepted.float() / self.max_draft_tokens, self.last_accepted)
        self.has_hidden_state = torch.where(ends, torch.ones_like(self.has_hidden_state), self.has_hidden_state)
        self.cumulative_prob = torch.where(ends, torch.ones_like(self.cumulative_prob), self.cumulative_prob)
