"""On the default model, under sampling: one decision path, so a policy that always picks an action is that action."""

import pytest
import torch
from datasets import Dataset

from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter, DecodingAction
from hf_adaptive_decoding.evaluation.evaluate import Decoder, evaluate_decoders
from hf_adaptive_decoding.generation.decision import DecisionStep, deciding

ACTIONS = [DecodingAction(do_sample=False), DecodingAction(temperature=0.75), DecodingAction(temperature=1.25)]


def _pinned(model, level, index=1):
    adapter = AutoDecodingAdapter.for_model(model, AdaptiveDecodingConfig(actions=ACTIONS, level=level))
    with torch.no_grad():
        adapter.output_layer.bias[index] = 100.0
    return adapter


def test_deciding_restores_the_training_flag_even_on_error(llama):
    adapter = _pinned(llama, "token")
    with pytest.raises(RuntimeError), deciding(adapter):
        assert not adapter.training and not torch.is_grad_enabled()
        raise RuntimeError
    assert adapter.training


def test_the_decision_step_applies_each_rows_action(llama):
    adapter = _pinned(llama, "token", index=0)
    step = DecisionStep(adapter, deterministic=True)
    scores = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    actions = torch.tensor([0, 1])
    out = step.apply(scores, actions)
    assert out[0].tolist() == [-float("inf"), 2.0, -float("inf")]
    torch.testing.assert_close(out[1], scores[1] / 0.75)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_a_pinned_adapter_samples_what_transformers_samples_for_its_action(default_model, math_prompts, level):
    model, _ = default_model
    adapter = _pinned(model, level)
    torch.manual_seed(2026)
    ours = model.generate(**math_prompts, decoding_adapter=adapter, max_new_tokens=24)
    torch.manual_seed(2026)
    plain = model.generate(**math_prompts, do_sample=True, temperature=0.75, top_k=0, max_new_tokens=24)
    assert torch.equal(ours, plain)


@pytest.mark.slow
def test_a_pinned_adapter_evaluates_as_the_static_decoder(default_model):
    model, tokenizer = default_model
    questions = [f"What is {a} + {b}? Put the final answer in \\boxed{{}}." for a, b in [(12, 9), (31, 17), (8, 6)]]
    conversations = [[{"role": "user", "content": question}] for question in questions]
    dataset = Dataset.from_dict({"prompt": conversations, "answer": ["21", "48", "14"]})
    seen: dict[int, list[str]] = {}

    def records(prompts, completions, **kwargs):
        seen.setdefault(len(seen), [str(c) for c in completions])
        return [float("21" in str(c) or "48" in str(c) or "14" in str(c)) for c in completions]

    decoders = [Decoder.static("static", "T=0.75"), Decoder.adapter("pinned", _pinned(model, "token"), False)]
    evaluate_decoders(
        model,
        tokenizer,
        decoders,
        dataset,
        records,
        token_budgets=(24,),
        ks=(1, 2),
        num_samples=2,
        seeds=(0,),
        disable_tqdm=True,
    )
    static, pinned = seen[0], seen[1]
    assert static == pinned
    assert len(set(static)) > 1


@pytest.mark.slow
def test_a_stats_adapter_decides_from_the_default_models_hidden_state_and_next_token_statistics(
    default_model, math_prompts
):
    model, _ = default_model
    config = AdaptiveDecodingConfig(actions=ACTIONS, level="token", context_features="hidden_state+stats")
    adapter = AutoDecodingAdapter.for_model(model, config)
    assert adapter.context_size == model.config.hidden_size + 2
    with torch.no_grad():  # decisions driven by the statistics alone: the inputs between the hidden state and budget
        first_layer, budget_width = adapter.mlp[0].weight, adapter.config.budget_hidden_size
        first_layer.zero_(), adapter.mlp[0].bias.zero_(), adapter.output_layer.bias.zero_()
        torch.manual_seed(0)
        first_layer[:, -budget_width - 2 : -budget_width] = 5 * torch.randn(first_layer.shape[0], 2)
        torch.nn.init.normal_(adapter.output_layer.weight, std=5.0)
    kwargs = dict(decoding_adapter=adapter, deterministic=True, max_new_tokens=16, return_dict_in_generate=True)
    torch.manual_seed(0)
    first = model.generate(**math_prompts, **kwargs)
    torch.manual_seed(0)
    second = model.generate(**math_prompts, **kwargs)
    assert torch.equal(first.sequences, second.sequences)
    actions = torch.cat([row.flatten() for row in first.decoding_actions])
    assert len(set(actions.tolist())) > 1  # the next-token statistics move the decision from step to step
