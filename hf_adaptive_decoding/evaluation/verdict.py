"""Did the adapter help? A trained adapter against every static action of its own action space, on problems not used
to choose its checkpoint, paired by problem with 95% intervals: what a training recipe prints last."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapters.modeling import DecodingAdapterModel
from .comparison import BEST, BEST_AT_K, add_baselines, choose_baselines, comparisons, per_problem
from .evaluate import Decoder, evaluate_decoders

ADAPTER = "adapter"


def adapter_verdict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter: DecodingAdapterModel,
    dataset: Dataset,
    reward_funcs: Callable | Sequence[Callable],
    token_budget: int,
    ks: Sequence[int] = (1,),
    num_samples: int | None = None,
    seed: int = 0,
    instruction: str | None = None,
    system_prompt: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    disable_tqdm: bool = False,
) -> dict[str, Any]:
    """
    Evaluate `adapter` (its most likely action at every decision, as validation during training does) and each
    static action of its action space on `dataset`, and compare them pair by pair.

    The best static action is chosen on these same problems (`BEST`: the best over all `ks`; `BEST@k`: the best at
    each k), which favours it: a gain over it is a conservative figure. Give problems the checkpoint was not chosen
    on, or the adapter's figure is the optimistic one.

    Args:
        model, tokenizer: the frozen LM and its tokenizer.
        adapter ([`DecodingAdapterModel`]): the trained adapter.
        dataset (`datasets.Dataset`): problems with the columns the reward functions read.
        reward_funcs: as for [`evaluate_decoders`].
        token_budget (`int`): max new tokens.
        ks (`Sequence[int]`): Pass@k for these k (a budget-aware sequence-level adapter is told `B = k`).
        num_samples (`int`, *optional*): samples per problem; default `max(ks)`.
        seed (`int`): keys the random numbers, the same for every decoder.
        instruction, system_prompt: as for [`evaluate_decoders`].
        cache_dir (*optional*): resume an interrupted comparison from here.
        disable_tqdm (`bool`): no progress bar.

    Returns:
        `dict` (JSON-ready): `num_problems`, `num_samples`, `token_budget`, `best` (`{"BEST": name, "BEST@k": {k:
        name}}`), `pass_at_k` (`{decoder: {k: points}}`, the adapter, the static actions, BEST and BEST@k) and
        `comparisons` (the adapter minus greedy, when greedy is an action, minus BEST and minus BEST@k: rows as in
        `summary.json`, in percentage points).
    """
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {list(ks)!r}.")
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise ValueError(f"token_budget must be a positive int, got {token_budget!r}.")
    ks = sorted(set(ks))
    statics = [Decoder.static(action.name, action) for action in adapter.decoding_config.actions]
    decoders = [Decoder.adapter(ADAPTER, adapter), *statics]
    summary = evaluate_decoders(
        model,
        tokenizer,
        decoders,
        dataset,
        reward_funcs,
        token_budgets=[token_budget],
        ks=ks,
        num_samples=num_samples or max(ks),
        seeds=[seed],
        instruction=instruction,
        system_prompt=system_prompt,
        cache_dir=cache_dir,
        disable_tqdm=disable_tqdm,
    )
    names = [decoder.name for decoder in statics]
    baselines = choose_baselines(summary, names)
    summary = add_baselines(summary, baselines, reference=None)
    references = (["greedy"] if "greedy" in names else []) + [BEST, BEST_AT_K]
    chosen = baselines["token_budgets"][str(token_budget)]
    shown = [ADAPTER, *names, BEST, BEST_AT_K]
    return {
        "num_problems": summary["settings"]["num_problems"],
        "num_samples": summary["settings"]["num_samples"],
        "token_budget": token_budget,
        "level": adapter.level,
        "budget_aware": decoders[0].uses_budget,
        "best": {BEST: chosen[BEST], BEST_AT_K: chosen[BEST_AT_K]},
        "pass_at_k": {
            name: {str(k): round(100 * float(per_problem(summary, name, token_budget, k).mean()), 2) for k in ks}
            for name in shown
        },
        "comparisons": comparisons(summary, [ADAPTER], references),
    }


def _interval(row: dict[str, Any]) -> str:
    low, high = row["ci95"]
    if low is None:
        return f"{row['delta']:+.1f}"
    return f"{row['delta']:+.1f} [{low:+.1f}, {high:+.1f}]"


def _reading(row: dict[str, Any]) -> str:
    low, high = row["ci95"]
    if low is not None and low > 0:
        return "better"
    if high is not None and high < 0:
        return "worse"
    return "no difference resolved"


def render_verdict(verdict: dict[str, Any]) -> str:
    """The comparison as text: a markdown table of Pass@k and paired differences, and one line per reference saying
    whether the adapter is better, worse, or not told apart (its interval contains zero)."""
    ks = list(next(iter(verdict["pass_at_k"].values())))
    best, best_at_k = verdict["best"][BEST], verdict["best"][BEST_AT_K]
    lines = [
        f"Did the adapter help? {verdict['num_problems']} problems not used to choose its checkpoint, "
        f"{verdict['num_samples']} sample(s) each, token budget {verdict['token_budget']}; Pass@k in %, differences "
        "paired by problem with 95% intervals. The best static actions are chosen on these same problems (which "
        "favours them).",
        "",
        "| Decoder | " + " | ".join(f"Pass@{k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for name, scores in verdict["pass_at_k"].items():
        label = {BEST: f"BEST ({best})", BEST_AT_K: "BEST@k (" + ", ".join(best_at_k.values()) + ")"}.get(name, name)
        lines.append(f"| {label} | " + " | ".join(f"{scores[k]:.1f}" for k in ks) + " |")
    lines.append("")
    for row in verdict["comparisons"]:
        lines.append(f"adapter - {row['reference']} at Pass@{row['k']}: {_interval(row)} points: {_reading(row)}")
    return "\n".join(lines)
