"""Apply each row's own decoding action to a batch of next-token logits in one batched operation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapters.configuration import DecodingAction

# Rows that truncate with top-p or min-p but no top-k look for their cut in the best `UNCONFINED_WINDOW` tokens
# first; measured on the default model, the top-p 0.9 nucleus at T=1.0 exceeds 256 tokens for about 4% of rows.
# Only those rows pay for a full-vocabulary sort.
UNCONFINED_WINDOW = 256

# Greedy rows find their first argmax from the maxima of chunks of `ARGMAX_CHUNK` consecutive tokens, a reduction as
# fast as the plain row max (which every call needs for its validity check), then one argmax within the first chunk
# that holds the row max: 4x cheaper than `argmax` over the vocabulary on CPU.
ARGMAX_CHUNK = 256

# In a batch that mixes truncating rows with greedy or temperature rows, the truncating rows are gathered and
# windowed on their own when they are at most this fraction of the batch (on CPU; see `ActionTransform.by_index`).
GATHER_BELOW = 0.6


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


def _chunk_maxima(scores: torch.Tensor) -> torch.Tensor:
    """The max of each run of `ARGMAX_CHUNK` consecutive tokens of each row (the last run may be shorter)."""
    batch_size, vocab_size = scores.shape
    full = vocab_size // ARGMAX_CHUNK * ARGMAX_CHUNK
    pieces = []
    if full:
        pieces.append(scores[:, :full].reshape(batch_size, -1, ARGMAX_CHUNK).amax(dim=-1))
    if full < vocab_size:
        pieces.append(scores[:, full:].amax(dim=-1, keepdim=True))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


def _first_argmax(scores: torch.Tensor, row_max: torch.Tensor, chunk_max: torch.Tensor) -> torch.LongTensor:
    """
    `scores.argmax(dim=-1, keepdim=True)` (the first maximal index) from the row and chunk maxima: the first chunk
    whose max is the row max holds it. Rows with NaN get some index; they are invalid anyway.
    """
    chunk = (chunk_max == row_max[:, None]).to(torch.uint8).argmax(dim=-1, keepdim=True)
    offsets = torch.arange(ARGMAX_CHUNK, device=scores.device)
    # The last chunk may be short: its index range is clamped to the last token, whose repeats come after it.
    index = (chunk * ARGMAX_CHUNK + offsets).clamp_(max=scores.shape[-1] - 1)
    return index.gather(1, scores.gather(1, index).argmax(dim=-1, keepdim=True))


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
    vocabulary; a full sort happens only for rows whose cut does not fall inside their window. Greedy and
    temperature rows need no window: an action set without top-k, top-p or min-p costs one division by each row's
    temperature plus the greedy rows' argmax, and in a mixed batch on CPU only the truncating rows are windowed when
    they are few (see `GATHER_BELOW`).

    Ties are cut as transformers cuts them: top-k and min-p keep every token tied with the boundary, top-p cuts by
    position in the sorted order (which of several exactly tied tokens survives depends on sort order, as in
    transformers), greedy keeps the first argmax. The one remaining difference is float rounding: for top-p without
    top-k the cumulative mass is summed in another order than transformers' full sort, so a token within rounding
    error of the nucleus boundary can fall on the other side. Half-precision scores are divided in float32 like
    transformers does, but top-p then sums in higher precision than transformers' half-precision warpers.

    Args:
        actions (`Sequence[DecodingAction]`):
            The action space; `action_ids` index into it.
    """

    def __init__(self, actions: Sequence[DecodingAction]):
        self.actions = list(actions)
        if not self.actions or not all(isinstance(a, DecodingAction) for a in self.actions):
            raise ValueError(f"ActionTransform needs a non-empty list of DecodingAction, got {actions!r}.")
        self.uses_greedy = any(not a.do_sample for a in self.actions)
        self.uses_top_p = any(a.top_p for a in self.actions)
        self.uses_min_p = any(a.min_p for a in self.actions)
        # Greedy and temperature-only sets need no window: one division, and greedy rows cut at their argmax.
        self.windowed = any(a.top_k or a.top_p or a.min_p for a in self.actions)
        self.truncates = self.uses_greedy or self.windowed
        self.unconfined = any((a.top_p or a.min_p) and not a.top_k for a in self.actions)
        k_max = max((a.top_k or 0) for a in self.actions)
        self.window = max(k_max, UNCONFINED_WINDOW if self.unconfined else 0)
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._divisors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._tables:
            actions = self.actions
            self._tables[device] = {
                "greedy": torch.tensor([not a.do_sample for a in actions], device=device),
                "windowed": torch.tensor([bool(a.top_k or a.top_p or a.min_p) for a in actions], device=device),
                "top_k": torch.tensor([a.top_k or 0 for a in actions], device=device),
                # transformers compares with the Python float `1 - top_p`; compute it in double, as it does.
                "one_minus_top_p": torch.tensor([1.0 - (a.top_p or 1.0) for a in actions], device=device),
                "min_p": torch.tensor([a.min_p or 0.0 for a in actions], device=device),
            }
        return self._tables[device]

    def _temperatures(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """
        Each action's temperature (1 for greedy) in the dtype the division runs in: the scores' own, or float32 for
        half precision. Rounded once from the Python float, as transformers' division by a Python scalar rounds it.
        """
        key = (device, dtype)
        if key not in self._divisors:
            compute_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            values = [a.temperature if a.do_sample else 1.0 for a in self.actions]
            self._divisors[key] = torch.tensor(values, dtype=compute_dtype, device=device)
        return self._divisors[key]

    def _scale(self, scores: torch.Tensor, action_ids: torch.LongTensor) -> torch.Tensor:
        """Each row divided by its action's temperature (a new tensor; greedy rows are divided by 1)."""
        temperature = self._temperatures(scores.device, scores.dtype)[action_ids][:, None]
        if scores.dtype in (torch.float16, torch.bfloat16):  # as transformers: divide in float32, round once
            return (scores / temperature).to(scores.dtype)  # half / float32 tensor promotes to float32
        return scores / temperature

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
        if self.uses_greedy:
            chunk_max = _chunk_maxima(scores)
            row_max = chunk_max.amax(dim=-1)
            argmax = _first_argmax(scores, row_max, chunk_max)
        else:
            row_max = scores.amax(dim=-1)
        out = self._scale(scores, action_ids)
        if not self.windowed:  # greedy and temperature rows only: no window, no sort; the check is the one host sync
            if self.uses_greedy:
                greedy = self._table(scores.device)["greedy"][action_ids]
                self._keep_only_argmax(out, scores, greedy, argmax, fill=True)
            if not torch.isfinite(row_max).all():
                raise _non_finite_error(row_max, step)
            return out
        table = {name: values[action_ids] for name, values in self._table(scores.device).items()}
        greedy = table["greedy"]
        # On CPU, when few rows truncate, only they go through the window: greedy and temperature rows are done.
        rows = table["windowed"].nonzero().squeeze(1) if self._by_index(scores) else None
        if rows is not None and rows.numel() > GATHER_BELOW * scores.shape[0]:
            rows = None
        if rows is None:
            scaled = out
            out, undetermined = self._truncate(scaled, table)
        else:
            table = {name: values[rows] for name, values in table.items()}
            scaled = out[rows]  # a copy: `out` is modified below, the full sort needs these rows as they were
            undetermined = torch.zeros_like(rows, dtype=torch.bool)
            if rows.numel():
                truncated, undetermined = self._truncate(scaled, table)
                out[rows] = truncated
        if self.uses_greedy:  # greedy rows are all -inf when truncated (their threshold is +inf)
            self._keep_only_argmax(out, scores, greedy, argmax, fill=rows is not None)
        # One host sync per step, for both questions: any invalid row? any row whose cut lies beyond its window?
        invalid, needs_sort = torch.stack([~torch.isfinite(row_max).all(), undetermined.any()]).tolist()
        if invalid:
            raise _non_finite_error(row_max, step)
        if needs_sort:
            redo = undetermined.nonzero().flatten()
            sub_table = {name: values[redo] for name, values in table.items()}
            out[redo if rows is None else rows[redo]] = self._truncate(scaled[redo], sub_table, full_sort=True)[0]
        return out

    def _truncate(self, out: torch.Tensor, table: dict, full_sort: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Apply each row's truncation to the (temperature-scaled) logits `out`, and say which rows could not be
        decided within their window (their result is then wrong and must be recomputed with `full_sort=True`).

        Kept tokens are a prefix of the row's descending order, cut as transformers cuts: top-k and min-p by value
        (tokens tied with the boundary all stay), top-p by position in the sorted order. Greedy rows come back all
        `-inf`: the caller keeps their argmax.
        """
        minus_inf = out.new_tensor(-float("inf"))
        greedy, top_k, min_p = table["greedy"], table["top_k"], table["min_p"]
        has_top_p = table["one_minus_top_p"] > 0
        truncating = (top_k > 0) | has_top_p | (min_p > 0)
        undetermined = torch.zeros_like(greedy)
        # greedy rows: remove every token, the caller puts the argmax back
        threshold = torch.where(greedy, float("inf"), -float("inf")).to(out.dtype)
        vocab_size = out.shape[-1]
        if self.window > 0:
            complete = full_sort or self.window + 1 >= vocab_size
            if complete:
                window, indices = torch.sort(out, dim=-1, descending=True)
            else:  # one extra slot, to see whether a tie at a boundary continues past the window
                window, indices = torch.topk(out, self.window + 1, dim=-1)
            width = window.shape[-1]
            position = torch.arange(width, device=out.device)
            last = window[:, -1:]
            # top-k keeps every token tied with the k-th (transformers compares values)
            kth = window.gather(1, (top_k.clamp(min=1, max=width) - 1)[:, None])
            kth = torch.where(top_k[:, None] > 0, kth, minus_inf)
            window = torch.where(window < kth, minus_inf, window)
            keep = (window > -float("inf")).sum(dim=-1)
            # A top-k row is decided when its whole top-k set (ties included) is inside the window: its top-p and
            # min-p cuts then are too. A row without top-k is decided when its top-p or min-p cut is inside.
            top_k_inside = complete | (last < kth).squeeze(1)
            cut_inside = torch.zeros_like(greedy)
            if self.uses_top_p or self.uses_min_p:
                exp = torch.exp(window - window[:, :1])
            if self.uses_top_p:
                keep_p = self._top_p_keep(out, window, exp, table, top_k > 0, complete)
                keep = torch.where(has_top_p, torch.minimum(keep, keep_p), keep)
                # transformers removes by position: tokens tied with the boundary but after it go too
                positional = has_top_p & (keep == keep_p)
                boundary_p = window.gather(1, (keep_p - 1)[:, None])
                cut_inside |= has_top_p & (keep_p < width) & (complete | (last < boundary_p).squeeze(1))
            if self.uses_min_p:
                # p_i >= min_p * p_max  <=>  exp(x_i - x_max) >= min_p: the normaliser cancels
                keep_m = (exp >= min_p.to(exp.dtype)[:, None]).sum(dim=-1).clamp(min=1)
                keep = torch.where(min_p > 0, torch.minimum(keep, keep_m), keep)
                cut_inside |= (min_p > 0) & (keep_m < width)
            decided = torch.where(top_k > 0, top_k_inside, cut_inside)
            boundary = window.gather(1, (keep.clamp(min=1) - 1)[:, None]).squeeze(1)
            threshold = torch.where(truncating & ~greedy, boundary, threshold)
            undetermined = truncating & ~greedy & ~decided
        result = torch.where(out < threshold[:, None], minus_inf, out)
        if self.window > 0 and self.uses_top_p:
            at_window = result.gather(1, indices)
            beyond_cut = positional[:, None] & (position >= keep[:, None])
            result.scatter_(1, indices, torch.where(beyond_cut, minus_inf, at_window))
        return result, undetermined

    # Whether rows are picked by index: on CPU, `nonzero` finds the greedy rows (only they are filled) and the rows
    # that truncate (only they are windowed, when few); elsewhere `nonzero` would be a host sync, so row masks go
    # over the whole batch. `None`: by device; tests set it to try both ways.
    by_index: bool | None = None

    def _by_index(self, scores: torch.Tensor) -> bool:
        return scores.device.type == "cpu" if self.by_index is None else self.by_index

    def _keep_only_argmax(
        self, out: torch.Tensor, scores: torch.Tensor, greedy: torch.Tensor, argmax: torch.LongTensor, fill: bool
    ) -> None:
        """
        In place, cut the `greedy` rows of `out` to their first argmax `argmax`, which keeps its value in `scores`
        (greedy rows are divided by 1, so it is theirs in `out` too), and `-inf` everywhere else. `fill=False` when
        those rows of `out` are `-inf` already.
        """
        kept = torch.where(greedy[:, None], scores.gather(1, argmax), out.gather(1, argmax))
        if fill:
            if self._by_index(out):
                out.index_fill_(0, greedy.nonzero().squeeze(1), -float("inf"))
            else:
                out.masked_fill_(greedy[:, None], -float("inf"))
        out.scatter_(1, argmax, kept)

    def _top_p_keep(self, out, window, exp, table, has_top_k, complete) -> torch.Tensor:
        """How many of the window's tokens top-p keeps (the window's width when its cut lies beyond it)."""
        total = exp.sum(dim=-1)
        outside = torch.zeros_like(total, dtype=torch.float64)
        if self.unconfined and not complete:  # rows without top-k: the normaliser runs over the whole vocabulary
            full_total = torch.exp(out - window[:, :1]).sum(dim=-1)
            outside = torch.where(has_top_k, outside, ((full_total - total) / full_total).double())
            total = torch.where(has_top_k, total, full_total)
        probs = (exp / total[:, None]).double()
        # transformers sums the sorted probabilities in ascending order and removes the tokens whose cumulative
        # mass is <= 1 - top_p; the same sum here runs from the window's end, plus the mass beyond the window.
        ascending = (probs.flip(-1).cumsum(-1).flip(-1) + outside[:, None]).float()
        removed = ascending <= table["one_minus_top_p"].to(ascending.dtype)[:, None]
        return (~removed).sum(dim=-1).clamp(min=1)  # the most likely token always stays
