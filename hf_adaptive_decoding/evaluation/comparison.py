"""Static baselines chosen on validation (BEST, BEST@k, the best action of each task family), the per-problem oracle,
and paired comparisons against them on test: the numbers behind `summary.json`.

Everything here works on the summaries [`~evaluation.evaluate.evaluate_decoders`] returns, through their per-problem
Pass@k (`summary["per_problem"][decoder][budget][k]`, averaged over seeds): a baseline built from static decoders is
scored on test from those decoders' own test outcomes, which are the samples it would draw itself (random numbers are
keyed by problem and sample, not by decoder), so no generation is repeated.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
BEST, BEST_AT_K, FAMILY_BEST, ORACLE = "BEST", "BEST@k", "family-best", "oracle"
BASELINE_NAMES = (BEST, BEST_AT_K, FAMILY_BEST, ORACLE)


def half_width(values: torch.Tensor) -> float:
    """Half-width of the 95% normal interval of the mean of `values` (NaN for fewer than two values)."""
    if len(values) < 2:
        return float("nan")
    return float(Z_95 * values.std(unbiased=True) / math.sqrt(len(values)))


def per_problem(summary: dict[str, Any], decoder: str, budget: int, k: int) -> torch.Tensor:
    """Pass@k of every problem (mean over seeds) of one decoder at one token budget, as float64."""
    try:
        values = summary["per_problem"][decoder][str(budget)][str(k)]
    except KeyError:
        raise KeyError(
            f"The summary has no per-problem Pass@{k} of decoder {decoder!r} at token budget {budget}; evaluated: "
            f"{list(summary.get('per_problem', {}))}, budgets {summary['settings']['token_budgets']}, "
            f"ks {summary['settings']['ks']}."
        ) from None
    return torch.tensor(values, dtype=torch.float64)


def paired_difference(summary: dict[str, Any], decoder: str, reference: str, budget: int, k: int) -> dict[str, Any]:
    """
    `decoder` minus `reference` in Pass@k, paired by problem: `delta` (mean difference) and `ci95` (`[low, high]`,
    the normal interval over problems), both as fractions.
    """
    difference = per_problem(summary, decoder, budget, k) - per_problem(summary, reference, budget, k)
    delta, width = float(difference.mean()), half_width(difference)
    return {"delta": delta, "ci95": [delta - width, delta + width]}


def set_reference(summary: dict[str, Any], reference: str | None) -> None:
    """Write every result's `delta` and `delta_ci95` (half-width) against `reference`, in place."""
    if reference is not None and reference not in summary["decoders"]:
        raise ValueError(f"reference {reference!r} is not one of the decoders {list(summary['decoders'])}.")
    summary["settings"]["reference"] = reference
    for entry in summary["results"]:
        entry.pop("delta", None), entry.pop("delta_ci95", None)
        if reference is None:
            continue
        paired = paired_difference(summary, entry["decoder"], reference, entry["token_budget"], entry["k"])
        entry["delta"], entry["delta_ci95"] = paired["delta"], (paired["ci95"][1] - paired["ci95"][0]) / 2


def _points(value: float) -> float | None:
    """A fraction as percentage points, rounded; `None` (JSON null) for NaN, as a one-problem interval is."""
    return None if math.isnan(value) else round(100 * value, 2)


def _argmax(scores: dict[str, float]) -> str:
    """The best-scoring name; ties go to the first in order (the candidates' order), so the choice is reproducible."""
    return max(scores, key=lambda name: (scores[name], -list(scores).index(name)))


