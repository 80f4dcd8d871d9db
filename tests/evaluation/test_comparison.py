import copy
import json
import math
import statistics

import pytest

from hf_adaptive_decoding.evaluation.comparison import (
    BEST,
    BEST_AT_K,
    FAMILY_BEST,
    ORACLE,
    Z_95,
    add_baselines,
    by_family,
    choose_baselines,
    comparisons,
    headroom,
    paired_difference,
    set_reference,
    summary_json,
)

BUDGET = 48


def make_summary(scores: dict[str, dict[int, list[float]]], levels: dict[str, str] | None = None) -> dict:
    """A summary shaped like evaluate_decoders' from per-problem Pass@k given by hand."""
    ks = sorted(next(iter(scores.values())))
    num_problems = len(next(iter(next(iter(scores.values())).values())))
    levels = levels or {}
    summary = {
        "settings": {
            "num_problems": num_problems,
            "num_samples": 8,
            "seeds": [0],
            "token_budgets": [BUDGET],
            "ks": ks,
        },
        "decoders": {
            name: {"description": name, "level": levels.get(name, "token"), "budget_aware": name in levels}
            for name in scores
        },
        "results": [],
        "per_problem": {
            name: {str(BUDGET): {str(k): values for k, values in by_k.items()}} for name, by_k in scores.items()
        },
    }
    for name, by_k in scores.items():
        for k, values in by_k.items():
            mean = sum(values) / len(values)
            summary["results"].append({"decoder": name, "token_budget": BUDGET, "k": k, "mean": mean, "ci95": 0.0})
    return summary


# On validation greedy wins at k=1 and the sampler at k=8; "hot" is never best overall.
VALIDATION = make_summary(
    {
        "greedy": {1: [1, 1, 0, 0], 8: [1, 1, 0, 0]},
        "T=1": {1: [0.5, 0.25, 0.25, 0.0], 8: [1, 1, 1, 0.5]},
        "hot": {1: [0, 0, 0.5, 0.5], 8: [0, 0, 1, 1]},
    }
)
FAMILIES = ["addition", "addition", "division", "division"]


def test_paired_difference_is_the_mean_difference_with_a_normal_interval_over_problems():
    summary = make_summary({"a": {1: [1, 0, 1, 1, 0]}, "b": {1: [0, 0, 1, 0, 0]}})
    paired = paired_difference(summary, "a", "b", BUDGET, 1)
    differences = [1, 0, 0, 1, 0]
    width = Z_95 * statistics.stdev(differences) / math.sqrt(5)
    assert paired["delta"] == pytest.approx(0.4)
    assert paired["ci95"] == pytest.approx([0.4 - width, 0.4 + width])


def test_a_single_problem_has_no_interval():
    summary = make_summary({"a": {1: [1.0]}, "b": {1: [0.0]}})
    low, high = paired_difference(summary, "a", "b", BUDGET, 1)["ci95"]
    assert math.isnan(low) and math.isnan(high)


def test_best_is_one_decoder_for_all_k_and_best_at_k_is_chosen_per_k():
    chosen = choose_baselines(VALIDATION, ["greedy", "T=1", "hot"], FAMILIES)["token_budgets"][str(BUDGET)]
    assert chosen[BEST] == "T=1"  # mean over k: greedy 0.5, T=1 0.5625, hot 0.375
    assert chosen[BEST_AT_K] == {"1": "greedy", "8": "T=1"}
    assert chosen["validation"]["greedy"] == {"1": 0.5, "8": 0.5}


def test_family_best_is_chosen_on_each_familys_problems():
    chosen = choose_baselines(VALIDATION, ["greedy", "T=1", "hot"], FAMILIES)["token_budgets"][str(BUDGET)]
    assert chosen[FAMILY_BEST] == {"addition": {"1": "greedy", "8": "greedy"}, "division": {"1": "hot", "8": "hot"}}


def test_ties_go_to_the_earlier_candidate():
    tied = make_summary({"a": {1: [1, 0]}, "b": {1: [0, 1]}})
    assert choose_baselines(tied, ["b", "a"])["token_budgets"][str(BUDGET)][BEST] == "b"
    assert choose_baselines(tied, ["a", "b"])["token_budgets"][str(BUDGET)][BEST] == "a"


