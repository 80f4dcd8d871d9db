import math

import pytest
import torch

from hf_adaptive_decoding import DecodingAction
from hf_adaptive_decoding.generation.features import next_token_entropy
from hf_adaptive_decoding.generation.policies import ConstantPolicy, EntropyDynamicTemperatureLogitsWarper

ACTIONS = [DecodingAction(do_sample=False), DecodingAction(temperature=0.5), DecodingAction(temperature=1.25)]


def _entropy(logits: list[float]) -> float:
    """Entropy in nats of softmax(logits), in plain Python (-inf entries have probability 0)."""
    finite = [x for x in logits if x != -math.inf]
    top = max(finite)
    weights = [math.exp(x - top) for x in finite]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0)


# ConstantPolicy


def test_static_policy_always_takes_its_action():
    policy = ConstantPolicy.static(ACTIONS[1])
    assert policy.level == "sequence" and policy.context_features == "hidden_state"
    config = policy.decoding_config
    assert config.actions == [ACTIONS[1]] and config.level == "sequence" and config.budget_feature is None
    for deterministic in (False, True):
        actions, probs = policy.select_actions(torch.randn(5, 7), torch.tensor(3), deterministic)
        assert actions.tolist() == [0] * 5
        assert probs.tolist() == [[1.0]] * 5
    assert ConstantPolicy.static(ACTIONS[0], level="token").decoding_config.level == "token"


def test_mixed_policy_is_uniform_and_samples_every_action_about_equally():
    policy = ConstantPolicy.mixed(ACTIONS, level="token")
    assert policy.level == "token" and policy.decoding_config.level == "token"
    assert policy.decoding_config.actions == ACTIONS
    torch.manual_seed(0)
    actions, probs = policy.select_actions(torch.zeros(30_000, 4))
    torch.testing.assert_close(probs, torch.full((30_000, 3), 1 / 3))
    frequencies = actions.bincount(minlength=3).float() / len(actions)
    assert ((frequencies - 1 / 3).abs() < 0.02).all(), frequencies.tolist()
    # Deterministic: the argmax of a uniform distribution is the first action.
    assert policy.select_actions(torch.zeros(4, 4), deterministic=True)[0].tolist() == [0, 0, 0, 0]


def test_custom_probs_are_sampled_and_argmaxed():
    policy = ConstantPolicy(ACTIONS, probs=[0.1, 0.7, 0.2])
    torch.testing.assert_close(policy.probs, torch.tensor([0.1, 0.7, 0.2]))
    assert policy.select_actions(torch.zeros(3, 2), deterministic=True)[0].tolist() == [1, 1, 1]
    torch.manual_seed(1)
    actions, probs = policy.select_actions(torch.zeros(20_000, 2))
    assert probs.shape == (20_000, 3)
    frequencies = actions.bincount(minlength=3).float() / len(actions)
    torch.testing.assert_close(frequencies, torch.tensor([0.1, 0.7, 0.2]), atol=0.02, rtol=0)


@pytest.mark.parametrize(
    "probs",
    [[0.5, 0.5], [0.5, 0.5, 0.5], [1.2, -0.1, -0.1], [0.2, 0.2, 0.2], [float("nan"), 0.5, 0.5]],
)
def test_bad_probs_are_refused(probs):
    with pytest.raises(ValueError, match="probs must be 3 non-negative numbers summing to 1"):
        ConstantPolicy(ACTIONS, probs=probs)


def test_duplicate_or_no_actions_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        ConstantPolicy([ACTIONS[1], DecodingAction(temperature=0.5, top_k=0)])
    with pytest.raises(ValueError, match="empty"):
        ConstantPolicy([])


# EntropyDynamicTemperatureLogitsWarper


