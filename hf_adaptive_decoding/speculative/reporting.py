"""Plots of a draft adapter's training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..training.reporting import pyplot


def plot_draft_training(log_history: list[dict[str, Any]], folder: Path) -> None:
    """`speedup.png`: replayed speed-up over plain decoding during training and on validation, next to the best fixed
    draft length; `draft_length.png`: the mean draft length and acceptance rate. Skipped without matplotlib."""
    plt = pyplot()
    if plt is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    train = [entry for entry in log_history if "speedup" in entry]
    evals = [entry for entry in log_history if "eval_speedup" in entry]
    figure, axis = plt.subplots(figsize=(7, 4))
    if train:
        axis.plot([e["step"] for e in train], [e["speedup"] for e in train], alpha=0.4, label="training replays")
    if evals:
        steps = [e["step"] for e in evals]
        axis.plot(steps, [e["eval_speedup"] for e in evals], "o-", label="validation (most likely decisions)")
        axis.plot(steps, [e["eval_speedup_best_fixed"] for e in evals], "--", label="best fixed draft length")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set(xlabel="step", ylabel="speed-up over plain decoding", title="Replayed throughput")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "speedup.png", dpi=120)
    plt.close(figure)
    if train:
        figure, axis = plt.subplots(figsize=(7, 4))
        steps = [e["step"] for e in train]
        axis.plot(steps, [e["draft_length"] for e in train], label="mean draft length")
        axis.set(xlabel="step", ylabel="tokens per draft")
        other = axis.twinx()
        other.plot(steps, [e["acceptance"] for e in train], color="tab:orange", label="acceptance rate")
        other.set(ylabel="accepted share of drafted tokens", ylim=(0, 1))
        figure.legend(fontsize=8, loc="upper right")
        figure.tight_layout()
        figure.savefig(folder / "draft_length.png", dpi=120)
        plt.close(figure)