def choose_baselines(
    validation: dict[str, Any], candidates: Sequence[str], families: Sequence[str] | None = None
) -> dict[str, Any]:
    """
    Choose the static baselines on a validation summary.

    - `BEST`: the one candidate with the highest Pass@k averaged over every evaluated k (the paper's BEST: one fixed
      strategy for all parallel budgets);
    - `BEST@k`: for each k, the candidate with the highest Pass@k (what an adapter that only learns "greedy when
      B = 1, sample when B = 8" would match);
    - `family-best`: for each task family and k, the candidate with the highest Pass@k on that family's problems.

    Each is chosen separately for each token budget; ties go to the earlier candidate.

    Args:
        validation (`dict`): [`evaluate_decoders`]'s summary on the validation split.
        candidates (`Sequence[str]`): names of the static decoders to choose among (all evaluated in `validation`).
        families (`Sequence[str]`, *optional*): the task family of every validation problem, in the dataset's order.

    Returns:
        `dict` (JSON-ready): `candidates`, `ks`, `num_problems`, `num_samples`, and per token budget (a string key)
        `BEST`, `BEST@k` (`{k: name}`), `family-best` (`{family: {k: name}}`) and `validation` (each candidate's
        mean Pass@k, `{name: {k: mean}}`).
    """
    settings = validation["settings"]
    candidates = list(candidates)
    if not candidates or len(set(candidates)) != len(candidates):
        raise ValueError(f"Give at least one candidate, each once; got {candidates}.")
    missing = [name for name in candidates if name not in validation["decoders"]]
    if missing:
        raise ValueError(f"Candidates {missing} were not evaluated on validation: {list(validation['decoders'])}.")
    if families is not None and len(families) != settings["num_problems"]:
        raise ValueError(f"{len(families)} families for {settings['num_problems']} validation problems.")
    ks = list(settings["ks"])
    chosen: dict[str, Any] = {}
    for budget in settings["token_budgets"]:
        scores = {name: {k: per_problem(validation, name, budget, k) for k in ks} for name in candidates}
        means = {name: {k: float(scores[name][k].mean()) for k in ks} for name in candidates}
        entry = {
            BEST: _argmax({name: sum(means[name].values()) / len(ks) for name in candidates}),
            BEST_AT_K: {str(k): _argmax({name: means[name][k] for name in candidates}) for k in ks},
            "validation": {name: {str(k): value for k, value in means[name].items()} for name in candidates},
        }
        if families is not None:
            entry[FAMILY_BEST] = {}
            for family in sorted(set(families)):
                rows = torch.tensor([f == family for f in families])
                entry[FAMILY_BEST][family] = {
                    str(k): _argmax({name: float(scores[name][k][rows].mean()) for name in candidates}) for k in ks
                }
        chosen[str(budget)] = entry
    return {
        "candidates": candidates,
        "ks": ks,
        "dataset_fingerprint": settings.get("dataset_fingerprint"),
        "num_problems": settings["num_problems"],
        "num_samples": settings["num_samples"],
        "token_budgets": chosen,
    }


