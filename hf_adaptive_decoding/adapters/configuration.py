"""What a decoding adapter may choose from, and how it sees the world: actions, level, features, presets."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

LEVELS = ("token", "sequence")
BUDGET_FEATURES = (None, "linear", "log")
PROMPT_POOLINGS = ("last", "mean")
CONTEXT_FEATURES = ("hidden_state", "entropy", "hidden_state+stats")
NUM_TOKEN_STATISTICS = 2  # "hidden_state+stats": the next-token entropy and max probability after the hidden state


@dataclass(frozen=True)
class DecodingAction:
    """
    One decoding strategy: a combination of the sampling parameters of [`~transformers.GenerationConfig`].

    Parameters mean what they mean in transformers, applied in transformers' order (temperature, top-k, top-p, min-p).
    `None` switches a truncation off; transformers' "off" values (`top_k=0`, `top_p=1.0`, `min_p=0.0`) are accepted
    and normalised to `None`, so that two spellings of one strategy compare equal.

    Args:
        do_sample (`bool`, defaults to `True`):
            `False` is greedy decoding; the other parameters must then be left unset.
        temperature (`float`, defaults to 1.0):
            Strictly positive when sampling.
        top_k (`int`, *optional*):
            Keep the `top_k` most likely tokens. Non-negative.
        top_p (`float`, *optional*):
            Nucleus mass, in (0, 1].
        min_p (`float`, *optional*):
            Keep tokens whose probability is at least `min_p` times the most likely one's, in [0, 1).
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self):
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"DecodingAction.do_sample must be a bool, got {self.do_sample!r}.")
        _check_number("temperature", self.temperature)
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)):
            raise ValueError(f"DecodingAction.top_k must be an int >= 0 or None, got {self.top_k!r}.")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"DecodingAction.top_k must be >= 0 (0 or None switches it off), got {self.top_k}.")
        if self.top_p is not None:
            _check_number("top_p", self.top_p)
            if not 0.0 < self.top_p <= 1.0:
                raise ValueError(
                    f"DecodingAction.top_p must be in (0, 1] (1 or None switches it off), got {self.top_p}."
                )
        if self.min_p is not None:
            _check_number("min_p", self.min_p)
            if not 0.0 <= self.min_p < 1.0:
                raise ValueError(
                    f"DecodingAction.min_p must be in [0, 1) (0 or None switches it off), got {self.min_p}."
                )
        if not self.do_sample:
            if self.is_truncating:
                raise ValueError(
                    f"A greedy action (do_sample=False) takes no top_k/top_p/min_p, got top_k={self.top_k}, "
                    f"top_p={self.top_p}, min_p={self.min_p}."
                )
            # Greedy ignores temperature; the paper writes it as 0 (Table 14). Store one canonical form.
            object.__setattr__(self, "temperature", 0.0)
        elif not self.temperature > 0:
            hint = " For greedy decoding use do_sample=False." if self.temperature == 0 else ""
            raise ValueError(f"DecodingAction.temperature must be > 0 when sampling, got {self.temperature}.{hint}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_k", self.top_k or None)
        object.__setattr__(self, "top_p", None if self.top_p in (None, 1.0) else float(self.top_p))
        object.__setattr__(self, "min_p", None if self.min_p in (None, 0.0) else float(self.min_p))

    @property
    def is_truncating(self) -> bool:
        return any(value not in (None, 0, 1.0) for value in (self.top_k, self.top_p)) or self.min_p not in (None, 0.0)

    @property
    def name(self) -> str:
        """A short human-readable name, e.g. `"greedy"` or `"T=0.75 top_p=0.9 min_p=0.1"`."""
        if not self.do_sample:
            return "greedy"
        parts = [f"T={self.temperature:g}"]
        parts += [f"{key}={getattr(self, key):g}" for key in ("top_k", "top_p", "min_p") if getattr(self, key)]
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_name(cls, name: str) -> DecodingAction:
        """The inverse of [`name`]: `"greedy"` or `"T=<temperature> [top_k=<k>] [top_p=<p>] [min_p=<p>]"`."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"A decoding action name must be 'greedy' or like 'T=0.75 top_p=0.9', got {name!r}.")
        if name.strip() == "greedy":
            return cls(do_sample=False)
        keys = {"T": ("temperature", float), "top_k": ("top_k", int), "top_p": ("top_p", float)}
        keys["min_p"] = ("min_p", float)
        values: dict[str, Any] = {}
        for part in name.split():
            key, _, raw = part.partition("=")
            if key not in keys or not raw:
                raise ValueError(
                    f"Cannot read {part!r} in decoding action {name!r}: expected 'greedy' or space-separated "
                    "T=<float>, top_k=<int>, top_p=<float>, min_p=<float>."
                )
            field_name, kind = keys[key]
            try:
                values[field_name] = kind(raw)
            except ValueError:
                expected = "an integer" if kind is int else "a number"
                raise ValueError(f"{key} in decoding action {name!r} must be {expected}, got {raw!r}.") from None
        if "temperature" not in values:
            raise ValueError(f"Decoding action {name!r} names no temperature (T=...); greedy is written 'greedy'.")
        return cls(**values)

    def to_generation_kwargs(self) -> dict[str, Any]:
        """The `generate()` keyword arguments that give this strategy as a static decoder."""
        if not self.do_sample:
            return {"do_sample": False}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_k": self.top_k or 0,
            "top_p": self.top_p or 1.0,
            "min_p": self.min_p,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DecodingAction:
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"Unknown decoding action field(s) {sorted(unknown)}; allowed: do_sample, temperature, top_k, "
                "top_p, min_p."
            )
        return cls(**values)


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"DecodingAction.{name} must be a finite number, got {value!r}.")


def _greedy() -> DecodingAction:
    return DecodingAction(do_sample=False)


def _sample(temperature: float, top_k: int | None = None, top_p: float | None = None, min_p: float | None = None):
    return DecodingAction(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)


def candidate_pool() -> list[DecodingAction]:
    """The 180 candidate strategies of the paper's Table 10 (temperature x top-k x top-p x min-p)."""
    grid = itertools.product([0.3, 0.5, 0.75, 1.0, 1.25], [5, 10, 50, None], [0.9, 0.95, None], [0.1, 0.2, None])
    return [_sample(t, k, p, m) for t, k, p, m in grid]


