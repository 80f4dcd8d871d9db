"""Draft adapters: a learned controller of speculative decoding's draft length, as a transformers model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from ..adapters.modeling import AutoDecodingAdapter, check_base_model, init_adapter_weights

# What the controller sees before a cycle's first token and after each drafted one, besides the target's last hidden
# state. Order matters: it is
# the column order of `features`, and it is saved in every config so that a saved adapter documents its inputs.
DRAFT_FEATURES = (
    "draft_prob",  # the draft's probability of the token it just drafted (0 before the first, or without probs)
    "draft_entropy",  # entropy of the draft's distribution at that token, over log(vocabulary size)
    "draft_margin",  # top-1 minus top-2 probability of that distribution
    "has_draft_probs",  # 1 after a token from a source with probabilities (draft model, early exit), else 0
    "cumulative_draft_prob",  # product of draft_prob over the tokens drafted so far in this cycle
    "position",  # how many tokens this cycle has drafted, over max_draft_tokens
    "acceptance_ema",  # moving average of the accepted share of drafted tokens over past cycles (0.5 at first)
    "last_accepted",  # tokens accepted in the previous cycle, over max_draft_tokens
    "remaining_tokens",  # log1p(tokens the call may still generate) / log1p(1024)
    "has_hidden_state",  # 0 in the first cycle, before the target has run: the hidden state is zeros then
)


CANDIDATE_SOURCES = ("assistant_model", "early_exit", "prompt_lookup")


class IncompatibleDraftSourceError(ValueError):
    """Raised when a draft adapter is used with a candidate source it cannot control."""


@strict
class DraftAdapterConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DraftAdapterModel`]: a policy that, before each draft-and-verify cycle of speculative decoding
    and after each token the draft proposes, decides whether to stop drafting and let the target verify.

    Args:
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the target language model whose hidden state the policy reads.
        base_model_revision (`str`, *optional*):
            Its revision, when known.
        base_model_hidden_size (`int`):
            Width of the target's final hidden state.
        base_model_vocab_size (`int`, *optional*):
            Vocabulary size of the target.
        max_draft_tokens (`int`, defaults to 8):
            Hard cap on the tokens drafted per cycle; drafting stops there whatever the policy says.
        use_hidden_state (`bool`, defaults to `True`):
            Feed the target's last hidden state to the policy; without it the policy sees only `DRAFT_FEATURES`.
        initial_stop_probability (`float`, defaults to 0.25):
            The stop probability of a fresh adapter at every token (its output layer starts at zero), so that a fresh
            adapter drafts `(1 - p) / p` tokens per cycle on average.
        adapter_hidden_size (`int`, defaults to 64):
            Width of the policy MLP.
        num_hidden_layers (`int`, defaults to 2):
            Number of linear layers in the policy MLP.
        hidden_state_size (`int`, defaults to 32):
            The target's hidden state is normalised and projected to this width before it meets the features.
        hidden_act (`str`, defaults to `"silu"`):
            Activation between layers.
        initializer_range (`float`, defaults to 0.02):
            Std of the normal init.
        candidate_source (`str`, *optional*):
            The candidate source the adapter was trained for (`"assistant_model"`, `"early_exit"` or
            `"prompt_lookup"`); it works with any, but its decisions are tuned to that one.
        feature_names (`list[str]`):
            The scalar features, in order (`DRAFT_FEATURES`); recorded so that a saved adapter documents its inputs.
    """

    model_type = "draft_adapter"

    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    base_model_hidden_size: int = 64
    base_model_vocab_size: int | None = None
    max_draft_tokens: int = 8
    use_hidden_state: bool = True
    initial_stop_probability: float = 0.25
    adapter_hidden_size: int = 64
    num_hidden_layers: int = 2
    hidden_state_size: int = 32
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    candidate_source: str | None = None
    feature_names: list | None = None

    def __post_init__(self, **kwargs):
        if self.feature_names is None:
            self.feature_names = list(DRAFT_FEATURES)
        if list(self.feature_names) != list(DRAFT_FEATURES):
            raise ValueError(
                f"DraftAdapterConfig.feature_names {self.feature_names} are not the features this version computes "
                f"({list(DRAFT_FEATURES)}): the adapter was saved by another version of hf_adaptive_decoding."
            )
        for name in ("base_model_hidden_size", "adapter_hidden_size", "num_hidden_layers", "hidden_state_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DraftAdapterConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if isinstance(self.max_draft_tokens, bool) or not 1 <= self.max_draft_tokens <= 128:
            raise ValueError(
                f"DraftAdapterConfig.max_draft_tokens must be an int in [1, 128], got {self.max_draft_tokens}."
            )
        if not 0.0 < self.initial_stop_probability < 1.0:
            raise ValueError(
                f"DraftAdapterConfig.initial_stop_probability must be in (0, 1), got {self.initial_stop_probability}."
            )
        if self.candidate_source not in (None, *CANDIDATE_SOURCES):
            raise ValueError(
                f"DraftAdapterConfig.candidate_source must be one of {CANDIDATE_SOURCES} or None, got "
                f"{self.candidate_source!r}."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"DraftAdapterConfig.hidden_act {self.hidden_act!r} is not one of {sorted(ACT2FN)}.")
        super().__post_init__(**kwargs)


@dataclass
class DraftAdapterOutput(ModelOutput):
    """
    Args:
        stop_logits (`torch.FloatTensor` of shape `(batch_size,)`):
            `sigmoid(stop_logits)` is the probability of stopping the draft after the current token.
    """

    stop_logits: torch.FloatTensor | None = None


class DraftAdapterPreTrainedModel(PreTrainedModel):
    config_class = DraftAdapterConfig
    base_model_prefix = "draft_adapter"
    main_input_name = "features"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        output_layer = getattr(self, "output_layer", None)
        init_adapter_weights(module, self.config.initializer_range, (output_layer,))
        if module is output_layer:
            p = self.config.initial_stop_probability
            module.bias.fill_(math.log(p / (1 - p)))


class DraftAdapterModel(DraftAdapterPreTrainedModel):
    """
    A draft-length controller for speculative decoding (the Learning-to-Draft idea, in transformers' assisted
    generation): before a cycle's first token and after each drafted one, `pi(stop | h, features)` from the target's
    last hidden state `h` and the scalar `DRAFT_FEATURES`. Stopping before the first token skips drafting for that
    cycle (it then costs a plain decoding step). Use it through `model.generate(..., assistant_model=... |
    prompt_lookup_num_tokens=... | assistant_early_exit=..., decoding_adapter=draft_adapter)`; the target's
    acceptance rule is unchanged, so the output is the target's.
    """

    level = "draft"

    def __init__(self, config: DraftAdapterConfig):
        super().__init__(config)
        act = ACT2FN[config.hidden_act]
        in_features = len(DRAFT_FEATURES)
        if config.use_hidden_state:
            self.hidden_state_projection = nn.Sequential(
                nn.LayerNorm(config.base_model_hidden_size),
                nn.Linear(config.base_model_hidden_size, config.hidden_state_size),
            )
            in_features += config.hidden_state_size
        layers: list[nn.Module] = []
        for _ in range(config.num_hidden_layers - 1):
            layers += [nn.Linear(in_features, config.adapter_hidden_size), act]
            in_features = config.adapter_hidden_size
        self.mlp = nn.Sequential(*layers)
        self.output_layer = nn.Linear(in_features, 1)
        self.add_model_tags(["hf-adaptive-decoding", "draft-adapter", "speculative-decoding"])
        self.post_init()

    @property
    def max_draft_tokens(self) -> int:
        return self.config.max_draft_tokens

    def forward(
        self, features: torch.Tensor, hidden_states: torch.Tensor | None = None, return_dict: bool | None = None
    ) -> DraftAdapterOutput | tuple:
        """
        Args:
            features (`torch.FloatTensor` of shape `(batch_size, len(DRAFT_FEATURES))`):
                The scalar features, in the order of `DRAFT_FEATURES`.
            hidden_states (`torch.FloatTensor` of shape `(batch_size, base_model_hidden_size)`, *optional*):
                The target's final hidden state at its last accepted token; required when `use_hidden_state`.
        """
        if features.dim() != 2 or features.shape[-1] != len(DRAFT_FEATURES):
            raise ValueError(
                f"features must have shape (batch, {len(DRAFT_FEATURES)}), one column per DRAFT_FEATURES entry; got "
                f"{tuple(features.shape)}."
            )
        inputs = features.to(device=self.device, dtype=self.dtype)
        if self.config.use_hidden_state:
            expected = (features.shape[0], self.config.base_model_hidden_size)
            if hidden_states is None or tuple(hidden_states.shape) != expected:
                got = None if hidden_states is None else tuple(hidden_states.shape)
                raise ValueError(f"hidden_states must have shape {expected} (the target's hidden size), got {got}.")
            projected = self.hidden_state_projection(hidden_states.to(device=self.device, dtype=self.dtype))
            inputs = torch.cat([inputs, projected], dim=-1)
        stop_logits = self.output_layer(self.mlp(inputs)).squeeze(-1)
        if return_dict is False:
            return (stop_logits,)
        return DraftAdapterOutput(stop_logits=stop_logits)

    @torch.no_grad()
    def decide_stop(
        self, features: torch.Tensor, hidden_states: torch.Tensor | None = None, deterministic: bool = False
    ) -> tuple[torch.BoolTensor, torch.FloatTensor]:
        """A stop decision per row, sampled (or `p_stop > 0.5` if `deterministic`); returns `(stop, p_stop)`."""
        probs = torch.sigmoid(self(features, hidden_states).stop_logits.float())
        stop = probs > 0.5 if deterministic else torch.rand_like(probs) < probs
        return stop, probs

    def check_compatible(self, model: PreTrainedModel) -> None:
        """Raise [`IncompatibleBaseModelError`] if `model` is not the target this adapter was built for."""
        check_base_model(self.config, model)

    @classmethod
    def for_model(
        cls, model: PreTrainedModel, base_model_revision: str | None = None, **config_kwargs
    ) -> DraftAdapterModel:
        """A fresh draft adapter sized for the target `model` (fields of [`DraftAdapterConfig`] as keywords)."""
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"`model` must be a transformers PreTrainedModel, got {type(model).__name__}.")
        text_config = model.config.get_text_config(decoder=True)
        config = DraftAdapterConfig(
            base_model_name_or_path=getattr(model, "name_or_path", None) or None,
            base_model_revision=base_model_revision,
            base_model_hidden_size=text_config.hidden_size,
            base_model_vocab_size=text_config.vocab_size,
            **config_kwargs,
        )
        return cls(config).to(model.device)


AutoConfig.register(DraftAdapterConfig.model_type, DraftAdapterConfig, exist_ok=True)
AutoModel.register(DraftAdapterConfig, DraftAdapterModel, exist_ok=True)
AutoDecodingAdapter.register(DraftAdapterConfig, DraftAdapterModel)