def add_baselines(
    test: dict[str, Any],
    baselines: dict[str, Any],
    families: Sequence[str] | None = None,
    reference: str | None = BEST,
    chosen_at_token_budget: int | None = None,
) -> dict[str, Any]:
    """
    Score the baselines [`choose_baselines`] chose on a test summary that evaluated every candidate, and add them to
    a copy of it as decoders: `BEST`, `BEST@k`, `family-best` (when `families`, the task family of every test problem,
    is given and the baselines have one) and `oracle` (for each problem, the best candidate on that very problem: an
    upper bound no decoder choosing among these candidates can pass). Differences are then measured against
    `reference`.

    A family of the test split that validation did not have falls back to `BEST@k` for its problems. With
    `chosen_at_token_budget`, the baselines chosen at that token budget are scored at every token budget of the test
    summary (for budgets validation did not cover, e.g. a check of adapters outside their training range: what a
    user who tuned a static decoder at one budget would run at another).
    """
    settings = test["settings"]
    candidates = baselines["candidates"]
    missing = [name for name in candidates if name not in test["decoders"]]
    if missing:
        raise ValueError(
            f"The test summary lacks the candidates {missing}: run every candidate of the baselines on test, so that "
            "BEST, BEST@k, family-best and the oracle are scored on the test problems."
        )
    validated = [int(budget) for budget in baselines["token_budgets"]]
    if chosen_at_token_budget is not None and chosen_at_token_budget not in validated:
        raise ValueError(
            f"chosen_at_token_budget={chosen_at_token_budget}: the baselines were chosen at token budgets {validated}."
        )
    missing_ks = sorted(set(settings["ks"]) - set(baselines["ks"]))
    missing_budgets = [b for b in settings["token_budgets"] if b not in validated and chosen_at_token_budget is None]
    if missing_ks or missing_budgets:
        raise ValueError(
            f"The baselines were chosen for ks {baselines['ks']} and token budgets {validated}; the test summary also "
            f"has ks {missing_ks} and budgets {missing_budgets} (pass chosen_at_token_budget to score the baselines "
            "of one validated budget at the others)."
        )
    if families is not None and len(families) != settings["num_problems"]:
        raise ValueError(f"{len(families)} families for {settings['num_problems']} test problems.")
    summary = copy.deepcopy(test)
    chosen_per_budget = baselines["token_budgets"].values()
    with_families = families is not None and all(FAMILY_BEST in chosen for chosen in chosen_per_budget)
    names = [BEST, BEST_AT_K] + ([FAMILY_BEST] if with_families else []) + [ORACLE]
    clash = [name for name in names if name in summary["decoders"]]
    if clash:
        raise ValueError(f"Decoders named {clash} clash with the baselines' names {list(BASELINE_NAMES)}.")
    descriptions = {
        BEST: "the candidate with the best mean Pass@k over all k on validation",
        BEST_AT_K: "for each k, the candidate with the best Pass@k on validation",
        FAMILY_BEST: "for each task family and k, the candidate with the best Pass@k on that family on validation",
        ORACLE: f"for each test problem, the best of the {len(candidates)} candidates on that problem (upper bound)",
    }
    for name in names:
        summary["decoders"][name] = {"description": descriptions[name], "level": "baseline", "budget_aware": False}
        summary["per_problem"][name] = {}
    for budget in settings["token_budgets"]:
        chosen = baselines["token_budgets"][str(budget if chosen_at_token_budget is None else chosen_at_token_budget)]
        for name in names:
            summary["per_problem"][name][str(budget)] = {}
        for k in settings["ks"]:
            scores = {name: per_problem(test, name, budget, k) for name in candidates}
            picks = {BEST: chosen[BEST], BEST_AT_K: chosen[BEST_AT_K][str(k)]}
            values = {name: scores[pick] for name, pick in picks.items()}
            values[ORACLE] = torch.stack(list(scores.values())).amax(dim=0)
            if with_families:
                per_family = chosen[FAMILY_BEST]
                values[FAMILY_BEST] = torch.stack(
                    [
                        scores[per_family.get(family, {}).get(str(k), picks[BEST_AT_K])][row]
                        for row, family in enumerate(families)
                    ]
                )
                picks[FAMILY_BEST] = {family: per_family[family][str(k)] for family in per_family}
            for name in names:
                summary["per_problem"][name][str(budget)][str(k)] = values[name].tolist()
                summary["results"].append(
                    {
                        "decoder": name,
                        "token_budget": budget,
                        "k": k,
                        "mean": float(values[name].mean()),
                        "ci95": half_width(values[name]),
                        **({"chosen": picks[name]} if name in picks else {}),
                    }
                )
    summary["baselines"] = baselines
    summary["settings"]["baselines_chosen_at_token_budget"] = chosen_at_token_budget
    # Chosen and scored on the same problems: the baselines' figures are in-sample, flattered by the choice.
    chosen_on = baselines.get("dataset_fingerprint")
    summary["settings"]["baselines_in_sample"] = chosen_on is not None and chosen_on == settings.get(
        "dataset_fingerprint"
    )
    set_reference(summary, reference)
    return summary