def test_choosing_among_candidates_that_were_not_evaluated_says_which():
    with pytest.raises(ValueError, match=r"\['top-k'\] were not evaluated on validation"):
        choose_baselines(VALIDATION, ["greedy", "top-k"])
    with pytest.raises(ValueError, match="3 families for 4 validation problems"):
        choose_baselines(VALIDATION, ["greedy"], FAMILIES[:3])
    with pytest.raises(ValueError, match="at least one candidate"):
        choose_baselines(VALIDATION, [])


# On test, three problems: an addition, a division and a family validation never had.
TEST = make_summary(
    {
        "greedy": {1: [1.0, 0.0, 0.0], 8: [1.0, 0.0, 0.0]},
        "T=1": {1: [0.5, 0.25, 0.5], 8: [1.0, 0.5, 1.0]},
        "hot": {1: [0.0, 0.75, 0.25], 8: [0.0, 1.0, 0.5]},
        "ours": {1: [1.0, 0.75, 0.5], 8: [1.0, 1.0, 1.0]},
    },
    levels={"ours": "token"},
)
TEST_FAMILIES = ["addition", "division", "multiplication"]


@pytest.fixture
def scored():
    baselines = choose_baselines(VALIDATION, ["greedy", "T=1", "hot"], FAMILIES)
    return add_baselines(TEST, baselines, TEST_FAMILIES)


def test_baselines_are_scored_on_test_from_the_chosen_candidates(scored):
    budget = scored["per_problem"]
    assert budget[BEST][str(BUDGET)] == TEST["per_problem"]["T=1"][str(BUDGET)]
    assert budget[BEST_AT_K][str(BUDGET)] == {"1": [1.0, 0.0, 0.0], "8": [1.0, 0.5, 1.0]}
    # addition -> greedy, division -> hot, multiplication (unseen) -> BEST@k
    assert budget[FAMILY_BEST][str(BUDGET)] == {"1": [1.0, 0.75, 0.0], "8": [1.0, 1.0, 1.0]}
    assert budget[ORACLE][str(BUDGET)] == {"1": [1.0, 0.75, 0.5], "8": [1.0, 1.0, 1.0]}
    best_at_1 = next(e for e in scored["results"] if (e["decoder"], e["k"]) == (BEST_AT_K, 1))
    assert best_at_1["chosen"] == "greedy" and best_at_1["mean"] == pytest.approx(1 / 3)


