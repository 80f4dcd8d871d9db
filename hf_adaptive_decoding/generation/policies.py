"""Decoders that are not learned: static actions, a uniform mixture (MIXED) and entropy-based dynamic temperature
(EDT). They plug into the same rollout loop as a trained adapter, so every decoder is measured the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from transformers import LogitsProcessor

from ..adapters.configuration import AdaptiveDecodingConfig, DecodingAction
from .features import next_token_entropy
from .noise import choose_actions


class DecodingPolicy(Protocol):
    """What [`~rollout.generate_rollouts`] needs of a policy; [`DecodingAdapterModel`] is one."""

    level: str
    context_features: str

    @property
    def decoding_config(self) -> AdaptiveDecodingConfig: ...

    def select_actions(
        self,
        hidden_states: torch.Tensor,
        budget: torch.Tensor | None = None,
        deterministic: bool = False,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.LongTensor, torch.FloatTensor]: ...


class ConstantPolicy:
    """
    A policy that ignores what it sees: the same distribution over actions at every decision.

    `ConstantPolicy.static(action)` always takes one action (static decoding); `ConstantPolicy.mixed(actions)`
    draws uniformly among them (the paper's MIXED baseline: an adapter's action space without learning), once per
    prompt at sequence level or at every token at token level.

    Args:
        actions (`Sequence[DecodingAction]`): the action space.
        probs (`Sequence[float]`, *optional*): the fixed distribution over `actions` (default: uniform).
        level (`str`, defaults to `"sequence"`): when the policy decides. `"token"` also records per-token data such
            as entropies. Actions draw from a random stream of their own, so the level changes no sample.
    """

    context_features = "hidden_state"

    def __init__(
        self,
        actions: Sequence[DecodingAction],
        probs: Sequence[float] | None = None,
        level: Literal["token", "sequence"] = "sequence",
    ):
        self._config = AdaptiveDecodingConfig(actions=list(actions), level=level, budget_feature=None)
        self.level = level
        probs = torch.full((len(actions),), 1.0 / len(actions)) if probs is None else torch.tensor(probs).float()
        if probs.shape != (len(actions),) or bool((probs < 0).any()) or not torch.isclose(probs.sum(), torch.ones(())):
            raise ValueError(f"probs must be {len(actions)} non-negative numbers summing to 1, got {probs.tolist()}.")
        self.probs = probs

    @classmethod
    def static(cls, action: DecodingAction, level: Literal["token", "sequence"] = "sequence") -> ConstantPolicy:
        return cls([action], [1.0], level)

    @classmethod
    def mixed(cls, actions: Sequence[DecodingAction], level: Literal["token", "sequence"] = "sequence"):
        return cls(actions, None, level)

    @property
    def decoding_config(self) -> AdaptiveDecodingConfig:
        return self._config

    def select_actions(
        self,
        hidden_states: torch.Tensor,
        budget: torch.Tensor | None = None,
        deterministic: bool = False,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.LongTensor, torch.FloatTensor]:
        probs = self.probs.to(hidden_states.device).expand(hidden_states.shape[0], -1)
        return choose_actions(probs, deterministic, noise), probs


class EntropyDynamicTemperatureLogitsWarper(LogitsProcessor):
    r"""
    Entropy-based dynamic temperature (EDT, Zhang et al. 2024, arXiv:2403.14541): each row is sampled at
    `T = temperature * base ** (theta / H)`, where `H` is the entropy of its next-token distribution. Confident steps
    (low `H`) become near-greedy; uncertain ones keep a temperature close to `temperature`.

    A transformers [`~transformers.LogitsProcessor`], so it also works in `model.generate(logits_processor=[...])`
    (with `do_sample=True, temperature=1.0`). Vectorised over rows.

    Args:
        temperature (`float`, defaults to 1.0): `T0`, the temperature approached as the entropy grows.
        base (`float`, defaults to 0.8): `N` in (0, 1).
        theta (`float`, defaults to 1.0): how fast the temperature falls as the entropy shrinks; > 0.
        min_temperature (`float`, *optional*): floor, so that a zero-entropy row stays finite (it is greedy);
            defaults to `min(1e-2, temperature)`.
    """

    def __init__(
        self, temperature: float = 1.0, base: float = 0.8, theta: float = 1.0, min_temperature: float | None = None
    ):
        if min_temperature is None and isinstance(temperature, (int, float)) and temperature > 0:
            min_temperature = min(1e-2, temperature)
        for name, value, ok, allowed in (
            ("temperature", temperature, temperature > 0, "> 0"),
            ("base", base, 0 < base < 1, "in (0, 1)"),
            ("theta", theta, theta > 0, "> 0"),
            (
                "min_temperature",
                min_temperature,
                min_temperature is None or 0 < min_temperature <= temperature,
                "in (0, temperature]",
            ),
        ):
            if not ok:
                raise ValueError(f"EntropyDynamicTemperatureLogitsWarper.{name} must be {allowed}, got {value!r}.")
        self.temperature, self.base, self.theta, self.min_temperature = temperature, base, theta, min_temperature

    def row_temperatures(self, scores: torch.Tensor) -> torch.Tensor:
        entropy = next_token_entropy(scores).clamp(min=1e-6)
        return (self.temperature * self.base ** (self.theta / entropy)).clamp(min=self.min_temperature)

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores / self.row_temperatures(scores)[:, None].to(scores.dtype)
