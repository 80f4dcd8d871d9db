import math

import pytest
import torch

from hf_adaptive_decoding.draft_calibration import calibrate_cost_model, source_kwargs

from .conftest import make_tiny_model


@pytest.fixture
def target():
    model = make_tiny_model("llama")
    model.generation_config.top_k = None
    model.generation_config.eos_token_id = None
    return model


def _prompts(count: int = 2):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, 128, (1, 6), generator=generator).repeat(1, 2) for _ in range(count)]


@pytest.mark.parametrize("source", ["early_exit", "assistant_model"])
def test_calibration_times_every_draft_length_and_fits_a_line(target, source):
    draft = make_tiny_model("llama", seed=1)
    draft.generation_config.eos_token_id = None
    cost = calibrate_cost_model(
        target, _prompts(), source, 3, draft_model=draft, early_exit_layer=1, max_new_tokens=12, disable_tqdm=True
    )
    assert cost.source == source
    assert {k for k, _, _ in cost.measurements} >= {1, 2, 3}
    assert all(seconds > 0 and count > 0 for _, seconds, count in cost.measurements)
    assert math.isfinite(cost.intercept) and math.isfinite(cost.per_token) and cost.plain_step > 0
    # The fitted line is the least-squares line through the measured cycles: it passes between them.
    medians = torch.tensor([seconds for _, seconds, _ in cost.measurements])
    fitted = cost.cycle_seconds(torch.tensor([k for k, _, _ in cost.measurements]))
    assert fitted.min() <= medians.max() and fitted.max() >= medians.min()


def test_calibration_errors(target):
    with pytest.raises(ValueError, match="at least one prompt"):
        calibrate_cost_model(target, [], "prompt_lookup", 3)
    with pytest.raises(ValueError, match="source='early_exit' needs early_exit_layer"):
        source_kwargs("early_exit", 3)
    with pytest.raises(ValueError, match="source must be 'assistant_model', 'early_exit' or 'prompt_lookup', got 'x'"):
        source_kwargs("x", 3)
    no_repeats = [torch.arange(3, 15)[None]]
    with pytest.raises(ValueError, match="a line needs two"):
        calibrate_cost_model(target, no_repeats, "prompt_lookup", 3, max_new_tokens=2, disable_tqdm=True)
