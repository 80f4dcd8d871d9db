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
) -> dict[str, float]:
    """The step's metrics, summed over all processes' prompts and samples (names follow TRL's where it has one)."""
    actions = adapter.decoding_config.action_names
    num_actions, num_funcs = len(actions), per_func.shape[1]
    token_level = adapter.level == "token"
    finite = ~per_func.isnan()
    sums = torch.cat(
        [
            torch.tensor(
                [
                    float(rewards.sum()),
                    len(rewards),
                    batch.num_tokens,
                    len(batch.actions),
                    float(weights.sum()),
                    float((batch.max_probs > max_prob_threshold).sum()) if token_level and max_prob_threshold else 0.0,
                    len(cot),
                    sum(cot),
                ],
                device=rewards.device,
            ),
            batch.action_probs.float().sum(0),
            torch.bincount(batch.actions, minlength=num_actions).float(),
            torch.where(finite, per_func, 0.0).sum(0),
            finite.float().sum(0),
        ]
    )
    sums = accelerator.reduce(sums, "sum")
    slowest = accelerator.reduce(torch.tensor([rollout_time, update_time], device=rewards.device), "max")
    reward_sum, samples, tokens, decisions, in_loss, _, prompts, cot_prompts = sums[:8].tolist()
    probs = sums[8 : 8 + num_actions] / decisions
    shares = sums[8 + num_actions : 8 + 2 * num_actions] / decisions
    func_sums = sums[8 + 2 * num_actions : 8 + 2 * num_actions + num_funcs]
    func_counts = sums[8 + 2 * num_actions + num_funcs :]
    metrics = {
        "reward": reward_sum / samples,
        "num_prompts": int(prompts),
        "num_samples": int(samples),
        "completion_length": tokens / samples,
        "tokens_per_second": tokens / max(float(slowest[0]), 1e-9),
        "decisions_in_loss": int(in_loss),
        "cot_fraction": cot_prompts / max(prompts, 1),
        "time/rollout": float(slowest[0]),
        "time/update": float(slowest[1]),
    }
    if token_level and max_prob_threshold:
        metrics["masked_fraction"] = float(sums[5]) / decisions
    for func, total, count in zip(reward_funcs, func_sums.tolist(), func_counts.tolist(), strict=True):
        metrics[f"rewards/{_name(func)}/mean"] = total / count if count else math.nan
    metrics.update({f"action_probs/{name}": float(p) for name, p in zip(actions, probs, strict=True)})
    metrics.update({f"action_share/{name}": float(s) for name, s in zip(actions, shares, strict=True)})
    return metrics


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
    names = [key.split("/", 1)[1] for key in (train[0] if train else {}) if key.startswith("action_probs/")]
    if train:
        figure, axis = plt.subplots(figsize=(7, 4))
        steps = [entry["step"] for entry in train]
        for name in names:
            axis.plot(steps, [entry[f"action_probs/{name}"] for entry in train], label=name)
        axis.set(xlabel="step", ylabel="mean action probability", title="Policy over training", ylim=(0, 1))
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
