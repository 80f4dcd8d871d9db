import pytest
import torch

from hf_adaptive_decoding.generation.noise import (
    ACTION_STREAM,
    TOKEN_STREAM,
    choose_actions,
    derive_keys,
    global_generator_key,
    keyed_uniforms,
    noise_keys,
    sample_from_logits,
    sample_from_probs,
)


def test_uniforms_are_a_function_of_key_position_and_stream_only():
    keys = derive_keys(noise_keys(3, range(6)), torch.arange(6))
    first = keyed_uniforms(keys, 4, TOKEN_STREAM)
    assert torch.equal(first, keyed_uniforms(keys.clone(), 4, TOKEN_STREAM))
    assert torch.equal(first[2:4], keyed_uniforms(keys[2:4], 4, TOKEN_STREAM))  # other rows do not matter
    assert not torch.equal(first, keyed_uniforms(keys, 5, TOKEN_STREAM))
    assert not torch.equal(first, keyed_uniforms(keys, 4, ACTION_STREAM))
    assert not torch.equal(noise_keys(3, [0]), noise_keys(4, [0]))
    assert torch.equal(noise_keys(3, ["a", "b"])[1:], noise_keys(3, ["b"]))


def test_uniforms_look_uniform_and_independent_across_positions():
    keys = derive_keys(noise_keys(0, range(20_000)), 0)
    u, v = keyed_uniforms(keys, 0, TOKEN_STREAM), keyed_uniforms(keys, 1, TOKEN_STREAM)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) * 12 - 1) < 0.03
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert float(((counts - 2000) ** 2 / 2000).sum()) < 30  # chi-square, 9 degrees of freedom (p ~ 4e-4)
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.03


def test_inverse_cdf_sampling_follows_the_distribution_and_never_picks_a_masked_token():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3]).expand(20_000, -1)
    uniforms = keyed_uniforms(derive_keys(noise_keys(1, range(20_000)), 0), 0, TOKEN_STREAM)
    picked = sample_from_probs(probs, uniforms)
    frequencies = torch.bincount(picked, minlength=4).double() / 20_000
    assert frequencies[1] == 0
    assert torch.allclose(frequencies, probs[0].double(), atol=0.015)
    logits = torch.tensor([[0.0, -float("inf"), 2.0], [-float("inf"), 5.0, -float("inf")]])
    extremes = torch.tensor([0.0, 1.0 - 2**-53], dtype=torch.float64)
    assert sample_from_logits(logits, extremes).tolist() == [0, 1]
    assert sample_from_logits(logits, torch.tensor([1.0 - 2**-53, 0.0], dtype=torch.float64)).tolist() == [2, 1]


def test_choose_actions_argmax_or_keyed_draw():
    probs = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert choose_actions(probs, deterministic=True).tolist() == [1, 0]
    assert choose_actions(probs, noise=torch.tensor([0.1, 0.95], dtype=torch.float64)).tolist() == [0, 1]


def test_the_generator_key_does_not_advance_torchs_generator():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    key = global_generator_key("cpu")
    assert torch.equal(torch.get_rng_state(), state)
    assert key == global_generator_key("cpu")
    torch.rand(1)
    assert key != global_generator_key("cpu")


@pytest.mark.parametrize("bad", [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0, 1.0]])])
def test_sampling_a_single_row(bad):
    assert sample_from_probs(bad, torch.tensor([0.99], dtype=torch.float64)).tolist() == [bad.shape[1] - 1]


@pytest.mark.parametrize(
    "probs", [[[float("nan")] * 3, [0.2, 0.3, 0.5]], [[0.5, -0.1, 0.6]], [[0.0, 0.0]], [[float("inf"), 0.0]]]
)
def test_choose_actions_refuses_what_is_not_a_distribution(probs):
    with pytest.raises(ValueError, match=r"row\(s\) \[0\] are not a distribution"):
        choose_actions(torch.tensor(probs), noise=torch.full((len(probs),), 0.5, dtype=torch.float64))
