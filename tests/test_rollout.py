import pytest
import torch

from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter, DecodingAction
from hf_adaptive_decoding.rollout import generate_rollouts

from .conftest import EOS, left_padded_batch
from .test_generation import TOKEN_ACTIONS, forced_adapter


def _visible(ids, mask, width):
    return torch.where(mask[:, :width], ids[:, :width], -1)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_greedy_rollouts_equal_plain_generate_with_shrinking_batch(tiny_model, level):
    """Rows are dropped from the batch and KV cache as they end (EOS or their own token budget); every row still
    gets exactly the tokens plain greedy generate gives it, so positions, masks and cache stay aligned."""
    inputs = left_padded_batch()
    adapter = forced_adapter(tiny_model, TOKEN_ACTIONS, 0, level=level)
    budgets = torch.tensor([12, 5, 9])
    batch = generate_rollouts(
        tiny_model, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([2, 1, 3]), budgets, True
    )
    plain = tiny_model.generate(**inputs, do_sample=False, max_new_tokens=12)[:, inputs["input_ids"].shape[1] :]
    assert batch.input_index.tolist() == [0, 0, 1, 2, 2, 2]
    expected = plain[batch.input_index]
    # Plain generate runs every row to 12 tokens (or EOS); each rollout row stops at its own budget.
    lengths = batch.completion_mask.sum(1)
    for row, length in enumerate(lengths.tolist()):
        ended_by_eos = (expected[row, :length] == EOS).any()
        assert length == (
            int((expected[row] == EOS).nonzero()[0]) + 1 if ended_by_eos else budgets[batch.input_index[row]]
        )
        assert torch.equal(batch.completion_ids[row, :length], expected[row, :length])
    assert (batch.completion_ids[~batch.completion_mask] == tiny_model.generation_config.pad_token_id).all()
    if level == "token":
        assert len(batch.actions) == int(lengths.sum())  # one decision per generated token
        assert batch.decision_rows.bincount(minlength=6).tolist() == lengths.tolist()
        # The remaining budget b_t counts down from each row's budget.
        first = batch.budgets[batch.decision_rows == 2]  # row 2 is input 1, budget 5
        assert first.tolist() == [5.0, 4.0, 3.0, 2.0, 1.0][: len(first)]
    else:
        assert len(batch.actions) == 3  # one decision per input
        assert batch.budgets.tolist() == [2.0, 1.0, 3.0]  # the parallel budget B of each input
        assert batch.max_probs is None


def test_token_level_records_features_and_max_probs(llama):
    inputs = left_padded_batch()
    config = AdaptiveDecodingConfig(actions=TOKEN_ACTIONS, level="token", budget_feature="log")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    torch.manual_seed(0)
    batch = generate_rollouts(
        llama, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([2, 2, 2]), torch.tensor([6] * 3)
    )
    steps = len(batch.actions)
    assert batch.features.shape == (steps, llama.config.hidden_size)
    assert batch.action_probs.shape == (steps, 2)
    assert ((batch.max_probs > 0) & (batch.max_probs <= 1)).all()
    # The recorded features reproduce the recorded policy exactly.
    probs = adapter(batch.features, batch.budgets).logits.softmax(-1)
    torch.testing.assert_close(probs, batch.action_probs)


def test_sequence_level_samples_of_an_input_share_its_action(llama):
    inputs = left_padded_batch(lengths=(5, 5, 5))
    actions = [DecodingAction(do_sample=False), DecodingAction(temperature=1.0)]
    adapter = AutoDecodingAdapter.for_model(llama, AdaptiveDecodingConfig(actions=actions, level="sequence")).eval()
    with torch.no_grad():
        adapter.output_layer.bias.copy_(torch.tensor([100.0, -100.0]))  # greedy: every sample of an input is equal
    batch = generate_rollouts(
        llama, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([4, 4, 4]), torch.tensor([8] * 3)
    )
    assert batch.actions.tolist() == [0, 0, 0]
    for prompt in range(3):
        rows = batch.completion_ids[batch.input_index == prompt]
        assert (rows == rows[0]).all()


def test_token_level_adapter_with_mean_prompt_pooling_rolls_out(llama):
    inputs = left_padded_batch()
    config = AdaptiveDecodingConfig(actions=TOKEN_ACTIONS, level="token", prompt_pooling="mean")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    batch = generate_rollouts(
        llama, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([2, 1, 3]), torch.tensor([5] * 3)
    )
    assert len(batch.actions) == int(batch.completion_mask.sum())


@pytest.mark.parametrize(
    ("num_samples", "budgets", "name"),
    [
        ([2, 0, 1], [4, 4, 4], "num_samples"),
        ([1, 1], [4, 4, 4], "num_samples"),
        ([1, 1, 1], [4, -1, 4], "token_budgets"),
    ],
)
def test_bad_sample_counts_and_budgets_are_named(llama, num_samples, budgets, name):
    inputs = left_padded_batch()
    adapter = forced_adapter(llama, TOKEN_ACTIONS, 0)
    with pytest.raises(ValueError, match=f"{name} must hold one int >= 1 per input"):
        generate_rollouts(
            llama,
            adapter,
            inputs["input_ids"],
            inputs["attention_mask"],
            torch.tensor(num_samples),
            torch.tensor(budgets),
        )
