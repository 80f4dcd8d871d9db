"""Fit a [`CycleCostModel`] to this machine: time real draft-and-verify cycles of every length and plain steps."""

from __future__ import annotations

import statistics
import time

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .modeling import DraftAdapterModel
from .simulation import CycleCostModel
from .sources import Source, source_kwargs

MIN_CYCLES_PER_LENGTH = 3


def _steady_step_seconds(model: PreTrainedModel, input_ids: torch.LongTensor, max_new_tokens: int) -> float:
    """Seconds per token of plain greedy decoding, without the prefill: (t(N tokens) - t(1 token)) / (N - 1)."""
    kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "do_sample": False}
    start = time.perf_counter()
    model.generate(**kwargs, max_new_tokens=1)
    one = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(**kwargs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    full = time.perf_counter() - start
    return (full - one) / max(out.shape[1] - input_ids.shape[1] - 1, 1)


@torch.no_grad()
def calibrate_cost_model(
    model: PreTrainedModel,
    prompts: list[torch.LongTensor],
    source: Source,
    max_draft_tokens: int,
    draft_model: PreTrainedModel | None = None,
    early_exit_layer: int | None = None,
    max_new_tokens: int = 32,
    disable_tqdm: bool = False,
) -> CycleCostModel:
    """
    Time greedy speculative generation with every fixed draft length `k` in `1..max_draft_tokens` (for prompt
    lookup, every cap `k`: the lookup proposes what it finds, up to the cap), interleaved with plain generation on the
    same prompts. Each cycle is filed under the number of tokens it drafted: the median of each length seen at least
    `MIN_CYCLES_PER_LENGTH` times is its cost, and `seconds = intercept + per_token * k`, fitted by least squares to
    the cycles that drafted, prices the others. The medians are kept as measured, not smoothed: on a CPU the cost is
    not monotone in `k`, because the verify forward's matrix shapes pick different kernels (for the default model,
    drafting 4 tokens measured cheaper than drafting 2, in repeated calibrations). The first cycle of each call (it
    carries the prompt's prefill) is left out, and so is the prefill of plain generation.

    Args:
        model ([`~transformers.PreTrainedModel`]): the target.
        prompts (`list[torch.LongTensor]`): prompts of shape `(1, length)`, a handful is enough.
        source (`str`): `"assistant_model"`, `"early_exit"` or `"prompt_lookup"`.
        max_draft_tokens (`int`): the largest draft length to time.
        draft_model, early_exit_layer: the draft of `source`.
        max_new_tokens (`int`, defaults to 32): tokens per timed call.
    """
    if not prompts:
        raise ValueError("calibrate_cost_model needs at least one prompt.")
    kwargs = source_kwargs(source, max_draft_tokens, draft_model, early_exit_layer)
    lengths = list(range(1, max_draft_tokens + 1))
    progress = tqdm(total=len(prompts) * (len(lengths) + 1), desc=f"Calibrating {source}", disable=disable_tqdm)
    points: list[tuple[int, float]] = []
    plain: list[float] = []
    for index, input_ids in enumerate(prompts):
        plain.append(_steady_step_seconds(model, input_ids, max_new_tokens))
        progress.update(1)
        rotated = lengths[index % len(lengths) :] + lengths[: index % len(lengths)]  # spread drifts over all k
        for k in rotated:
            points += _timed_cycles(model, input_ids, k, max_new_tokens, kwargs)
            progress.update(1)
    progress.close()
    return _fit_cost_model(source, points, statistics.median(plain), max_draft_tokens)


def _timed_cycles(
    model: PreTrainedModel, input_ids: torch.LongTensor, max_draft_tokens: int, max_new_tokens: int, kwargs: dict
) -> list[tuple[int, float]]:
    """`(tokens drafted, seconds)` of each cycle of one greedy call that drafts `max_draft_tokens` wherever it can
    (the first cycle, which carries the prefill, left out)."""
    fixed = DraftAdapterModel.for_model(model, max_draft_tokens=max_draft_tokens, initial_stop_probability=1e-4)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        decoding_adapter=fixed,
        deterministic=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    return list(zip(out.draft_lengths[1:].tolist(), out.cycle_seconds[1:].tolist(), strict=True))


def _fit_cost_model(
    source: Source, points: list[tuple[int, float]], plain_step: float, max_draft_tokens: int
) -> CycleCostModel:
    """The line fitted to the cycles that drafted, and the table of per-length medians (the line where a length was
    seen fewer than `MIN_CYCLES_PER_LENGTH` times)."""
    drafting = [(k, s) for k, s in points if k > 0]
    if len({k for k, _ in drafting}) < 2:
        raise ValueError(
            f"Calibration saw cycles that drafted {sorted({k for k, _ in drafting})} tokens only: a line needs two "
            "lengths. Use prompts whose continuation the source can draft (for prompt lookup, prompts that repeat "
            "themselves)."
        )
    drafted = torch.tensor([float(k) for k, _ in drafting], dtype=torch.float64)
    seconds = torch.tensor([s for _, s in drafting], dtype=torch.float64)
    design = torch.stack([torch.ones_like(drafted), drafted], dim=1)
    intercept, per_token = torch.linalg.lstsq(design, seconds[:, None]).solution[:, 0].tolist()
    by_length: dict[int, list[float]] = {}
    for k, s in points:
        by_length.setdefault(k, []).append(s)
    table = []
    for k in range(max_draft_tokens + 1):
        measured = by_length.get(k, [])
        enough = len(measured) >= MIN_CYCLES_PER_LENGTH
        table.append(statistics.median(measured) if enough else intercept + per_token * k)
    return CycleCostModel(
        source=source,
        intercept=intercept,
        per_token=per_token,
        plain_step=plain_step,
        measurements=[[k, statistics.median(v), len(v)] for k, v in sorted(by_length.items())],
        seconds_by_length=table,
    )