# Named action sets from the paper's Appendix C (Tables 11-14) and the candidate pool of Table 10.
ACTION_PRESETS: dict[str, tuple[str, Any]] = {
    "math-seq": (  # Table 11
        "sequence",
        lambda: [
            _sample(0.75, top_p=0.9, min_p=0.1),
            _sample(1.0, top_p=0.9),
            _sample(1.25, top_k=10, top_p=0.9),
            _sample(1.0, top_k=5, top_p=0.9),
            _sample(1.25, top_k=50, top_p=0.9),
            _sample(1.25),
        ],
    ),
    "code-seq": (  # Table 12
        "sequence",
        lambda: [
            _sample(1.25, top_p=0.95, min_p=0.1),
            _sample(1.25, top_p=0.95, min_p=0.2),
            _sample(1.0, top_p=0.95, min_p=0.2),
            _sample(1.25, top_k=50, top_p=0.9, min_p=0.1),
            _sample(1.25, top_k=5, top_p=0.9),
            _sample(0.75, top_k=5, min_p=0.1),
        ],
    ),
    "mixed-seq": (  # Table 13
        "sequence",
        lambda: [
            _sample(0.5),
            _sample(1.0),
            _sample(1.25),
            _sample(0.75, top_k=10),
            _sample(0.75, top_k=10, top_p=0.95, min_p=0.1),
            _greedy(),
        ],
    ),
    "math-token": ("token", lambda: [_greedy(), _sample(0.5), _sample(1.0), _sample(1.25)]),  # Table 14
    "candidate-pool": ("sequence", candidate_pool),  # Table 10
}

DEFAULT_BUDGET_SCALE = {"token": 1024.0, "sequence": 16.0}