def test_differences_are_measured_against_best_and_the_input_is_left_alone(scored):
    before = copy.deepcopy(TEST)
    add_baselines(TEST, choose_baselines(VALIDATION, ["greedy", "T=1", "hot"], FAMILIES), TEST_FAMILIES)
    assert TEST == before
    assert scored["settings"]["reference"] == BEST
    ours = next(e for e in scored["results"] if (e["decoder"], e["k"]) == ("ours", 1))
    assert ours["delta"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    json.dumps(scored)


def test_baselines_need_every_candidate_on_test():
    baselines = choose_baselines(VALIDATION, ["greedy", "T=1", "hot"], FAMILIES)
    partial = make_summary({"greedy": {1: [1.0], 8: [1.0]}})
    with pytest.raises(ValueError, match=r"lacks the candidates \['T=1', 'hot'\]"):
        add_baselines(partial, baselines)


def test_baselines_chosen_for_other_ks_are_refused():
    baselines = choose_baselines(make_summary({"greedy": {1: [1.0, 0.0]}}), ["greedy"])
    with pytest.raises(ValueError, match=r"chosen for ks \[1\].*also has ks \[8\]"):
        add_baselines(TEST, baselines)


def test_baselines_chosen_at_one_budget_are_scored_at_another_when_asked():
    at_96 = copy.deepcopy(TEST)
    at_96["settings"]["token_budgets"] = [96]
    for by_budget in at_96["per_problem"].values():
        by_budget["96"] = by_budget.pop(str(BUDGET))
    for entry in at_96["results"]:
        entry["token_budget"] = 96
    baselines = choose_baselines(VALIDATION, ["greedy", "T=1", "hot"], FAMILIES)
    with pytest.raises(ValueError, match=r"budgets \[48\]; the test summary also has ks \[\] and budgets \[96\]"):
        add_baselines(at_96, baselines)
    with pytest.raises(ValueError, match=r"chosen_at_token_budget=32: the baselines were chosen at .* \[48\]"):
        add_baselines(at_96, baselines, chosen_at_token_budget=32)
    summary = add_baselines(at_96, baselines, TEST_FAMILIES, chosen_at_token_budget=BUDGET)
    # The choices made at 48 tokens (BEST = T=1, BEST@1 = greedy), scored on the 96-token outcomes.
    assert summary["per_problem"][BEST]["96"] == at_96["per_problem"]["T=1"]["96"]
    assert summary["per_problem"][BEST_AT_K]["96"]["1"] == at_96["per_problem"]["greedy"]["96"]["1"]
    assert summary["settings"]["baselines_chosen_at_token_budget"] == BUDGET
    assert {row["token_budget"] for row in comparisons(summary, ["ours"])} == {96}


def test_without_families_there_is_no_family_best():
    summary = add_baselines(TEST, choose_baselines(VALIDATION, ["greedy", "T=1", "hot"]))
    assert FAMILY_BEST not in summary["decoders"] and ORACLE in summary["decoders"]


def test_comparison_rows_are_in_points_with_paired_intervals(scored):
    rows = comparisons(scored, ["ours"])
    assert {(row["reference"], row["k"]) for row in rows} == {
        (reference, k) for reference in (BEST, BEST_AT_K, FAMILY_BEST) for k in (1, 8)
    }
    row = next(r for r in rows if (r["reference"], r["k"]) == (BEST_AT_K, 1))
    expected = paired_difference(scored, "ours", BEST_AT_K, BUDGET, 1)
    assert row["delta"] == pytest.approx(100 * expected["delta"], abs=0.01)
    assert row["ci95"] == pytest.approx([100 * bound for bound in expected["ci95"]], abs=0.01)
    assert row["level"] == "token" and row["budget_aware"] is True and row["token_budget"] == BUDGET


def test_headroom_gives_the_gain_as_a_share_of_the_oracles(scored):
    rows = {row["k"]: row for row in headroom(scored, ["ours"])}
    # k=1: BEST (T=1) 41.67, oracle 75, ours 75 -> all the headroom
    assert rows[1][BEST] == pytest.approx(41.67, abs=0.01) and rows[1][ORACLE] == pytest.approx(75.0)
    assert rows[1]["share_of_headroom"]["ours"] == pytest.approx(1.0)
    assert rows[8][FAMILY_BEST] == pytest.approx(100.0)


def test_summary_json_has_the_fields_the_reproduction_reports(scored):
    summary = summary_json(scored, ["ours"])
    assert summary["num_test_problems"] == 3
    assert set(summary["comparisons"][0]) == {
        "level",
        "decoder",
        "budget_aware",
        "reference",
        "k",
        "token_budget",
        "delta",
        "ci95",
    }
    json.dumps(summary)


def test_set_reference_refuses_an_unknown_decoder(scored):
    with pytest.raises(ValueError, match="reference 'nope' is not one of the decoders"):
        set_reference(scored, "nope")


def test_by_family_averages_each_familys_problems():
    table = by_family(TEST, TEST_FAMILIES)
    assert set(table) == set(TEST_FAMILIES)
    assert table["division"]["hot"][str(BUDGET)]["8"] == 1.0 and table["addition"]["greedy"][str(BUDGET)]["1"] == 1.0
    with pytest.raises(ValueError, match="2 families for 3 problems"):
        by_family(TEST, TEST_FAMILIES[:2])


def test_summary_json_says_when_the_baselines_were_chosen_on_the_same_problems(scored):
    assert summary_json(scored, ["ours"])["baselines_in_sample"] is False  # the fixtures carry no fingerprints
    same = copy.deepcopy(TEST)
    same["settings"]["dataset_fingerprint"] = "abc"
    baselines = choose_baselines(VALIDATION, ["greedy", "T=1", "hot"])
    baselines["dataset_fingerprint"] = "abc"
    assert summary_json(add_baselines(same, baselines), ["ours"])["baselines_in_sample"] is True


def test_a_one_problem_interval_is_null_in_json():
    summary = make_summary({"a": {1: [1.0]}, "b": {1: [0.0]}})
    (row,) = comparisons(summary, ["a"], references=["b"])
    assert row["delta"] == 100.0 and row["ci95"] == [None, None]
    json.dumps(row, allow_nan=False)
