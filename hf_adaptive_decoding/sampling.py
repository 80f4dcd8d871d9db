"""Apply each row's own decoding action to a batch of next-token logits in one batched operation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .configuration import DecodingAction

# Rows that truncate with top-p or min-p but no top-k look for their cut in the best `UNCONFINED_WINDOW` tokens
# first; measured on the default model, the top-p 0.9 nucleus at T=1.0 exceeds 256 tokens for about 4% of rows.
# Only those rows pay for a full-vocabulary sort.
UNCONFINED_WINDOW = 256


class NonFiniteLogitsError(ValueError):
    """Raised when a row of next-token logits has no valid distribution (NaN, +inf, or every entry -inf)."""


def _non_finite_error(row_max: torch.Tensor, step: int | None) -> NonFiniteLogitsError:
    bad = ~torch.isfinite(row_max)
    rows = bad.nonzero().flatten().tolist()
    where = f" at generation step {step}" if step is not None else ""
    return NonFiniteLogitsError(
        f"Next-token logits of batch row(s) {rows[:16]}{'...' if len(rows) > 16 else ''}{where} are not a valid "
        f"distribution (row max {row_max[bad][:4].tolist()}): they contain NaN or +inf, or every token is masked "
        "to -inf. Check the model's dtype (fp16 overflow), its inputs, and any logits processor that masks tokens."
    )


def check_logits_are_finite(scores: torch.Tensor, step: int | None = None) -> None:
    """
    Raise [`NonFiniteLogitsError`] naming the rows whose logits cannot be sampled from.

    A row is valid when it has no NaN, no +inf and at least one finite entry (single `-inf` entries are masks).
    One cheap reduction: `amax` is NaN if any entry is, +inf if any entry is, and -inf only if every entry is.
    """
    row_max = scores.amax(dim=-1)
    if not torch.isfinite(row_max).all():
        raise _non_finite_error(row_max, step)


class ActionTransform:
    """
    The per-row sampling transform for a fixed action space.

    `ActionTransform(actions)(scores, action_ids)` gives, for each row `i`, what transformers' warpers
    (Temperature -> TopK -> TopP -> MinP, in `generate`'s order) give for action `action_ids[i]`, and for greedy rows
    a distribution on the argmax. No Python loop over rows. Every truncation is turned into one threshold per row,
    found in a descending window of the row's best tokens (`torch.topk`), and applied in a single pass over the
    vocabulary; a full sort happens only for rows whose cut does not fall inside their window.

    Differences from transformers are at float-rounding level only: the top-p cumulative mass is summed in another
    order (a token lying within rounding error of the top-p boundary may fall on the other side), and a greedy row
    whose maximum logit is tied between tokens samples among them where `argmax` takes the first.

    Args:
        actions (`Sequence[DecodingAction]`):
            The action space; `action_ids` index into it.
    """

    def __init__(self, actions: Sequence[DecodingAction]):
        self.actions = list(actions)
        self.uses_greedy = any(not a.do_sample for a in self.actions)
        self.uses_top_p = any(a.top_p for a in self.actions)
        self.uses_min_p = any(a.min_p for a in self.actions)
        self.truncates = self.uses_greedy or any(a.top_k or a.top_p or a.min_p for a in self.actions)
        self.unconfined = any((a.top_p or a.min_p) and not a.top_k for a in self.actions)
        k_max = max((a.top_k or 0) for a in self.actions)
        self.window = max(k_max, UNCONFINED_WINDOW if self.unconfined else 0)
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._tables:
            actions = self.actions
            self._tables[device] = {
                "greedy": torch.tensor([not a.do_sample for a in actions], device=device),
                "temperature": torch.tensor([a.temperature if a.do_sample else 1.0 for a in actions], device=device),
                "top_k": torch.tensor([a.top_k or 0 for a in actions], device=device),
                # transformers compares with the Python float `1 - top_p`; compute it in double, as it does.
                "one_minus_top_p": torch.tensor([1.0 - (a.top_p or 1.0) for a in actions], device=device),
                "min_p": torch.tensor([a.min_p or 0.0 for a in actions], device=device),
            }
        return self._tables[device]

    def __call__(self, scores: torch.Tensor, action_ids: torch.LongTensor, step: int | None = None) -> torch.Tensor:
        """
        Args:
            scores (`torch.FloatTensor` of shape `(batch_size, vocab_size)`):
                Next-token logits (after any other logits processors). Not modified.
            action_ids (`torch.LongTensor` of shape `(batch_size,)`):
                Index of each row's action.
            step (`int`, *optional*):
                Generation step, only for error messages.

        Returns:
            `torch.FloatTensor` of the same shape: logits whose softmax is each row's sampling distribution, with
            filtered tokens at `-inf`.

        Raises:
            [`NonFiniteLogitsError`] if a row has NaN or +inf logits or every token masked.
        """
        table = {name: values[action_ids] for name, values in self._table(scores.device).items()}
        row_max = scores.amax(dim=-1)
        out = scores / table["temperature"].to(scores.dtype)[:, None]
        if not self.truncates:
            check_logits_are_finite(scores, step)
            return out
        # Division by a positive number is monotone, so the scaled row max is the max of the scaled row.
        out_max = row_max / table["temperature"].to(scores.dtype)
        threshold, undetermined = self._thresholds(out, out_max, table)
        # One host sync per step, for both questions: any invalid row? any row whose cut lies beyond its window?
        invalid, needs_sort = torch.stack([~torch.isfinite(row_max).all(), undetermined.any()]).tolist()
        if invalid:
            raise _non_finite_error(row_max, step)
        if needs_sort:
            rows = undetermined.nonzero().flatten()
            sub_table = {name: values[rows] for name, values in table.items()}
            threshold[rows] = self._thresholds(out[rows], out_max[rows], sub_table, full_sort=True)[0]
        # torch.where with a 0-d fill value is the cheapest exact way to do this on CPU (masked_fill copies first).
        return torch.where(out < threshold[:, None], out.new_tensor(-float("inf")), out)

    def _thresholds(
        self, out: torch.Tensor, out_max: torch.Tensor, table: dict, full_sort: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Each row's smallest kept logit (tokens below it are filtered), and whether the row's cut could not be
        decided within its window. Kept tokens always form a prefix of the row's descending order: top-k keeps
        `k`, top-p the tokens before the cumulative mass reaches `top_p`, min-p those with `p >= min_p * p_max`.
        """
        no_threshold = torch.full_like(out_max, -float("inf"))
        if self.window == 0:  # greedy is the only truncation: no window needed
            return torch.where(table["greedy"], out_max, no_threshold), torch.zeros_like(table["greedy"])
        vocab_size = out.shape[-1]
        if full_sort or self.window >= vocab_size:
            window = torch.sort(out, dim=-1, descending=True).values
        else:
            window = torch.topk(out, self.window, dim=-1).values
        width = window.shape[-1]
        complete = width == vocab_size
        top_k = table["top_k"]
        confined = (top_k > 0) | complete  # the row's whole distribution is inside its window
        keep = torch.where(top_k > 0, top_k.clamp(max=width), width)
        position = torch.arange(width, device=out.device)
        no_cut = torch.zeros_like(confined)  # whether a cut was found inside the window
        if self.uses_top_p or self.uses_min_p:
            window = window.masked_fill(position >= keep[:, None], -float("inf"))
            exp = torch.exp(window - out_max[:, None])
        if self.uses_top_p:
            # transformers: remove tokens whose ascending cumulative probability is <= 1 - top_p. With p in
            # descending order, the ascending cumulative mass at position j is 1 - (mass strictly before j).
            total = exp.sum(dim=-1)
            if self.unconfined and not complete:
                full_total = torch.exp(out - out_max[:, None]).sum(dim=-1)
                total = torch.where(confined, total, full_total)
            probs = (exp / total[:, None]).double()
            ascending_mass = (1.0 - (probs.cumsum(dim=-1) - probs)).float()
            one_minus_top_p = table["one_minus_top_p"]
            removed = ascending_mass <= one_minus_top_p.to(ascending_mass.dtype)[:, None]
            kept = (~removed).sum(dim=-1).clamp(min=1)  # the most likely token always stays
            has_top_p = one_minus_top_p > 0
            keep = torch.where(has_top_p, torch.minimum(keep, kept), keep)
            no_cut |= has_top_p & (kept < width)
        if self.uses_min_p:
            # p_i >= min_p * p_max  <=>  exp(x_i - x_max) >= min_p (the normaliser cancels)
            min_p = table["min_p"]
            kept = (exp >= min_p.to(exp.dtype)[:, None]).sum(dim=-1).clamp(min=1)
            has_min_p = min_p > 0
            keep = torch.where(has_min_p, torch.minimum(keep, kept), keep)
            no_cut |= has_min_p & (kept < width)
        threshold = window.gather(1, (keep - 1)[:, None]).squeeze(1)
        truncating = (top_k > 0) | (table["one_minus_top_p"] > 0) | (table["min_p"] > 0)
        threshold = torch.where(truncating, threshold, no_threshold)
        threshold = torch.where(table["greedy"], out_max, threshold)
        undetermined = truncating & ~table["greedy"] & ~confined & ~no_cut
        return threshold, undetermined
