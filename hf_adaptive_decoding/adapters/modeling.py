"""Decoding adapters as transformers models: config, policy network, Auto class, base-model checks."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from ..generation.noise import choose_actions
from .configuration import NUM_TOKEN_STATISTICS, AdaptiveDecodingConfig


class IncompatibleBaseModelError(ValueError):
    """Raised when a decoding adapter is used with a language model it was not built for."""


@strict
class DecodingAdapterConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DecodingAdapterModel`]: the decision problem (`decoding`, an [`AdaptiveDecodingConfig`] as a
    dict), the policy network, and the base language model it was built for.

    Args:
        decoding (`dict`):
            [`AdaptiveDecodingConfig.to_dict`] of the action space, level and features.
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the language model the adapter reads hidden states from.
        base_model_revision (`str`, *optional*):
            Its revision, when known.
        base_model_hidden_size (`int`):
            Width of the language model's final hidden state (the context feature).
        base_model_vocab_size (`int`):
            Vocabulary size of the language model.
        adapter_hidden_size (`int`, defaults to 256):
            Width of the policy MLP.
        num_hidden_layers (`int`, defaults to 3):
            Number of linear layers in the policy MLP (the paper uses 3).
        hidden_act (`str`, defaults to `"silu"`):
            Activation between layers.
        dropout (`float`, defaults to 0.1):
            Dropout between layers (active in training only).
        budget_hidden_size (`int`, defaults to 32):
            Width of the 2-layer budget encoder whose output is concatenated to the context features.
        budget_logits (`bool`, defaults to `False`):
            Also add to the action logits a function of the budget alone: a 2-layer MLP of the centred budget feature
            `2 x - 1`, its first layer initialised as `adapter_hidden_size` random features of order 1 (weights of std
            2, biases of std 1, not the MLP's `initializer_range`), its output layer at zero (a fresh adapter is
            still the uniform policy). Through the MLP alone the budget is one small input beside hundreds of
            unit-scale context features, and a policy trained on several budgets moves alike at all of them
            (recipes/results/experiments.md, Q3); through this path a logit moves about as fast with the budget as
            with the context.
        normalize_features (`bool`, defaults to `True`):
            LayerNorm the context features before the MLP; hidden-state scales differ a lot between models.
        initializer_range (`float`, defaults to 0.02):
            Std of the normal init. The output layer starts at zero, so a fresh adapter is the uniform policy.
    """

    model_type = "decoding_adapter"

    decoding: dict | None = None
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    base_model_hidden_size: int = 64
    base_model_vocab_size: int | None = None
    adapter_hidden_size: int = 256
    num_hidden_layers: int = 3
    hidden_act: str = "silu"
    dropout: float = 0.1
    budget_hidden_size: int = 32
    budget_logits: bool = False
    normalize_features: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.decoding is None:
            self.decoding = AdaptiveDecodingConfig.from_preset("math-token").to_dict()
        # Validates and normalises (e.g. top_k=0 -> None); raises a ValueError naming the bad field.
        self.decoding = AdaptiveDecodingConfig.coerce(self.decoding).to_dict()
        for name in ("base_model_hidden_size", "adapter_hidden_size", "num_hidden_layers", "budget_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DecodingAdapterConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.base_model_vocab_size is not None and self.base_model_vocab_size < 1:
            raise ValueError(
                f"DecodingAdapterConfig.base_model_vocab_size must be >= 1, got {self.base_model_vocab_size}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DecodingAdapterConfig.dropout must be in [0, 1), got {self.dropout}.")
        if self.budget_logits and AdaptiveDecodingConfig.coerce(self.decoding).budget_feature is None:
            raise ValueError(
                "DecodingAdapterConfig.budget_logits=True maps the budget to the action logits, but the decoding "
                "config has budget_feature=None (no budget); set budget_feature ('log' or 'linear') or "
                "budget_logits=False."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"DecodingAdapterConfig.hidden_act {self.hidden_act!r} is not one of {sorted(ACT2FN)}.")
        super().__post_init__(**kwargs)

    @property
    def decoding_config(self) -> AdaptiveDecodingConfig:
        return AdaptiveDecodingConfig.from_dict(self.decoding)

    @property
    def num_actions(self) -> int:
        return len(self.decoding["actions"])


@dataclass
class DecodingAdapterOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_actions)`):
            Policy logits, already divided by the policy temperature: `softmax(logits)` is pi(a | x).
    """

    logits: torch.FloatTensor | None = None


@torch.no_grad()
def init_adapter_weights(
    module: nn.Module, initializer_range: float, output_layers: tuple[nn.Module | None, ...]
) -> None:
    """Normal linear weights, zero biases, unit LayerNorms, zero output layers: a fresh policy ignores its input."""
    if isinstance(module, nn.Linear):
        module.weight.normal_(mean=0.0, std=initializer_range)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()
    if any(module is layer for layer in output_layers):
        module.weight.zero_()


class DecodingAdapterPreTrainedModel(PreTrainedModel):
    config_class = DecodingAdapterConfig
    base_model_prefix = "adapter"
    main_input_name = "hidden_states"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        budget_logits = getattr(self, "budget_logits", None)
        zero_init = (getattr(self, "output_layer", None), None if budget_logits is None else budget_logits[-1])
        init_adapter_weights(module, self.config.initializer_range, zero_init)
        if budget_logits is not None and module is budget_logits[0]:
            # Random features of the budget of order 1, as many as the MLP's last layer has: under Adam a logit
            # moves about as fast through this path as through the MLP, and smoothly in the budget.
            module.weight.normal_(0.0, 2.0)
            module.bias.normal_(0.0, 1.0)


class DecodingAdapterModel(DecodingAdapterPreTrainedModel):
    """
    The paper's decoding adapter: an MLP policy pi(a | [e; budget]) over a discrete set of decoding actions.

    The context `e` is a final hidden state of the frozen language model (token level: the current step's; sequence
    level: the prompt's last token or mean). The budget (remaining tokens `b_t`, or parallel samples `B`) is encoded
    by a 2-layer MLP and concatenated to `e` (Section 3.1). Use it through `model.generate(decoding_adapter=...)`.
    """

    def __init__(self, config: DecodingAdapterConfig):
        super().__init__(config)
        decoding = config.decoding_config
        self.level = decoding.level
        self.budget_feature = decoding.budget_feature
        self.budget_scale = decoding.budget_scale
        self.prompt_pooling = decoding.prompt_pooling
        self.policy_temperature = decoding.policy_temperature
        self.context_features = decoding.context_features
        act = ACT2FN[config.hidden_act]
        # An entropy-only adapter sees one number per step: a LayerNorm over one feature would make it 0. The
        # next-token statistics after a hidden state keep their own scale (nats, a probability).
        self.num_statistics = NUM_TOKEN_STATISTICS if self.context_features == "hidden_state+stats" else 0
        normalized_size = self.context_size - self.num_statistics
        normalize = config.normalize_features and normalized_size > 1
        self.feature_norm = nn.LayerNorm(normalized_size) if normalize else nn.Identity()
        in_features = self.context_size
        if self.budget_feature is not None:
            self.budget_encoder = nn.Sequential(
                nn.Linear(1, config.budget_hidden_size),
                act,
                nn.Linear(config.budget_hidden_size, config.budget_hidden_size),
            )
            in_features += config.budget_hidden_size
        layers: list[nn.Module] = []
        for _ in range(config.num_hidden_layers - 1):
            layers += [nn.Linear(in_features, config.adapter_hidden_size), act, nn.Dropout(config.dropout)]
            in_features = config.adapter_hidden_size
        self.mlp = nn.Sequential(*layers)
        self.output_layer = nn.Linear(in_features, config.num_actions)
        self.budget_logits = None
        if config.budget_logits:
            self.budget_logits = nn.Sequential(
                nn.Linear(1, config.adapter_hidden_size),
                act,
                nn.Linear(config.adapter_hidden_size, config.num_actions),
            )
        self.add_model_tags(["hf-adaptive-decoding", "decoding-adapter", f"{self.level}-level"])
        self.post_init()

    @property
    def decoding_config(self) -> AdaptiveDecodingConfig:
        return self.config.decoding_config

    @property
    def context_size(self) -> int:
        """Width of the context features: the base model's hidden size, 1 for an entropy-only adapter, the hidden
        size plus the next-token statistics for `"hidden_state+stats"`."""
        if self.context_features == "entropy":
            return 1
        extra = NUM_TOKEN_STATISTICS if self.context_features == "hidden_state+stats" else 0
        return self.config.base_model_hidden_size + extra

    def encode_budget(self, budget: torch.Tensor) -> torch.Tensor:
        """Map raw budgets (remaining tokens or parallel samples, shape `(batch,)`) to the scalar budget feature."""
        budget = budget.float().clamp(min=0)  # in float32: bf16 cannot tell budget 1000 from 1001
        if self.budget_feature == "linear":
            encoded = budget / self.budget_scale
        else:
            encoded = torch.log1p(budget) / math.log1p(self.budget_scale)
        return encoded.to(self.dtype)

    def forward(
        self, hidden_states: torch.Tensor, budget: torch.Tensor | None = None, return_dict: bool | None = None
    ) -> DecodingAdapterOutput | tuple:
        """
        Args:
            hidden_states (`torch.FloatTensor` of shape `(batch_size, context_size)`):
                Context features: final hidden states of the base model (any dtype; cast to the adapter's), or, for
                an entropy-only adapter, the next-token entropy as `(batch_size, 1)`.
            budget (`torch.Tensor` of shape `(batch_size,)` or a scalar, *optional*):
                Raw budget: remaining tokens (token level) or parallel samples (sequence level). Required when the
                adapter was configured with a `budget_feature`.
        """
        if hidden_states.dim() != 2 or hidden_states.shape[-1] != self.context_size:
            what = {
                "entropy": "the next-token entropy",
                "hidden_state+stats": "the base model's hidden size, then the next-token entropy and max probability",
            }.get(self.context_features, "the base model's hidden size")
            raise ValueError(
                f"hidden_states must have shape (batch, {self.context_size}), {what}; got "
                f"{tuple(hidden_states.shape)}."
            )
        features = hidden_states.to(device=self.device, dtype=self.dtype)
        if self.num_statistics:
            split = features.shape[-1] - self.num_statistics
            features = torch.cat([self.feature_norm(features[:, :split]), features[:, split:]], dim=-1)
        else:
            features = self.feature_norm(features)
        if self.budget_feature is not None:
            if budget is None:
                raise ValueError(
                    f"This adapter conditions on the budget (budget_feature={self.budget_feature!r}); pass `budget`."
                )
            budget = torch.as_tensor(budget, device=features.device).expand(features.shape[0])
            budget_feature = self.encode_budget(budget)[:, None]
            features = torch.cat([features, self.budget_encoder(budget_feature)], dim=-1)
        logits = self.output_layer(self.mlp(features))
        if self.budget_logits is not None:
            # Centred, so that budgets below and above the middle of the scale start on opposite sides.
            logits = logits + self.budget_logits(2 * budget_feature - 1)
        logits = logits / self.policy_temperature
        if return_dict is False:
            return (logits,)
        return DecodingAdapterOutput(logits=logits)

    @torch.no_grad()
    def select_actions(
        self,
        hidden_states: torch.Tensor,
        budget: torch.Tensor | None = None,
        deterministic: bool = False,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.LongTensor, torch.FloatTensor]:
        """
        Sample (or, with `deterministic=True`, take the argmax of) an action per row. Returns `(actions, probs)`.

        `noise` holds one uniform in [0, 1) per row (see [`~generation.noise.keyed_uniforms`]): the action is drawn by
        inverse CDF from it, so it depends on that row alone. Without it, uniforms come from torch's global generator.
        """
        probs = self(hidden_states, budget).logits.float().softmax(dim=-1)
        return choose_actions(probs, deterministic, noise), probs

    def check_compatible(self, model: PreTrainedModel) -> None:
        """
        Raise [`IncompatibleBaseModelError`] if `model` is not the language model this adapter was built for
        (hidden size, vocabulary size, or a different base model id when both ids are known).
        """
        check_base_model(self.config, model)


def check_base_model(config: PretrainedConfig, model: PreTrainedModel) -> None:
    """Raise [`IncompatibleBaseModelError`] unless `model` matches the `base_model_*` fields of an adapter's config."""
    name_or_path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or None
    check_base_model_config(config, model.config, name_or_path, type(model).__name__)


def check_base_model_config(
    config: PretrainedConfig, model_config: PretrainedConfig, name_or_path: str | None, kind: str
) -> None:
    """[`check_base_model`] from the language model's config alone (e.g. for a model another engine loads): `kind`
    names the model in the error."""
    text_config = model_config.get_text_config(decoder=True)
    hidden_size = getattr(text_config, "hidden_size", None)
    vocab_size = getattr(text_config, "vocab_size", None)
    expected_id = config.base_model_name_or_path
    actual_id = name_or_path
    problems = []
    if hidden_size != config.base_model_hidden_size:
        problems.append(f"hidden size {hidden_size} != {config.base_model_hidden_size}")
    if config.base_model_vocab_size is not None and vocab_size != config.base_model_vocab_size:
        problems.append(f"vocabulary size {vocab_size} != {config.base_model_vocab_size}")
    if _is_hub_id(expected_id) and _is_hub_id(actual_id) and expected_id != actual_id:
        problems.append("different base model id")
    if problems:
        raise IncompatibleBaseModelError(
            f"This {config.model_type.replace('_', ' ')} was built for {expected_id or 'an unnamed model'!r} (hidden "
            f"size {config.base_model_hidden_size}, vocabulary {config.base_model_vocab_size}) but is used with "
            f"{actual_id or 'an unnamed model'!r} ({kind}, hidden size {hidden_size}, vocabulary "
            f"{vocab_size}): {'; '.join(problems)}. Build one for this model with "
            "`AutoDecodingAdapter.for_model(model, config)`."
        )


def _is_hub_id(name_or_path: str | None) -> bool:
    """`org/name` or `name`, and not a local folder: the same weights copied to a folder keep their shapes but not
    their id, so ids are compared only when both sides are Hub ids (shapes are always compared)."""
    if not name_or_path or os.path.isdir(name_or_path):
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name_or_path) is not None


class AutoDecodingAdapter:
    """
    Builds and loads decoding adapters, in the manner of transformers' Auto classes.

    ```python
    >>> adapter = AutoDecodingAdapter.for_model(model, "math-token")          # a fresh adapter sized for `model`
    >>> adapter.save_pretrained("my-adapter")                                   # safetensors + config.json
    >>> adapter = AutoDecodingAdapter.from_pretrained("my-adapter")             # or a Hub repo id
    >>> out = model.generate(**inputs, decoding_adapter=adapter, max_new_tokens=64)
    ```
    """

    _model_classes: dict[type[PretrainedConfig], type[PreTrainedModel]] = {}

    def __init__(self):
        raise OSError("AutoDecodingAdapter is not meant to be instantiated; use `from_pretrained` or `for_model`.")

    @classmethod
    def register(cls, config_class: type[PretrainedConfig], model_class: type[PreTrainedModel]) -> None:
        """Register a new kind of adapter (its config class must be registered with `AutoConfig`)."""
        cls._model_classes[config_class] = model_class

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        return cls._model_class(config)._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
        """
        Load an adapter from a local folder or a Hub repo (safetensors only; pickled weights are refused).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                Folder written by `save_pretrained`, or a Hub repo id.
            kwargs:
                Passed to [`~transformers.PreTrainedModel.from_pretrained`] (`revision`, `token`, `cache_dir`,
                `local_files_only`, `dtype`, ...).
        """
        path = str(pretrained_model_name_or_path)
        if (os.path.isabs(path) or path.startswith(".") or os.sep * 2 in path) and not os.path.isdir(path):
            raise FileNotFoundError(
                f"No adapter folder at {path!r} (looked for a local folder: the path is not a Hub id)."
            )
        hub_kwargs = {
            key: kwargs[key]
            for key in ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")
            if key in kwargs
        }
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        model_class = cls._model_class(config)
        return model_class.from_pretrained(
            pretrained_model_name_or_path, config=config, use_safetensors=True, **kwargs
        )

    @classmethod
    def for_model(
        cls,
        model: PreTrainedModel,
        config: AdaptiveDecodingConfig | dict | str = "math-token",
        base_model_revision: str | None = None,
        **adapter_kwargs: Any,
    ) -> DecodingAdapterModel:
        """
        A freshly initialised adapter sized for `model` (its policy starts uniform over the actions).

        Args:
            model ([`~transformers.PreTrainedModel`]):
                The (frozen) causal language model the adapter will read hidden states from.
            config ([`AdaptiveDecodingConfig`], `dict` or `str`, defaults to `"math-token"`):
                The decision problem, or the name of a preset (see [`AdaptiveDecodingConfig.from_preset`]).
            base_model_revision (`str`, *optional*):
                Revision of `model` to record in the adapter's config.
            adapter_kwargs:
                Fields of [`DecodingAdapterConfig`] for the network, e.g. `adapter_hidden_size=128`.
        """
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"`model` must be a transformers PreTrainedModel, got {type(model).__name__}.")
        text_config = model.config.get_text_config(decoder=True)
        adapter_config = DecodingAdapterConfig(
            decoding=AdaptiveDecodingConfig.coerce(config).to_dict(),
            base_model_name_or_path=getattr(model, "name_or_path", None) or None,
            base_model_revision=base_model_revision,
            base_model_hidden_size=text_config.hidden_size,
            base_model_vocab_size=text_config.vocab_size,
            **adapter_kwargs,
        )
        return cls.from_config(adapter_config).to(model.device)

    @classmethod
    def _model_class(cls, config: PretrainedConfig) -> type[PreTrainedModel]:
        model_class = cls._model_classes.get(type(config))
        if model_class is None:
            raise ValueError(
                f"{type(config).__name__} (model_type {getattr(config, 'model_type', None)!r}) is not a decoding "
                f"adapter config; known adapter types: {sorted(c.model_type for c in cls._model_classes)}."
            )
        return model_class


AutoConfig.register(DecodingAdapterConfig.model_type, DecodingAdapterConfig, exist_ok=True)
AutoModel.register(DecodingAdapterConfig, DecodingAdapterModel, exist_ok=True)
AutoDecodingAdapter.register(DecodingAdapterConfig, DecodingAdapterModel)
