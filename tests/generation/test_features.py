import pytest
import torch

from hf_adaptive_decoding.generation.features import HiddenStateCapture
from tests.conftest import left_padded_batch


def test_captures_the_final_hidden_state_and_removes_its_hook(tiny_model):
    inputs = left_padded_batch()
    decoder = tiny_model.get_decoder()
    with HiddenStateCapture(tiny_model) as capture:
        assert len(decoder._forward_hooks) == 1
        with torch.no_grad():
            reference = tiny_model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1]
        torch.testing.assert_close(capture.last, reference)
        torch.testing.assert_close(capture.prompt_embedding(), reference)  # "last" pooling
    assert not decoder._forward_hooks


def test_mean_pooling_accumulates_over_a_chunked_prompt(llama):
    inputs = left_padded_batch()
    with torch.no_grad(), HiddenStateCapture(llama, prompt_pooling="mean") as capture:
        states = llama(**inputs, output_hidden_states=True).hidden_states[-1]
    mask = inputs["attention_mask"][..., None].float()
    expected = (states * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(capture.prompt_embedding(), expected)

    # the same prompt fed in two chunks with a cache: the mean still covers all of it
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad(), HiddenStateCapture(llama, prompt_pooling="mean") as chunked:
        first = llama(input_ids=ids[:, :4], attention_mask=attention[:, :4], use_cache=True)
        llama(input_ids=ids[:, 4:], attention_mask=attention, past_key_values=first.past_key_values)
    torch.testing.assert_close(chunked.prompt_embedding(), expected, atol=1e-5, rtol=1e-4)


def test_a_model_without_a_decoder_stack_is_refused():
    class Bare(torch.nn.Module):
        def get_decoder(self):
            return self

    with pytest.raises(ValueError, match="no decoder stack"):
        HiddenStateCapture(Bare())


def test_next_token_entropy_of_uniform_one_hot_and_masked_rows():
    import math

    from hf_adaptive_decoding.generation.features import next_token_entropy

    inf = float("inf")
    scores = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # uniform over 5
            [3.0, 3.0, 3.0, 3.0, 3.0],  # uniform over 5, shifted
            [0.0, -inf, -inf, -inf, -inf],  # one-hot
            [1.5, 1.5, -inf, -inf, -inf],  # uniform over 2, the rest masked
            [0.0, 0.0, -inf, 0.0, -inf],  # uniform over 3
        ]
    )
    entropy = next_token_entropy(scores)
    assert entropy.shape == (5,) and entropy.dtype == torch.float32
    expected = torch.tensor([math.log(5), math.log(5), 0.0, math.log(2), math.log(3)])
    torch.testing.assert_close(entropy, expected)
    assert entropy[2].item() == 0.0 and not entropy.isnan().any()
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2; half-precision input is computed in float32.
    skewed = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]]).half()
    assert next_token_entropy(skewed).dtype == torch.float32
    torch.testing.assert_close(next_token_entropy(skewed), torch.tensor([1.5 * math.log(2)]), atol=1e-3, rtol=0)
    # A near one-hot row (large gap) gives a tiny, non-negative entropy.
    sharp = next_token_entropy(torch.tensor([[60.0, 0.0, 0.0]]))
    assert 0.0 <= sharp.item() < 1e-20


def test_token_context_is_the_hidden_state_or_the_entropy_column():
    import math

    from hf_adaptive_decoding.generation.features import next_token_entropy, token_context

    hidden = torch.randn(3, 8)
    scores = torch.randn(3, 20)
    assert token_context("hidden_state", hidden, scores) is hidden
    context = token_context("entropy", hidden, scores)
    assert context.shape == (3, 1)
    torch.testing.assert_close(context[:, 0], next_token_entropy(scores))
    uniform = token_context("entropy", hidden, torch.zeros(2, 20))
    torch.testing.assert_close(uniform, torch.full((2, 1), math.log(20)))


def test_token_context_with_stats_appends_the_entropy_and_the_max_probability():
    from hf_adaptive_decoding.generation.features import next_token_entropy, token_context

    hidden, scores = torch.randn(3, 8), torch.randn(3, 20)
    context = token_context("hidden_state+stats", hidden, scores)
    assert context.shape == (3, 10) and torch.equal(context[:, :8], hidden)
    torch.testing.assert_close(context[:, 8], next_token_entropy(scores))
    torch.testing.assert_close(context[:, 9], scores.softmax(-1).amax(-1))
