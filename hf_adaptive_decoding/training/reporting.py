"""What a training run shows: step metrics gathered over processes, a JSONL log, plots and the model card."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from huggingface_hub import ModelCard, ModelCardData

from ..adapters.modeling import DecodingAdapterModel
from ..generation.rollout import RolloutBatch
from ..rewards.scoring import reward_function_name as _name

logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).parent / "templates" / "adapter_card.md"


class MetricsWriter:
    """Appends one JSON object per logged step to `output_dir/metrics.jsonl` (main process only)."""

    def __init__(self, output_dir: Path, enabled: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate(self, step: int) -> None:
        """Drop the entries logged after `step` (by a run that is resumed from `step`)."""
        if self.enabled and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            self.path.write_text("".join(line for line in lines if json.loads(line).get("step", 0) <= step))

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")


def step_metrics(
    accelerator: Accelerator,
    adapter: DecodingAdapterModel,
    batch: RolloutBatch,
    rewards: torch.Tensor,
    per_func: torch.Tensor,
    weights: torch.Tensor,
    reward_funcs: list,
    cot: list[bool],
    rollout_time: float,
    update_time: float,
    max_prob_threshold: float | None = None,
    parallel_budgets: list[int] | None = None,
) -> dict[str, float]:
    """The step's metrics, summed over all processes' prompts and samples (names follow TRL's where it has one).
    Sequence level, with `parallel_budgets`: also the policy's mean action probabilities at each parallel budget
    (`action_probs/B=<B>/<action>`), which tell whether it decides differently for different B."""
    actions = adapter.decoding_config.action_names
    token_level = adapter.level == "token"
    finite = ~per_func.isnan()
    device = rewards.device
    masked = float((batch.max_probs > max_prob_threshold).sum()) if token_level and max_prob_threshold else 0.0
    counts = {
        "reward": float(rewards.sum()),
        "samples": len(rewards),
        "tokens": batch.num_tokens,
        "decisions": len(batch.actions),
        "in_loss": float(weights.sum()),
        "masked": masked,
        "prompts": len(cot),
        "cot_prompts": sum(cot),
    }
    sums = reduce_by_name(
        accelerator,
        {
            **{name: torch.tensor([float(value)], device=device) for name, value in counts.items()},
            "action_probs": batch.action_probs.float().sum(0),
            "action_counts": torch.bincount(batch.actions, minlength=len(actions)).float(),
            "func_sums": torch.where(finite, per_func, 0.0).sum(0),
            "func_counts": finite.float().sum(0),
            **{
                f"B={budget}": torch.cat([probs.sum(0), torch.tensor([float(len(probs))], device=probs.device)])
                for budget in (parallel_budgets if not token_level and parallel_budgets else [])
                for probs in [batch.action_probs.float()[batch.budgets == budget]]
            },
        },
    )
    slowest = reduce_by_name(
        accelerator,
        {"rollout": torch.tensor([rollout_time], device=device), "update": torch.tensor([update_time])},
        "max",
    )
    total = {name: float(sums[name]) for name in counts}
    samples, decisions = total["samples"], total["decisions"]
    metrics = {
        "reward": total["reward"] / samples,
        "num_prompts": int(total["prompts"]),
        "num_samples": int(samples),
        "completion_length": total["tokens"] / samples,
        "tokens_per_second": total["tokens"] / max(float(slowest["rollout"]), 1e-9),
        "decisions_in_loss": int(total["in_loss"]),
        "cot_fraction": total["cot_prompts"] / max(total["prompts"], 1),
        "time/rollout": float(slowest["rollout"]),
        "time/update": float(slowest["update"]),
    }
    if token_level and max_prob_threshold:
        metrics["masked_fraction"] = total["masked"] / decisions
    for func, func_sum, func_count in zip(
        reward_funcs, sums["func_sums"].tolist(), sums["func_counts"].tolist(), strict=True
    ):
        metrics[f"rewards/{_name(func)}/mean"] = func_sum / func_count if func_count else math.nan
    probs, shares = sums["action_probs"] / decisions, sums["action_counts"] / decisions
    metrics.update({f"action_probs/{name}": float(p) for name, p in zip(actions, probs, strict=True)})
    metrics.update({f"action_share/{name}": float(s) for name, s in zip(actions, shares, strict=True)})
    for budget in parallel_budgets if not token_level and parallel_budgets else []:
        *probs, count = sums[f"B={budget}"].tolist()
        if count:  # a step may draw no prompt at this budget
            metrics.update({f"action_probs/B={budget}/{n}": p / count for n, p in zip(actions, probs, strict=True)})
    return metrics


def reduce_by_name(
    accelerator: Accelerator, parts: dict[str, torch.Tensor], reduction: str = "sum"
) -> dict[str, torch.Tensor]:
    """Reduce named 1-D tensors over all processes in one collective, and give them back by name."""
    device = next(iter(parts.values())).device
    flat = torch.cat([part.reshape(-1).float().to(device) for part in parts.values()])
    reduced = accelerator.reduce(flat, reduction).split([part.numel() for part in parts.values()])
    return dict(zip(parts, reduced, strict=True))


def pyplot():
    """matplotlib's pyplot on the Agg backend, or `None` (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'hf_adaptive_decoding[train]').")
        return None
    return plt


def plot_training(log_history: list[dict[str, Any]], folder: Path) -> None:
    """PNG plots of the policy's mean action probabilities and of the validation reward over training (the paper's
    Figures 2 and 8). Needs matplotlib (`pip install hf_adaptive_decoding[train]`); skipped with a warning without."""
    plt = pyplot()
    if plt is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    train = [entry for entry in log_history if "reward" in entry]
    evals = [entry for entry in log_history if "eval_reward" in entry]
    keys = dict.fromkeys(key for entry in train for key in entry if key.startswith("action_probs/"))
    # One panel for all decisions, and one per parallel budget when the metrics have them (sequence level).
    panels: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        panels.setdefault(parts[1] if len(parts) == 3 else "all", []).append(key)
    if train:
        figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
        for axis, (panel, panel_keys) in zip(axes[0], panels.items(), strict=True):
            for key in panel_keys:
                points = [(entry["step"], entry[key]) for entry in train if key in entry]
                axis.plot(*zip(*points, strict=True), label=key.rsplit("/", 1)[1])
            title = "Policy over training" + ("" if panel == "all" else f", {panel}")
            axis.set(xlabel="step", ylabel="mean action probability", title=title, ylim=(0, 1))
            axis.legend(fontsize=7, loc="upper left")
        figure.tight_layout()
        figure.savefig(folder / "action_probs.png", dpi=120)
        plt.close(figure)
    if evals or train:
        figure, axis = plt.subplots(figsize=(7, 4))
        if train:
            axis.plot([e["step"] for e in train], [e["reward"] for e in train], alpha=0.4, label="train reward")
        if evals:
            axis.plot([e["step"] for e in evals], [e["eval_reward"] for e in evals], "o-", label="validation reward")
        axis.set(xlabel="step", ylabel="reward", title="Reward over training")
        axis.legend()
        figure.tight_layout()
        figure.savefig(folder / "reward.png", dpi=120)
        plt.close(figure)


def adapter_model_card(
    adapter: DecodingAdapterModel,
    args,
    train_dataset: Dataset,
    reward_funcs: list,
    evaluation: dict | None,
    log_history: list[dict[str, Any]],
) -> ModelCard:
    """The adapter's model card: base model, action space, data, reward, and validation results next to the best
    static action's on the same problems."""
    config = adapter.config
    base = config.base_model_name_or_path or "unknown"
    card_data = ModelCardData(
        base_model=base if base != "unknown" else None,
        library_name="hf-adaptive-decoding",
        tags=["hf-adaptive-decoding", "decoding-adapter", f"{adapter.level}-level", "reinforce"],
        license="apache-2.0",
    )
    actions = "\n".join(
        f"| {index} | `{action.name}` | {action.to_dict()} |"
        for index, action in enumerate(adapter.decoding_config.actions)
    )
    if evaluation is None:
        results = "No validation set was given, so there are no validation results."
    else:
        best_name, best_reward = max(evaluation["static"].items(), key=lambda item: item[1])
        static_rows = "\n".join(f"| static `{name}` | {reward:.3f} |" for name, reward in evaluation["static"].items())
        results = (
            "| decoder | validation reward |\n|---|---|\n"
            f"| **this adapter (deterministic policy)** | **{evaluation['adapter']:.3f}** |\n{static_rows}\n\n"
            f"Best static action: `{best_name}` ({best_reward:.3f}); the adapter's difference: "
            f"{evaluation['adapter'] - best_reward:+.3f}. One sample per prompt; a small validation set makes these "
            "figures noisy."
        )
    text = CARD_TEMPLATE.read_text().format(
        base_model=base,
        base_revision=config.base_model_revision or "not recorded",
        level=adapter.level,
        budget_feature=adapter.decoding_config.budget_feature or "none",
        actions=actions,
        train_size=len(train_dataset),
        train_columns=", ".join(train_dataset.column_names),
        rewards=", ".join(f"`{_name(func)}`" for func in reward_funcs),
        steps=max((entry.get("step", 0) for entry in log_history), default=0),
        settings=json.dumps({k: v for k, v in args.to_dict().items() if k not in ("push_to_hub",)}, indent=2),
        results=results,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{text}")