def test_edt_temperatures_follow_the_formula_on_hand_made_logits():
    rows = [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0], [2.0, -1.0, 0.5, -math.inf]]
    warper = EntropyDynamicTemperatureLogitsWarper(temperature=2.0, base=0.5, theta=0.7, min_temperature=0.01)
    scores = torch.tensor(rows)
    entropies = [_entropy(row) for row in rows]
    assert entropies[0] == pytest.approx(math.log(4))
    expected_t = [2.0 * 0.5 ** (0.7 / h) for h in entropies]
    torch.testing.assert_close(warper.row_temperatures(scores), torch.tensor(expected_t))
    expected = torch.tensor([[x / t for x in row] for row, t in zip(rows, expected_t, strict=True)])
    torch.testing.assert_close(warper(None, scores), expected)
    # Uniform over 4 tokens: T = 2 * 0.5 ** (0.7 / ln 4).
    assert float(warper.row_temperatures(scores)[0]) == pytest.approx(2.0 * 0.5 ** (0.7 / math.log(4)), rel=1e-6)


def test_edt_clamps_at_min_temperature_and_keeps_zero_entropy_rows_finite():
    warper = EntropyDynamicTemperatureLogitsWarper(temperature=1.0, base=0.5, theta=1.0, min_temperature=0.3)
    rows = [[0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [7.0, -math.inf, -math.inf, -math.inf], [80.0, 0.0, 0.0, 0.0]]
    scores = torch.tensor(rows)
    formula = [0.5 ** (1.0 / max(_entropy(row), 1e-6)) for row in rows]
    assert formula[0] < 0.3 < formula[1]  # the first row is clamped, the uniform one is not
    temperatures = warper.row_temperatures(scores)
    torch.testing.assert_close(temperatures, torch.tensor([max(t, 0.3) for t in formula]))
    assert temperatures[[0, 2, 3]].tolist() == pytest.approx([0.3, 0.3, 0.3])
    out = warper(None, scores)
    assert not out.isnan().any()
    torch.testing.assert_close(out[2], torch.tensor([7.0 / 0.3, -math.inf, -math.inf, -math.inf]))
    assert torch.isfinite(out[3]).all()
    torch.testing.assert_close(out[3], scores[3] / 0.3)


def test_edt_does_not_modify_its_input_and_keeps_dtype():
    warper = EntropyDynamicTemperatureLogitsWarper()
    scores = torch.randn(3, 11)
    before = scores.clone()
    out = warper(torch.zeros(3, 2, dtype=torch.long), scores)
    assert torch.equal(scores, before)
    assert out is not scores and out.data_ptr() != scores.data_ptr()
    half = warper(None, scores.half())
    assert half.dtype == torch.float16
    # Default settings: T0=1, N=0.8, theta=1.
    expected = 0.8 ** (1.0 / next_token_entropy(scores))
    torch.testing.assert_close(out, scores / expected[:, None])


@pytest.mark.parametrize(
    ("kwargs", "name", "value"),
    [
        ({"temperature": 0.0}, "temperature", "0.0"),
        ({"temperature": -1.0}, "temperature", "-1.0"),
        ({"base": 1.0}, "base", "1.0"),
        ({"base": 0.0}, "base", "0.0"),
        ({"base": 1.5}, "base", "1.5"),
        ({"theta": 0.0}, "theta", "0.0"),
        ({"theta": -2.5}, "theta", "-2.5"),
        ({"min_temperature": 0.0}, "min_temperature", "0.0"),
        ({"temperature": 0.5, "min_temperature": 0.75}, "min_temperature", "0.75"),
    ],
)
def test_edt_constructor_errors_name_the_bad_value(kwargs, name, value):
    with pytest.raises(ValueError) as error:
        EntropyDynamicTemperatureLogitsWarper(**kwargs)
    message = str(error.value)
    assert f"EntropyDynamicTemperatureLogitsWarper.{name} must be" in message
    assert message.endswith(f"got {value}.")


def test_edt_with_a_temperature_below_the_default_floor_lowers_the_floor():
    warper = EntropyDynamicTemperatureLogitsWarper(temperature=0.005)
    assert warper.min_temperature == 0.005
    assert torch.all(warper.row_temperatures(torch.tensor([[0.0, 0.0, 0.0]])) <= 0.005)
