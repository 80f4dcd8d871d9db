"""Learned decoding adapters for transformers: a tiny policy chooses how to sample, per prompt or per token.

Importing this package makes every transformers model's `generate` accept `decoding_adapter=`.
"""

from .configuration import ACTION_PRESETS, AdaptiveDecodingConfig, DecodingAction, candidate_pool
from .default_model import load_default_model
from .generation import AdaptiveDecodingProcessor, AdaptiveGenerateOutput, adaptive_generate, patch_generate
from .modeling import (
    AutoDecodingAdapter,
    DecodingAdapterConfig,
    DecodingAdapterModel,
    DecodingAdapterOutput,
    IncompatibleBaseModelError,
)
from .prompting import encode_chat
from .sampling import ActionTransform, NonFiniteLogitsError
from .tasks import arithmetic_dataset

patch_generate()

__version__ = "0.1.0"

__all__ = [
    "ACTION_PRESETS",
    "ActionTransform",
    "AdaptiveDecodingConfig",
    "AdaptiveDecodingProcessor",
    "AdaptiveGenerateOutput",
    "AutoDecodingAdapter",
    "DecodingAction",
    "DecodingAdapterConfig",
    "DecodingAdapterModel",
    "DecodingAdapterOutput",
    "IncompatibleBaseModelError",
    "NonFiniteLogitsError",
    "adaptive_generate",
    "arithmetic_dataset",
    "candidate_pool",
    "encode_chat",
    "load_default_model",
    "patch_generate",
]