@dataclass
class AdaptiveDecodingConfig:
    """
    The decision problem a decoding adapter solves: its action space, when it acts and what it observes.

    Args:
        actions (`list[DecodingAction]`):
            The action space, at least one action, no two alike. Dicts are accepted and converted.
        level (`str`, defaults to `"token"`):
            `"token"`: an action per generated token, from the step's last hidden state and the remaining token
            budget `b_t = max_new_tokens - t` (the paper's POMDP). `"sequence"`: one action per prompt, held for the
            whole generation and shared by all its parallel samples, from the prompt's hidden states and the parallel
            budget `B` (the paper's contextual bandit).
        budget_feature (`str`, *optional*, defaults to `"log"`):
            How the budget enters the policy: `None` (budget-agnostic), `"linear"` (`b / budget_scale`) or `"log"`
            (`log1p(b) / log1p(budget_scale)`). The encoded value goes through a 2-layer MLP and is concatenated
            to the context features (Section 3.1).
        budget_scale (`float`, *optional*):
            Typical largest budget, for normalisation. Defaults to 1024 tokens (token level) or 16 samples (sequence).
        prompt_pooling (`str`, defaults to `"last"`):
            Sequence level only: the prompt embedding is the final hidden state of the last prompt token (`"last"`)
            or the mean over the prompt's non-padding tokens (`"mean"`).
        policy_temperature (`float`, defaults to 1.0):
            The policy samples from `softmax(logits / policy_temperature)` (Algorithms 1 and 2).
        context_features (`str`, defaults to `"hidden_state"`):
            What the policy sees of the context: the language model's final hidden state (`"hidden_state"`), or, token
            level only, just the entropy of the next-token distribution (`"entropy"`, the ablation of Section 4), or
            the hidden state followed by that entropy (nats) and the next-token max probability
            (`"hidden_state+stats"`; the hidden state is normalised, the two statistics are not).
    """

    actions: list[DecodingAction] = field(default_factory=list)
    level: Literal["token", "sequence"] = "token"
    budget_feature: Literal["linear", "log"] | None = "log"
    budget_scale: float | None = None
    prompt_pooling: Literal["last", "mean"] = "last"
    policy_temperature: float = 1.0
    context_features: Literal["hidden_state", "entropy", "hidden_state+stats"] = "hidden_state"

    def __post_init__(self):
        if isinstance(self.actions, (str, bytes)) or not isinstance(self.actions, Iterable):
            raise ValueError(f"AdaptiveDecodingConfig.actions must be a list of actions, got {self.actions!r}.")
        self.actions = [a if isinstance(a, DecodingAction) else DecodingAction.from_dict(a) for a in self.actions]
        if not self.actions:
            raise ValueError("AdaptiveDecodingConfig.actions is empty: a decoding adapter needs at least one action.")
        seen: dict[DecodingAction, int] = {}
        for index, action in enumerate(self.actions):
            if action in seen:
                raise ValueError(
                    f"AdaptiveDecodingConfig.actions has a duplicate: action {index} ({action.name}) is the same "
                    f"strategy as action {seen[action]}."
                )
            seen[action] = index
        if self.level not in LEVELS:
            raise ValueError(f"AdaptiveDecodingConfig.level must be one of {LEVELS}, got {self.level!r}.")
        if self.budget_feature not in BUDGET_FEATURES:
            raise ValueError(
                f"AdaptiveDecodingConfig.budget_feature must be one of {BUDGET_FEATURES}, got {self.budget_feature!r}."
            )
        if self.budget_scale is None:
            self.budget_scale = DEFAULT_BUDGET_SCALE[self.level]
        if isinstance(self.budget_scale, bool) or not isinstance(self.budget_scale, (int, float)):
            raise ValueError(f"AdaptiveDecodingConfig.budget_scale must be a number > 0, got {self.budget_scale!r}.")
        if not self.budget_scale > 0 or not math.isfinite(self.budget_scale):
            raise ValueError(
                f"AdaptiveDecodingConfig.budget_scale must be a finite number > 0, got {self.budget_scale}."
            )
        self.budget_scale = float(self.budget_scale)
        if self.prompt_pooling not in PROMPT_POOLINGS:
            raise ValueError(
                f"AdaptiveDecodingConfig.prompt_pooling must be one of {PROMPT_POOLINGS}, got {self.prompt_pooling!r}."
            )
        temperature = self.policy_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"AdaptiveDecodingConfig.policy_temperature must be > 0, got {temperature!r}.")
        self.policy_temperature = float(temperature)
        if self.context_features not in CONTEXT_FEATURES:
            raise ValueError(
                f"AdaptiveDecodingConfig.context_features must be one of {CONTEXT_FEATURES}, got "
                f"{self.context_features!r}."
            )
        if self.context_features != "hidden_state" and self.level != "token":
            raise ValueError(
                f"AdaptiveDecodingConfig.context_features={self.context_features!r} is a token-level feature (read "
                f"from each step's next-token distribution); level is {self.level!r}. Use "
                "context_features='hidden_state'."
            )

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @property
    def action_names(self) -> list[str]:
        return [action.name for action in self.actions]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AdaptiveDecodingConfig:
        """
        Build a config from one of the paper's action sets.

        Args:
            name (`str`):
                `"math-seq"` (Table 11), `"code-seq"` (Table 12), `"mixed-seq"` (Table 13), `"math-token"` (Table 14)
                or `"candidate-pool"` (the 180 strategies of Table 10).
            overrides:
                Any other field of this config, e.g. `level="token"` or `budget_feature=None`.
        """
        if name not in ACTION_PRESETS:
            raise ValueError(f"Unknown action preset {name!r}; available presets: {sorted(ACTION_PRESETS)}.")
        level, make_actions = ACTION_PRESETS[name]
        return cls(**{"actions": make_actions(), "level": level, **overrides})

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["actions"] = [action.to_dict() for action in self.actions]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdaptiveDecodingConfig:
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"Unknown AdaptiveDecodingConfig field(s) {sorted(unknown)}; allowed: {[f.name for f in fields(cls)]}."
            )
        return cls(**values)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> AdaptiveDecodingConfig:
        with open(path) as handle:
            return cls.from_dict(json.load(handle))

    @classmethod
    def coerce(cls, value: AdaptiveDecodingConfig | Mapping[str, Any] | str) -> AdaptiveDecodingConfig:
        """Accept a config, its dict, a preset name, or a path to a JSON file written by `to_json_file`."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, str):
            if value in ACTION_PRESETS:
                return cls.from_preset(value)
            if os.path.isfile(value):
                return cls.from_json_file(value)
            raise ValueError(
                f"{value!r} is neither an action preset ({sorted(ACTION_PRESETS)}) nor a JSON config file."
            )
        raise ValueError(f"Cannot build an AdaptiveDecodingConfig from {type(value).__name__}: {value!r}.")
