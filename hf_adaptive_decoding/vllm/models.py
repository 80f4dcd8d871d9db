"""vLLM architectures that let a decoding adapter see the final hidden state of every row vLLM samples.

vLLM's logits processors see logits only. Each architecture `X` vLLM supports gets a twin `HfadAdaptiveX`, a subclass
whose `compute_logits` also keeps the hidden states it was given (one row per request sampled this step, in the
order of the logits the processors receive) for [`~hf_adaptive_decoding.vllm.processor.AdapterLogitsProcessor`]. The
twins are registered in every vLLM process through the `vllm.general_plugins` entry point of this package and chosen
per engine with `hf_overrides={"architectures": ["HfadAdaptiveX"]}`, so engines without an adapter are unaffected and
no forward pass is added.
"""

from __future__ import annotations

from typing import Any

import torch

PREFIX = "HfadAdaptive"


class _SampledHiddenStates:
    """The hidden states the last `compute_logits` call of this process saw (a vLLM worker samples each step's
    logits right after computing them, before the next step's forward)."""

    hidden_states: torch.Tensor | None = None


SAMPLED = _SampledHiddenStates()


def adaptive_architecture_name(architecture: str) -> str:
    return PREFIX + architecture


def _adaptive_class(base: type) -> type:
    def compute_logits(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        logits = base.compute_logits(self, hidden_states, *args, **kwargs)
        SAMPLED.hidden_states = hidden_states
        return logits

    name = adaptive_architecture_name(base.__name__)
    return type(name, (base,), {"compute_logits": compute_logits, "__module__": __name__, "__qualname__": name})


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """`HfadAdaptive<X>`, built on first use from vLLM's class for `<X>` (the registry imports `module:class`
    targets lazily, in whichever process needs them)."""
    if not name.startswith(PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        from vllm import ModelRegistry

        architecture = name[len(PREFIX) :]
        if architecture not in ModelRegistry.get_supported_archs():
            raise AttributeError(f"vLLM has no architecture {architecture!r} to wrap as {name!r}.")
        _CLASSES[name] = _adaptive_class(ModelRegistry.models[architecture].load_model_cls())
    return _CLASSES[name]


def register() -> None:
    """The `vllm.general_plugins` entry point: register `HfadAdaptive<X>` for every architecture `X` of vLLM's
    registry, lazily (a `module:class` string each; nothing is imported until an engine asks for one)."""
    from vllm import ModelRegistry

    for architecture in sorted(ModelRegistry.get_supported_archs()):
        if architecture.startswith(PREFIX):
            continue
        name = adaptive_architecture_name(architecture)
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, f"{__name__}:{name}")