def comparisons(
    summary: dict[str, Any], decoders: Sequence[str], references: Sequence[str] = (BEST, BEST_AT_K, FAMILY_BEST)
) -> list[dict[str, Any]]:
    """
    One row per decoder, reference, token budget and k, in percentage points: `level`, `decoder`, `budget_aware`,
    `reference`, `k`, `token_budget`, `delta` and `ci95` (`[low, high]`, paired by problem). References the summary
    lacks (e.g. `family-best` without families) are skipped.
    """
    rows = []
    for decoder in decoders:
        info = summary["decoders"][decoder]
        for reference in references:
            if reference not in summary["decoders"] or reference == decoder:
                continue
            for budget in summary["settings"]["token_budgets"]:
                for k in summary["settings"]["ks"]:
                    paired = paired_difference(summary, decoder, reference, budget, k)
                    rows.append(
                        {
                            "level": info["level"],
                            "decoder": decoder,
                            "budget_aware": bool(info.get("budget_aware", False)),
                            "reference": reference,
                            "k": k,
                            "token_budget": budget,
                            "delta": _points(paired["delta"]),
                            "ci95": [_points(bound) for bound in paired["ci95"]],
                        }
                    )
    return rows


def headroom(summary: dict[str, Any], decoders: Sequence[str] = ()) -> list[dict[str, Any]]:
    """
    What there is to win over BEST, per token budget and k, in points: BEST's, `family-best`'s and the oracle's
    Pass@k, and for each of `decoders` its gain over BEST as a share of the oracle's (`null` when the oracle does not
    beat BEST).
    """
    rows = []
    for budget in summary["settings"]["token_budgets"]:
        for k in summary["settings"]["ks"]:
            best = float(per_problem(summary, BEST, budget, k).mean())
            oracle = float(per_problem(summary, ORACLE, budget, k).mean())
            row: dict[str, Any] = {"token_budget": budget, "k": k, BEST: round(100 * best, 2)}
            if FAMILY_BEST in summary["decoders"]:
                row[FAMILY_BEST] = round(100 * float(per_problem(summary, FAMILY_BEST, budget, k).mean()), 2)
            row[ORACLE] = round(100 * oracle, 2)
            row["share_of_headroom"] = {
                decoder: (
                    round((float(per_problem(summary, decoder, budget, k).mean()) - best) / (oracle - best), 3)
                    if oracle > best
                    else None
                )
                for decoder in decoders
            }
            rows.append(row)
    return rows


def summary_json(summary: dict[str, Any], decoders: Sequence[str]) -> dict[str, Any]:
    """The machine-readable summary of a comparison: `num_test_problems`, `comparisons` (see [`comparisons`]) and
    `headroom` (see [`headroom`])."""
    return {
        "num_test_problems": summary["settings"]["num_problems"],
        "baselines_in_sample": summary["settings"].get("baselines_in_sample", False),
        "num_samples": summary["settings"]["num_samples"],
        "seeds": summary["settings"]["seeds"],
        "comparisons": comparisons(summary, decoders),
        "headroom": headroom(summary, decoders),
    }


def by_family(summary: dict[str, Any], families: Sequence[str]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Mean Pass@k of every decoder on each task family's problems: `{family: {decoder: {budget: {k: mean}}}}`
    (`families`: the family of every problem, in the dataset's order)."""
    if len(families) != summary["settings"]["num_problems"]:
        raise ValueError(f"{len(families)} families for {summary['settings']['num_problems']} problems.")
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for family in sorted(set(families)):
        rows = torch.tensor([f == family for f in families])
        table[family] = {
            decoder: {
                budget: {
                    k: float(torch.tensor(values, dtype=torch.float64)[rows].mean()) for k, values in by_k.items()
                }
                for budget, by_k in by_budget.items()
            }
            for decoder, by_budget in summary["per_problem"].items()
        }
    return table
