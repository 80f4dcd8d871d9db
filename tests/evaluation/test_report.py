import copy

import pytest

from hf_adaptive_decoding.evaluation.report import family_table, plot_evaluation, results_table

PNG = b"\x89PNG\r\n\x1a\n"


def _entry(decoder, budget, k, mean, ci95, delta=None, delta_ci95=None):
    entry = {"decoder": decoder, "token_budget": budget, "k": k, "mean": mean, "ci95": ci95, "seed_means": [mean]}
    if delta is not None:
        entry.update(delta=delta, delta_ci95=delta_ci95)
    return entry


def make_summary():
    """A hand-made `evaluate_decoders` summary: three decoders, two token budgets, Pass@1 and Pass@4."""
    results = [
        _entry("BEST", 32, 1, 0.30, 0.05, 0.0, 0.0),
        _entry("BEST", 32, 4, 0.50, 0.04, 0.0, 0.0),
        _entry("BEST", 64, 1, 0.4567, 0.0321, 0.0, 0.0),
        _entry("BEST", 64, 4, 0.6, 0.03, 0.0, 0.0),
        _entry("ours", 32, 1, 0.35, 0.05, 0.05, 0.02),
        _entry("ours", 32, 4, 0.55, 0.04, 0.05, 0.01),
        _entry("ours", 64, 1, 0.5, 0.025, 0.0433, 0.011),
        _entry("ours", 64, 4, 0.7, 0.02, 0.1, 0.015),
        _entry("EDT", 32, 1, 0.25, 0.05, -0.05, 0.03),
        _entry("EDT", 32, 4, 0.45, 0.04, -0.05, 0.03),
        _entry("EDT", 64, 1, 0.4006, 0.04, -0.0561, 0.02),
        _entry("EDT", 64, 4, 0.6, 0.02, 0.0, 0.004),
    ]
    return {
        "settings": {"token_budgets": [32, 64], "ks": [1, 4], "reference": "BEST", "num_problems": 10},
        "decoders": {
            "BEST": {"description": "static T=0.75", "level": "token"},
            "ours": {"description": "sequence-level adapter", "level": "sequence"},
            "EDT": {"description": "EDT T0=1 N=0.8 theta=1", "level": "token"},
        },
        "results": results,
        "lengths": {name: {"32": [3, 10, 32], "64": [5, 40, 64, 12]} for name in ("BEST", "ours", "EDT")},
        "token_entropy": {
            "BEST": {"action_names": ["T=0.75"], "entropy": [0.1, 0.5, 2.0], "action": [0, 0, 0]},
            "EDT": {"action_names": ["greedy", "T=1"], "entropy": [0.0, 0.3, 1.2, 2.5], "action": [0, 1, 1, 0]},
        },
    }


def test_results_table_of_the_largest_budget_with_deltas():
    assert results_table(make_summary()) == "\n".join(
        [
            "| Metric | BEST | ours | EDT |",
            "|---|---:|---:|---:|",
            "| Pass@1 | 45.7 ± 3.2 | 50.0 ± 2.5 | 40.1 ± 4.0 |",
            "| Δ vs BEST |  | +4.3 ± 1.1 | -5.6 ± 2.0 |",
            "| Pass@4 | 60.0 ± 3.0 | 70.0 ± 2.0 | 60.0 ± 2.0 |",
            "| Δ vs BEST |  | +10.0 ± 1.5 | +0.0 ± 0.4 |",
        ]
    )


def test_results_table_columns_budget_and_ks():
    table = results_table(make_summary(), columns=["EDT", "BEST"], token_budget=32, ks=[4])
    assert table == "\n".join(
        [
            "| Metric | EDT | BEST |",
            "|---|---:|---:|",
            "| Pass@4 | 45.0 ± 4.0 | 50.0 ± 4.0 |",
            "| Δ vs BEST | -5.0 ± 3.0 |  |",
        ]
    )


def test_results_table_without_a_reference_has_no_delta_rows():
    summary = make_summary()
    summary["settings"]["reference"] = None
    for entry in summary["results"]:
        entry.pop("delta"), entry.pop("delta_ci95")
    assert results_table(summary, columns=["ours"]) == "\n".join(
        ["| Metric | ours |", "|---|---:|", "| Pass@1 | 50.0 ± 2.5 |", "| Pass@4 | 70.0 ± 2.0 |"]
    )


def test_results_table_errors():
    with pytest.raises(ValueError, match=r"Unknown decoders \['nope'\]; evaluated: \['BEST', 'ours', 'EDT'\]"):
        results_table(make_summary(), columns=["ours", "nope"])
    with pytest.raises(KeyError, match="token budget 48"):
        results_table(make_summary(), token_budget=48)
    with pytest.raises(KeyError, match="k=2"):
        results_table(make_summary(), ks=[2])


def test_results_table_leaves_the_summary_untouched():
    summary = make_summary()
    before = copy.deepcopy(summary)
    results_table(summary)
    assert summary == before


def test_plot_evaluation_writes_the_three_figures(tmp_path):
    folder = tmp_path / "plots"
    written = plot_evaluation(make_summary(), folder)
    names = ["accuracy_vs_budget.png", "generation_lengths.png", "token_entropy_by_action.png"]
    assert written == [folder / name for name in names]
    for path in written:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


def test_plot_evaluation_without_token_level_decoders_or_a_second_budget(tmp_path):
    summary = make_summary()
    summary["token_entropy"] = {}
    summary["settings"]["token_budgets"] = [64]
    written = plot_evaluation(summary, tmp_path)
    assert [path.name for path in written] == ["accuracy_vs_budget.png", "generation_lengths.png"]
    assert not (tmp_path / "token_entropy_by_action.png").exists()
    assert all(path.read_bytes()[:8] == PNG for path in written)


def test_family_table_has_a_row_per_family_with_the_best_in_bold():
    table = {
        "addition": {"greedy": {"48": {"1": 0.5}}, "T1": {"48": {"1": 0.25}}},
        "division": {"greedy": {"48": {"1": 0.1}}, "T1": {"48": {"1": 0.2}}},
    }
    lines = family_table(table, 48, 1).splitlines()
    assert lines[0] == "| Family | greedy | T1 |"
    assert lines[2] == "| addition | **50.0** | 25.0 |" and lines[3] == "| division | 10.0 | **20.0** |"
