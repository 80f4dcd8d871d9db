import pytest
import torch

from hf_adaptive_decoding.features import HiddenStateCapture

from .conftest import left_padded_batch


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
