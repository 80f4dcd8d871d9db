"""The one per-step decision path: what the policy sees, which action each row takes, and what that does to the logits.

`generate(decoding_adapter=...)` (through [`~generation.generate.AdaptiveDecodingProcessor`]) and the project's own
decoding loop ([`~generation.rollout.generate_rollouts`], which training, evaluation and action selection use) both
decide through [`DecisionStep`]; they differ only in who draws the token afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch

from .features import token_context
from .noise import ACTION_STREAM, keyed_uniforms
from .policies import DecodingPolicy
from .sampling import ActionTransform


def token_ids(ids: int | list[int] | torch.Tensor | None) -> list[int]:
    """A generation config's `eos_token_id` / `pad_token_id` (an int, a list, a tensor or None) as a list of ints."""
    if ids is None:
        return []
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.flatten().tolist()]
    return [int(i) for i in (ids if isinstance(ids, list) else [ids])]


@contextlib.contextmanager
def deciding(policy: DecodingPolicy) -> Iterator[None]:
    """Run `policy` without dropout and without gradients (an adapter decides as it was trained to act), then give it
    back its training flag."""
    was_training = getattr(policy, "training", None)
    if was_training:
        policy.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            policy.train()


class DecisionStep:
    """
    One decoding step of a policy over a batch of rows.

    Args:
        policy ([`DecodingAdapterModel`] or [`~generation.policies.DecodingPolicy`]): who chooses the actions.
        deterministic (`bool`): take the policy's most likely action instead of sampling one.
    """

    def __init__(self, policy: DecodingPolicy, deterministic: bool = False):
        self.policy = policy
        self.deterministic = deterministic
        self.transform = ActionTransform(policy.decoding_config.actions)
        # A policy written before keyed noise (`select_actions(hidden_states, budget, deterministic)`) still works;
        # it then draws its actions from torch's global generator itself.
        self.takes_noise = "noise" in inspect.signature(policy.select_actions).parameters

    def _select(self, features, budget, keys, position):
        if not self.takes_noise:
            return self.policy.select_actions(features, budget, self.deterministic)
        noise = None if self.deterministic or keys is None else keyed_uniforms(keys, position, ACTION_STREAM)
        return self.policy.select_actions(features, budget, self.deterministic, noise=noise)

    def token_context(
        self,
        hidden: torch.Tensor,
        scores: torch.Tensor,
        entropy: torch.Tensor | None = None,
        max_prob: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What a token-level policy sees of this step (see [`~generation.features.token_context`])."""
        return token_context(self.policy.context_features, hidden, scores, entropy, max_prob)

    def token_actions(
        self, context: torch.Tensor, remaining: torch.Tensor, keys: torch.Tensor | None, position: int
    ) -> tuple[torch.LongTensor, torch.FloatTensor]:
        """Token level: each row's action from `[context; b_t]`, drawn from its own keyed noise at `position`."""
        return self._select(context, remaining, keys, position)

    def prompt_actions(
        self, prompt_features: torch.Tensor, parallel_budget: torch.Tensor, keys: torch.Tensor | None
    ) -> tuple[torch.LongTensor, torch.FloatTensor]:
        """Sequence level: one action per prompt from `[e; B]`, drawn from the prompt's keyed noise."""
        return self._select(prompt_features, parallel_budget, keys, 0)

    def apply(self, scores: torch.Tensor, actions: torch.LongTensor, step: int | None = None) -> torch.Tensor:
        """Each row's action applied to its next-token logits (greedy: only the argmax stays)."""
        return self.transform(scores, actions.to(scores.device), step)
