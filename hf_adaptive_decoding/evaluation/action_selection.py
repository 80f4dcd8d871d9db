"""Choosing an action space (Section 2.4, Appendix C): reward every candidate strategy on validation problems, then
pick K of them by greedy coverage of F(S) = sum_x max_{s in S} R(x, s), next to the top-K-by-mean baseline."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapters.configuration import DecodingAction
from ..generation.policies import ConstantPolicy
from ..rewards.scoring import reward_function_name
from .evaluate import SAMPLING
from .runner import rollout_and_score


def problem_keys(dataset: Dataset) -> list[str]:
    """A stable id per problem: the dataset's `key` column when it has one, else a hash of the whole row."""
    if "key" in dataset.column_names:
        return [str(key) for key in dataset["key"]]
    return [hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16] for row in dataset]


class StrategyRewardCache:
    """
    Rewards per (problem, strategy), appended to a JSON-lines file as each batch of problems is scored, so that an
    interrupted sweep resumes where it stopped and a selection with another K costs nothing. One file per evaluation
    context (model, prompts, budget, seed): results of another context are never mixed in.
    """

    def __init__(self, folder: str | os.PathLike, context: dict[str, Any]):
        digest = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.path = Path(folder) / f"rewards-{digest}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rewards: dict[tuple[str, str], float] = {}
        if self.path.exists():
            with open(self.path) as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: that batch is simply scored again
                        continue
                    self.rewards[(entry["problem"], entry["strategy"])] = entry["reward"]
        else:
            context_file = self.path.parent / f"rewards-{digest}.context.json"
            context_file.write_text(json.dumps(context, indent=2, default=str))

    def missing(self, problem: str, strategies: Sequence[str]) -> bool:
        return any((problem, strategy) not in self.rewards for strategy in strategies)

    def add(self, entries: list[tuple[str, str, float]]) -> None:
        lines = "".join(json.dumps({"problem": p, "strategy": s, "reward": r}) + "\n" for p, s, r in entries)
        with open(self.path, "a+b") as handle:
            if handle.tell() > 0:  # a kill may have cut the last line: start a new one, not glued to it
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    lines = "\n" + lines
            handle.write(lines.encode())
            handle.flush()
            os.fsync(handle.fileno())
        self.rewards.update({(p, s): r for p, s, r in entries})


