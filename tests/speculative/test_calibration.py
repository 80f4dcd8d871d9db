import math

import pytest
import torch

from hf_adaptive_decoding.speculative.calibration import MIN_CYCLES_PER_LENGTH, calibrate_cost_model, source_kwargs
from tests.conftest import make_tiny_model


@pytest.fixture
def target():
    model = make_tiny_model("llama")
    model.generation_config.top_k = None
    model.generation_config.eos_token_id = None
    return model


def _prompts(count: int = 2):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, 128, (1, 6), generator=generator).repeat(1, 2) for _ in range(count)]


@pytest.mark.parametrize("source", ["early_exit", "assistant_model", "prompt_lookup"])
def test_calibration_times_every_draft_length_and_tabulates_their_costs(target, source):
    draft = make_tiny_model("llama", seed=1)
    draft.generation_config.eos_token_id = None
    cost = calibrate_cost_model(
        target, _prompts(), source, 3, draft_model=draft, early_exit_layer=1, max_new_tokens=12, disable_tqdm=True
    )
    assert cost.source == source
    assert {k for k, _, _ in cost.measurements} >= ({1, 2, 3} if source != "prompt_lookup" else {1, 3})
    assert all(seconds > 0 and count > 0 for _, seconds, count in cost.measurements)
    assert math.isfinite(cost.intercept) and math.isfinite(cost.per_token) and cost.plain_step > 0
    # One cost per length 0..cap: each well-measured length's median as measured, else the line.
    table = cost.seconds_by_length
    assert len(table) == 4
    counts = {k: count for k, _, count in cost.measurements}
    for k, median, count in cost.measurements:
        assert table[k] == (
            median if count >= MIN_CYCLES_PER_LENGTH else pytest.approx(cost.intercept + k * cost.per_token)
        )
    for k in set(range(4)) - set(counts):
        assert table[k] == pytest.approx(cost.intercept + k * cost.per_token)
    assert cost.cycle_seconds(torch.tensor([0, 1, 3])).tolist() == pytest.approx([table[0], table[1], table[3]])
    # Beyond the calibrated cap, the line fitted to the cycles that drafted.
    assert cost.cycle_seconds(torch.tensor([5])).item() == pytest.approx(cost.intercept + 5 * cost.per_token)


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
