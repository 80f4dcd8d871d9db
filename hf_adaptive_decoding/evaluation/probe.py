"""How much of the per-problem headroom a prompt-level policy can reach from the model's own hidden state: a
cross-validated probe that picks one candidate decoder per prompt from its features, trained on every candidate's
measured Pass@k (full information: the expected reward, no sampled actions).

It bounds what a sequence-level adapter can learn from the same features and data with REINFORCE (which sees one
sampled action's reward per prompt): a probe that cannot beat BEST@k out of fold says the features or the problems do
not carry the signal; one that can says the trainer has something to find.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.prompting import encode_prompts
from ..generation.features import HiddenStateCapture


@torch.no_grad()
def prompt_features(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    instruction: str | None = None,
    system_prompt: str | None = None,
    batch_size: int = 64,
    prompt_pooling: Literal["last", "mean"] = "last",
) -> torch.Tensor:
    """The final (normed) hidden state of each prompt as a sequence-level adapter with this `prompt_pooling` sees it
    (at the last token, or the mean over the prompt's tokens): `(len(prompts), hidden_size)` in float32 on the CPU."""
    if len(prompts) == 0:
        raise ValueError("prompt_features got no prompts.")
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        encoded = encode_prompts(tokenizer, chunk, [instruction] * len(chunk), system_prompt, model.device)
        with HiddenStateCapture(model, prompt_pooling) as capture:
            model(**encoded)
            rows.append(capture.prompt_embedding().float().cpu())
    return torch.cat(rows)


def _folds(num_problems: int, num_folds: int, seed: int) -> torch.LongTensor:
    """The fold of every problem, shuffled by `seed`: the same folds for the probe and the static choices."""
    if not 2 <= num_folds <= num_problems:
        raise ValueError(f"num_folds must be in [2, {num_problems}] (the number of problems), got {num_folds}.")
    return torch.randperm(num_problems, generator=torch.Generator().manual_seed(seed)) % num_folds


def _fit_policy(
    features: torch.Tensor, rewards: torch.Tensor, weight_decay: float, steps: int, num_components: int | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A linear softmax policy over the candidates maximising the mean expected reward `sum_a pi(a | x) R(x, a)`,
    full batch, on the features' top `num_components` principal directions (of these problems; all features when
    `None`), standardised. Few problems and wide hidden states overfit a policy on every dimension."""
    mean = features.mean(dim=0)
    if num_components is not None and num_components < min(features.shape):
        _, _, directions = torch.linalg.svd(features - mean, full_matrices=False)
        projection = directions[:num_components].T
    else:
        projection = torch.eye(features.shape[1])
    projected = (features - mean) @ projection
    scale = projected.std(dim=0).clamp(min=1e-6)
    linear = torch.nn.Linear(projection.shape[1], rewards.shape[1])
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -(linear(projected / scale).softmax(dim=-1) * rewards).sum(dim=-1).mean()
        loss.backward()
        optimizer.step()
    return lambda x: linear((x - mean) @ projection / scale)


def cross_validated_choices(
    features: torch.Tensor,
    rewards: torch.Tensor,
    num_folds: int = 5,
    seed: int = 0,
    weight_decay: float = 0.1,
    steps: int = 300,
    num_components: int | None = 16,
) -> torch.LongTensor:
    """
    For every problem, the candidate a probe trained on the other folds picks from its features.

    Args:
        features (`torch.Tensor` of shape `(problems, hidden)`): e.g. [`prompt_features`].
        rewards (`torch.Tensor` of shape `(problems, candidates)`): each candidate's Pass@k on each problem.
        num_folds (`int`): folds of the cross-validation (`2 <= num_folds <= problems`).
        seed (`int`): seeds the fold assignment and the probes' initialisation.
        weight_decay (`float`), steps (`int`): the probe's AdamW weight decay and full-batch steps.
        num_components (`int`, *optional*): principal directions of the training folds' features the probe sees.

    Returns:
        `torch.LongTensor` of shape `(problems,)`: the out-of-fold choice of each problem.
    """
    if features.dim() != 2 or rewards.dim() != 2 or len(features) != len(rewards):
        raise ValueError(
            f"features (problems, hidden) and rewards (problems, candidates) must agree on problems; got "
            f"{tuple(features.shape)} and {tuple(rewards.shape)}."
        )
    fold = _folds(len(features), num_folds, seed)
    choices = torch.empty(len(features), dtype=torch.long)
    features, rewards = features.float(), rewards.float()
    for held_out in range(num_folds):
        test = fold == held_out
        torch.manual_seed(seed + held_out)
        policy = _fit_policy(features[~test], rewards[~test], weight_decay, steps, num_components)
        with torch.no_grad():
            choices[test] = policy(features[test]).argmax(dim=-1)
    return choices


def cross_validated_static_choices(
    rewards: torch.Tensor, groups: Sequence[str] | None = None, num_folds: int = 5, seed: int = 0
) -> torch.LongTensor:
    """The same folds' static baseline: for every problem, the candidate with the best mean reward on the other folds
    (among the problems of its own group, e.g. its task family, when `groups` is given and the group is there)."""
    fold = _folds(len(rewards), num_folds, seed)
    labels = list(groups) if groups is not None else [""] * len(rewards)
    ids = {label: index for index, label in enumerate(dict.fromkeys(labels))}
    group = torch.tensor([ids[label] for label in labels])
    choices = torch.empty(len(rewards), dtype=torch.long)
    for held_out in range(num_folds):
        train = fold != held_out
        for label in ids.values():
            rows = (fold == held_out) & (group == label)
            pool = train & (group == label)
            pool = pool if bool(pool.any()) else train
            choices[rows] = rewards[pool].mean(dim=0).argmax()
    return choices
