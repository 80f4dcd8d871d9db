"""Tables and plots of an [`evaluate_decoders`] summary: Pass@k tables shaped like the paper's Tables 1 and 5,
accuracy against budget, generation lengths (Figure 4) and token entropy by chosen action (Figure 3)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _entry(summary: dict[str, Any], decoder: str, budget: int, k: int) -> dict[str, Any]:
    for entry in summary["results"]:
        if (entry["decoder"], entry["token_budget"], entry["k"]) == (decoder, budget, k):
            return entry
    raise KeyError(f"No result for decoder {decoder!r}, token budget {budget}, k={k}.")


def results_table(
    summary: dict[str, Any],
    columns: Sequence[str] | None = None,
    token_budget: int | None = None,
    ks: Sequence[int] | None = None,
) -> str:
    """
    A markdown table of Pass@k (percent, mean +- 95% CI over problems) with one column per decoder and, under each
    metric, the paired difference to the reference decoder (the summary's `reference`, e.g. BEST).

    Args:
        summary (`dict`): what [`evaluate_decoders`] returned.
        columns (`Sequence[str]`, *optional*): decoders to show, in order (default: all).
        token_budget (`int`, *optional*): which token budget (default: the largest evaluated).
        ks (`Sequence[int]`, *optional*): which Pass@k rows (default: all evaluated).
    """
    settings = summary["settings"]
    columns = list(columns or summary["decoders"])
    unknown = [name for name in columns if name not in summary["decoders"]]
    if unknown:
        raise ValueError(f"Unknown decoders {unknown}; evaluated: {list(summary['decoders'])}.")
    budget = token_budget if token_budget is not None else max(settings["token_budgets"])
    reference = settings.get("reference")
    lines = ["| Metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for k in ks or settings["ks"]:
        cells = [_entry(summary, name, budget, k) for name in columns]
        lines.append(f"| Pass@{k} | " + " | ".join(f"{100 * c['mean']:.1f} ± {100 * c['ci95']:.1f}" for c in cells))
        if reference is not None:
            deltas = [
                "" if name == reference else f"{100 * c['delta']:+.1f} ± {100 * c['delta_ci95']:.1f}"
                for name, c in zip(columns, cells, strict=True)
            ]
            lines.append(f"| Δ vs {reference} | " + " | ".join(deltas) + " |")
    lines[2:] = [line if line.endswith("|") else line + " |" for line in lines[2:]]
    return "\n".join(lines)


def family_table(table: dict[str, dict[str, dict[str, dict[str, float]]]], token_budget: int, k: int) -> str:
    """A markdown table of Pass@k (percent) with one row per task family and one column per decoder, from
    [`~evaluation.comparison.by_family`]; the best decoder of each row is in bold."""
    decoders = list(next(iter(table.values())))
    lines = ["| Family | " + " | ".join(decoders) + " |", "|---|" + "---:|" * len(decoders)]
    for family, scores in table.items():
        values = [100 * scores[name][str(token_budget)][str(k)] for name in decoders]
        cells = [f"**{v:.1f}**" if v == max(values) else f"{v:.1f}" for v in values]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MARKERS = "osD^vP*Xh<>p"


def _errorbar(
    axis, xs: Sequence[int], points: list[dict[str, Any]], label: str, index: int, count: int, log_x: bool
) -> None:
    """One decoder's means with 95% intervals; decoders are shifted apart a little along x so the bars stay legible."""
    shift = 0.025 * (index - (count - 1) / 2)
    shifted = [x * 2**shift if log_x else x + shift * (max(xs) - min(xs) or 1) for x in xs]
    means, errors = [100 * p["mean"] for p in points], [100 * p["ci95"] for p in points]
    import matplotlib

    # tab20 holds 10 hues in dark/light pairs: the 10 dark ones first, then the light ones.
    color = matplotlib.colormaps["tab20"]((2 * index + index // 10) % 20)
    axis.errorbar(
        shifted, means, yerr=errors, marker=MARKERS[index % len(MARKERS)], color=color, capsize=2, label=label
    )


def plot_evaluation(summary: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """Write `accuracy_vs_budget.png`, `generation_lengths.png` and `token_entropy_by_action.png` (the last when a
    token-level decoder was evaluated). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings, names = summary["settings"], list(summary["decoders"])
    budgets, ks = settings["token_budgets"], settings["ks"]
    main_budget = max(budgets)
    written = []

    panels = 2 if len(budgets) > 1 else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    for index, name in enumerate(names):
        points = [_entry(summary, name, main_budget, k) for k in ks]
        _errorbar(axes[0][0], ks, points, name, index, len(names), log_x=True)
        if panels == 2:
            points = [_entry(summary, name, b, ks[0]) for b in budgets]
            _errorbar(axes[0][1], budgets, points, name, index, len(names), log_x=False)
    axes[0][0].set_xscale("log", base=2)
    axes[0][0].set_xticks(ks, [str(k) for k in ks])
    axes[0][0].set(xlabel="parallel budget k (Pass@k)", ylabel="accuracy (%)", title=f"token budget {main_budget}")
    if panels == 2:
        axes[0][1].set(xlabel="token budget (max new tokens)", ylabel=f"Pass@{ks[0]} (%)", title="token budget")
    for axis in axes[0]:
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    written.append(folder / "accuracy_vs_budget.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    generated = [name for name in names if name in summary["lengths"]]  # the baselines generate nothing of their own
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(generated) + 2), 4))
    axis.boxplot([summary["lengths"][name][str(main_budget)] for name in generated], showfliers=False)
    axis.set_xticks(range(1, len(generated) + 1), generated, rotation=30, ha="right", fontsize=8)
    axis.set(ylabel="generated tokens", title=f"Generation lengths (token budget {main_budget})")
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    written.append(folder / "generation_lengths.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    entropy = summary.get("token_entropy", {})
    if entropy:
        columns = min(4, len(entropy))
        rows = -(-len(entropy) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows + 0.5), squeeze=False, sharey=True)
        for axis in axes.flat[len(entropy) :]:
            axis.set_visible(False)
        for axis, (name, record) in zip(axes.flat, entropy.items(), strict=False):
            values, chosen = record["entropy"], record["action"]
            top = max(values) if values else 1.0
            bins = [top * i / 30 for i in range(31)]
            for index, action in enumerate(record["action_names"]):
                picked = [v for v, a in zip(values, chosen, strict=True) if a == index]
                if picked:
                    axis.hist(picked, bins=bins, histtype="step", linewidth=1.5, label=f"{action} ({len(picked)})")
            axis.set_yscale("log")
            axis.set(title=name, xlabel="next-token entropy (nats)")
            axis.legend(fontsize=7)
        for row in axes:
            row[0].set_ylabel("tokens")
        figure.suptitle("Token entropy by chosen action")
        figure.tight_layout()
        written.append(folder / "token_entropy_by_action.png")
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    return written