@torch.no_grad()
def evaluate_strategies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    strategies: Sequence[DecodingAction],
    dataset: Dataset,
    reward_funcs: Callable | Sequence[Callable],
    max_new_tokens: int = 48,
    instruction: str | None = None,
    system_prompt: str | None = None,
    seed: int = 0,
    rows_per_batch: int = 384,
    cache_dir: str | os.PathLike | None = None,
    reward_timeout: float | None = 300.0,
    disable_tqdm: bool = False,
) -> torch.Tensor:
    """
    The reward `R(x, s)` of one sample of every strategy `s` on every problem `x` (Appendix C).

    All strategies of a problem are sampled together: the prompt is prefilled once and its KV cache shared by the
    strategies' rows. Every strategy of a problem draws the same random numbers, keyed by `seed` and the problem's
    key (see [`~generation.noise`]), so strategies are compared pairwise, and a resumed sweep gives the same rewards as
    an uninterrupted one.

    Args:
        model, tokenizer: the frozen causal LM and its (chat) tokenizer, left-padded.
        strategies (`Sequence[DecodingAction]`): the candidate pool (e.g. [`candidate_pool`] plus greedy).
        dataset (`datasets.Dataset`): validation problems with a `prompt` column and what the rewards need.
        reward_funcs: TRL-style reward functions (see [`compute_rewards`]).
        max_new_tokens (`int`): the token budget of each sample.
        instruction (`str`, *optional*), system_prompt (`str`, *optional*): as in training.
        seed (`int`): seeds the sampling.
        rows_per_batch (`int`): about how many rows (problems x strategies) to generate at once.
        cache_dir (`str`, *optional*): where to keep the rewards (see [`StrategyRewardCache`]).
        reward_timeout (`float`, *optional*): seconds a reward call may take.
        disable_tqdm (`bool`): no progress bar.

    Returns:
        `torch.Tensor` of shape `(len(dataset), len(strategies))`.
    """
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there are no problems to evaluate the strategies on.")
    strategies = list(strategies)
    names = [strategy.name for strategy in strategies]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"The strategies must be distinct; duplicates: {duplicates}.")
    reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    keys = problem_keys(dataset)
    context = {
        "model": getattr(model, "name_or_path", None),
        "max_new_tokens": max_new_tokens,
        "instruction": instruction,
        "system_prompt": system_prompt,
        "seed": seed,
        "rewards": [reward_function_name(func) for func in reward_funcs],
        "sampling": SAMPLING,
    }
    cache = StrategyRewardCache(cache_dir, context) if cache_dir is not None else None
    known: dict[tuple[str, str], float] = dict(cache.rewards) if cache else {}
    per_batch = max(1, rows_per_batch // len(strategies))
    policy = ConstantPolicy(strategies, level="sequence")
    model.eval()
    progress = tqdm(total=len(dataset), desc=f"Rewarding {len(strategies)} strategies", disable=disable_tqdm)
    for start in range(0, len(dataset), per_batch):
        batch_keys = keys[start : start + per_batch]
        if all((key, name) in known for key in batch_keys for name in names):
            progress.update(len(batch_keys))
            continue
        rows = dataset.select(range(start, start + len(batch_keys))).to_list()
        rewards = _reward_strategies(model, tokenizer, policy, rows, batch_keys, reward_funcs, context, reward_timeout)
        entries = [
            (batch_keys[i // len(strategies)], names[i % len(strategies)], float(reward))
            for i, reward in enumerate(rewards.tolist())
        ]
        known.update({(p, s): r for p, s, r in entries})
        if cache is not None:
            cache.add(entries)
        progress.update(len(batch_keys))
    progress.close()
    return torch.tensor([[known[(key, name)] for name in names] for key in keys])


def _reward_strategies(model, tokenizer, policy, rows, keys, reward_funcs, context, reward_timeout) -> torch.Tensor:
    """One sample of every strategy on each of `rows`, all on the problem's first sample's random numbers (so the
    strategies are compared pairwise); rewards laid out problem-major."""
    count = len(policy.decoding_config.actions)
    scored = rollout_and_score(
        model,
        tokenizer,
        policy,
        rows,
        reward_funcs,
        num_samples=count,
        token_budgets=context["max_new_tokens"],
        instructions=context["instruction"],
        system_prompt=context["system_prompt"],
        seed=context["seed"],
        problem_ids=keys,
        fixed_actions=torch.arange(count, device=model.device).repeat(len(rows)),
        sample_indices=torch.zeros(len(rows) * count, dtype=torch.long, device=model.device),
        reward_timeout=reward_timeout,
    )
    return scored.rewards


def greedy_coverage(rewards: torch.Tensor, k: int) -> list[int]:
    """
    Indices of `k` strategies chosen greedily to maximise `F(S) = sum_x max_{s in S} R(x, s)` (Appendix C): each
    step adds the strategy with the largest gain; ties (e.g. once every solvable problem is covered) go to the higher
    mean reward `Q(s)`, then to the earlier strategy.

    Args:
        rewards (`torch.Tensor` of shape `(problems, strategies)`): `R(x, s)`.
        k (`int`): how many to choose, at most the number of strategies.
    """
    _check_k(rewards, k)
    rewards = rewards.double()
    means = rewards.mean(dim=0).tolist()
    covered: torch.Tensor | None = None  # max reward over the chosen strategies, per problem
    chosen: list[int] = []
    for _ in range(k):
        # F of the empty set has no value to improve on when rewards can be negative: the first gain is F({s}) itself.
        gains = rewards if covered is None else torch.maximum(covered[:, None], rewards) - covered[:, None]
        totals = gains.sum(dim=0).tolist()
        # Lexicographic (gain, mean, earlier strategy) over the strategies not chosen yet.
        best = max((s for s in range(rewards.shape[1]) if s not in chosen), key=lambda s: (totals[s], means[s], -s))
        chosen.append(best)
        covered = rewards[:, best] if covered is None else torch.maximum(covered, rewards[:, best])
    return chosen


def top_k_by_mean(rewards: torch.Tensor, k: int) -> list[int]:
    """The baseline of Figure 6: the `k` strategies with the highest mean reward `Q(s)` (ties: earlier first)."""
    _check_k(rewards, k)
    order = sorted(range(rewards.shape[1]), key=lambda s: (-float(rewards[:, s].double().mean()), s))
    return order[:k]


def best_of_k_curve(rewards: torch.Tensor, order: Sequence[int]) -> list[float]:
    """`F(S_j) / N` for the first `j = 1..len(order)` strategies of `order`: the best-of-K accuracy of Figure 6."""
    best = torch.cummax(rewards[:, list(order)].double(), dim=1).values
    return best.mean(dim=0).tolist()


def _check_k(rewards: torch.Tensor, k: int) -> None:
    if rewards.dim() != 2 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must have shape (problems >= 1, strategies), got {tuple(rewards.shape)}.")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= rewards.shape[1]:
        raise ValueError(f"k must be an int in [1, {rewards.shape[1]}] (the number of strategies), got {k!r}.")


def plot_best_of_k(curves: dict[str, list[float]], path: str | os.PathLike, title: str | None = None) -> None:
    """Figure 6: best-of-K accuracy against K, one line per selection rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for (label, curve), marker in zip(curves.items(), "os^vD", strict=False):
        axis.plot(range(1, len(curve) + 1), [100 * value for value in curve], marker=marker, label=label)
    axis.set_xlabel("number of selected actions K")
    axis.set_ylabel("best-of-K accuracy (%)")
    axis.set_title(title or "Action-space selection (validation)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
