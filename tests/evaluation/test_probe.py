import pytest
import torch

from hf_adaptive_decoding.data.prompting import encode_prompts
from hf_adaptive_decoding.evaluation.probe import (
    cross_validated_choices,
    cross_validated_static_choices,
    prompt_features,
)
from tests.conftest import make_char_tokenizer


def test_the_probe_finds_which_candidate_a_feature_favours_out_of_fold():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 6, generator=generator)
    favours_first = features[:, 0] > 0
    rewards = torch.stack([favours_first.double(), (~favours_first).double()], dim=1)
    choices = cross_validated_choices(features, rewards, num_folds=4)
    assert (choices == (~favours_first).long()).double().mean() > 0.9


def test_static_choices_are_the_best_on_the_other_folds_per_group():
    rewards = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 6)
    groups = ["a"] * 6 + ["b"] * 6
    assert cross_validated_static_choices(rewards, groups, num_folds=3).tolist() == [0] * 6 + [1] * 6
    uneven = torch.tensor([[1.0, 0.0]] * 8 + [[0.0, 1.0]] * 4)  # without groups: one choice, the majority's
    assert cross_validated_static_choices(uneven, None, num_folds=3).tolist() == [0] * 12


def test_bad_shapes_and_folds_are_named():
    with pytest.raises(ValueError, match=r"agree on problems; got \(3, 4\) and \(2, 2\)"):
        cross_validated_choices(torch.zeros(3, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"num_folds must be in \[2, 3\]"):
        cross_validated_choices(torch.zeros(3, 4), torch.zeros(3, 2), num_folds=5)


def test_prompt_features_are_the_final_hidden_state_at_the_last_prompt_token(llama):
    tokenizer = make_char_tokenizer()
    prompts = ["12+3", "what is it?", "x"]
    features = prompt_features(llama, tokenizer, prompts, instruction="go", batch_size=2)
    encoded = encode_prompts(tokenizer, prompts, ["go"] * 3)
    with torch.no_grad():
        hidden = llama(**encoded, output_hidden_states=True).hidden_states[-1][:, -1]
    torch.testing.assert_close(features, hidden, atol=1e-5, rtol=1e-4)


def test_mean_pooled_prompt_features_average_the_prompt_tokens_padding_excluded(llama):
    tokenizer = make_char_tokenizer()
    prompts = ["12+3", "what is it?", "x"]
    features = prompt_features(llama, tokenizer, prompts, instruction="go", batch_size=2, prompt_pooling="mean")
    for row, prompt in enumerate(prompts):  # one prompt at a time: no padding at all
        encoded = encode_prompts(tokenizer, [prompt], ["go"])
        with torch.no_grad():
            hidden = llama(**encoded, output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(features[row], hidden.mean(dim=0), atol=1e-5, rtol=1e-4)


def test_prompt_features_of_no_prompts_is_an_error(llama):
    with pytest.raises(ValueError, match="got no prompts"):
        prompt_features(llama, make_char_tokenizer(), [])
