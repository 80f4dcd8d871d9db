"""Apply each row's own decoding action to a batch of next-token logits in one batched operation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .configuration import DecodingAction


class NonFiniteLogitsError(ValueError):
    """Raised when a row of next-token logits has no valid distribution (NaN, +inf, or every entry -inf)."""


def check_logits_are_finite(scores: torch.Tensor, step: int | None = None) -> None:
    """
    Raise [`NonFiniteLogitsError`] naming the rows whose logits cannot be sampled from.

    A row is valid when it has no NaN, no +inf and at least one finite entry (individual `-inf` entries are masks).
    One reduction: `amax` propagates NaN, is +inf if any entry is, and is -inf only if every entry is.
    """
    row_max = scores.amax(dim=-1)
    bad_rows = ~torch.isfinite(row_max)
    # A host sync, but one bool per step, and the alternative is a NaN token or a device-side assert.
    if bad_rows.any():
        rows = bad_rows.nonzero().flatten().tolist()
        where = f" at generation step {step}" if step is not None else ""
        raise NonFiniteLogitsError(
            f"Next-token logits of batch row(s) {rows[:16]}{'...' if len(rows) > 16 else ''}{where} are not a valid "
            f"distribution (max={row_max[bad_rows][:4].tolist()}): they contain NaN or +inf, or every token is masked "
            "to -inf. Check the model's dtype (fp16 overflow), its inputs, and any logits processor that masks tokens."
        )


class ActionTransform:
    """
    The per-row sampling transform for a fixed action space.

    `ActionTransform(actions)(scores, action_ids)` gives, for each row `i`, what transformers' warpers
    (Temperature -> TopK -> TopP -> MinP, in `generate`'s order) give for action `action_ids[i]`, and for greedy rows
    a distribution with all its mass on the argmax. No Python loop over rows and no host sync. Truncation works on a
    window of the `k_max` best tokens (`k_max` = largest `top_k` in the action space) when every top-p action also
    has a top-k; only an action space with top-p but no top-k pays for a full-vocabulary sort. Min-p needs no sort.

    Args:
        actions (`Sequence[DecodingAction]`):
            The action space; `action_ids` index into it.
    """

    def __init__(self, actions: Sequence[DecodingAction]):
        self.actions = list(actions)
        self.uses_greedy = any(not a.do_sample for a in self.actions)
        self.uses_top_k = any(a.top_k for a in self.actions)
        self.uses_top_p = any(a.top_p for a in self.actions)
        self.uses_min_p = any(a.min_p for a in self.actions)
        needs_full_sort = any(a.top_p and not a.top_k for a in self.actions)
        self.window = None if needs_full_sort else max((a.top_k or 0) for a in self.actions)
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._tables:
            actions = self.actions
            self._tables[device] = {
                "greedy": torch.tensor([not a.do_sample for a in actions], device=device),
                # Greedy rows are divided by 1; their values are replaced by the argmax mask anyway.
                "temperature": torch.tensor([a.temperature if a.do_sample else 1.0 for a in actions], device=device),
                "top_k": torch.tensor([a.top_k or 0 for a in actions], device=device),
                # transformers compares with the Python float `1 - top_p`; compute it in double, as it does.
                "one_minus_top_p": torch.tensor([1.0 - (a.top_p or 1.0) for a in actions], device=device),
                "min_p": torch.tensor([a.min_p or 0.0 for a in actions], device=device),
            }
        return self._tables[device]

    def __call__(self, scores: torch.Tensor, action_ids: torch.LongTensor) -> torch.Tensor:
        """
        Args:
            scores (`torch.FloatTensor` of shape `(batch_size, vocab_size)`):
                Next-token logits (after any other logits processors). Not modified.
            action_ids (`torch.LongTensor` of shape `(batch_size,)`):
                Index of each row's action.

        Returns:
            `torch.FloatTensor` of the same shape: logits whose softmax is each row's sampling distribution, with
            filtered tokens at `-inf`.
        """
        table = self._table(scores.device)
        out = scores / table["temperature"][action_ids].to(scores.dtype)[:, None]
        if self.uses_top_k or self.uses_top_p:
            out = self._truncate(out, action_ids, table)
        if self.uses_min_p:
            probs = out.softmax(dim=-1)
            min_p = table["min_p"][action_ids].to(probs.dtype)[:, None]
            # The argmax always survives since min_p < 1, which is transformers' min_tokens_to_keep=1.
            out = out.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), -float("inf"))
        if self.uses_greedy:
            is_argmax = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.argmax(-1, keepdim=True), True)
            out = out.masked_fill(table["greedy"][action_ids][:, None] & ~is_argmax, -float("inf"))
        return out

    def _truncate(self, out: torch.Tensor, action_ids: torch.LongTensor, table: dict) -> torch.Tensor:
        """Top-k then top-p, as one threshold per row found in a sorted window of the best tokens."""
        vocab_size = out.shape[-1]
        if self.window is not None and self.window < vocab_size:
            window = torch.topk(out, self.window, dim=-1).values
        else:
            window = torch.sort(out, dim=-1, descending=True).values
        width = window.shape[-1]
        top_k = table["top_k"][action_ids]
        keep = torch.where(top_k > 0, top_k.clamp(max=width), width)
        position = torch.arange(width, device=out.device)
        if self.uses_top_p:
            window = window.masked_fill(position >= keep[:, None], -float("inf"))
            # transformers sorts ascending and removes tokens whose cumulative mass is <= 1 - top_p; flipping the
            # window gives the same order of summation.
            cumulative = window.flip(-1).softmax(dim=-1).cumsum(dim=-1).flip(-1)
            one_minus_top_p = table["one_minus_top_p"][action_ids]
            removed = cumulative <= one_minus_top_p.to(cumulative.dtype)[:, None]
            # removal is a suffix of the window; the most likely token always stays (min_tokens_to_keep=1)
            kept_by_top_p = (~removed).sum(dim=-1).clamp(min=1)
            keep = torch.where(one_minus_top_p > 0, torch.minimum(keep, kept_by_top_p), keep)
        threshold = window.gather(1, (keep - 1)[:, None])
        truncates = (top_k > 0) | (table["one_minus_top_p"][action_ids] > 0)
        threshold = threshold.masked_fill(~truncates[:, None], -float("inf"))
        return out.masked_fill(out < threshold, -float("inf"))
