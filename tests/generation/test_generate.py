import json
import subprocess
import sys

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from hf_adaptive_decoding import (
    AdaptiveDecodingConfig,
    AdaptiveGenerateOutput,
    AutoDecodingAdapter,
    DecodingAction,
    IncompatibleBaseModelError,
    NonFiniteLogitsError,
    adaptive_generate,
)
from tests.conftest import ARCHS, left_padded_batch, make_tiny_model


def forced_adapter(model, actions, action_index, level="token", **config_overrides):
    """An adapter whose policy puts (almost) all mass on one action, whatever it observes."""
    config = AdaptiveDecodingConfig(actions=actions, level=level, **config_overrides)
    adapter = AutoDecodingAdapter.for_model(model, config).eval()
    with torch.no_grad():
        adapter.output_layer.bias[action_index] = 100.0
    return adapter


def spy_on_policy(adapter, monkeypatch):
    """Record the (features, budget) the adapter is called with."""
    calls = []
    original = adapter.select_actions

    def select_actions(hidden_states, budget=None, deterministic=False, noise=None):
        calls.append((hidden_states.clone(), None if budget is None else budget.clone()))
        return original(hidden_states, budget, deterministic, noise)

    monkeypatch.setattr(adapter, "select_actions", select_actions)
    return calls


TOKEN_ACTIONS = [DecodingAction(do_sample=False), DecodingAction(temperature=0.7, top_k=20, top_p=0.9)]


@pytest.mark.parametrize("action_index", [0, 1])
def test_single_action_adapter_equals_plain_generate(tiny_model, action_index):
    """With the policy pinned to one action (deterministic: the policy draws no random numbers), generation is
    token-for-token what transformers does with that action's static settings, seeded samples included."""
    inputs = left_padded_batch()
    adapter = forced_adapter(tiny_model, TOKEN_ACTIONS, action_index)
    torch.manual_seed(123)
    ours = tiny_model.generate(**inputs, decoding_adapter=adapter, deterministic=True, max_new_tokens=12)
    torch.manual_seed(123)
    plain = tiny_model.generate(**inputs, **TOKEN_ACTIONS[action_index].to_generation_kwargs(), max_new_tokens=12)
    assert torch.equal(ours, plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_without_adapter_is_unchanged_by_the_import(arch, tmp_path):
    make_tiny_model(arch).save_pretrained(tmp_path)
    script = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM
if sys.argv[1] == "import":
    import hf_adaptive_decoding
model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()
ids = torch.arange(3, 10)[None].repeat(2, 1)
greedy = model.generate(ids, do_sample=False, max_new_tokens=10)
torch.manual_seed(7)
sampled = model.generate(ids, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=10)
print(json.dumps([greedy.tolist(), sampled.tolist(), "hf_adaptive_decoding" in sys.modules]))
"""
    runs = [
        subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        for mode in ("plain", "import")
    ]
    plain, patched = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert (plain[2], patched[2]) == (False, True)
    assert plain[:2] == patched[:2]


def test_token_level_outputs_actions_probs_and_budget(tiny_model, monkeypatch):
    adapter = AutoDecodingAdapter.for_model(tiny_model, "math-token").eval()
    calls = spy_on_policy(adapter, monkeypatch)
    out = tiny_model.generate(
        **left_padded_batch(), decoding_adapter=adapter, max_new_tokens=9, return_dict_in_generate=True
    )
    assert isinstance(out, AdaptiveGenerateOutput)
    steps = out.sequences.shape[1] - 7
    assert out.decoding_actions.shape == (3, steps)
    assert out.decoding_action_probs.shape == (3, steps, 4)
    torch.testing.assert_close(out.decoding_action_probs.sum(-1), torch.ones(3, steps))
    assert [int(budget) for _, budget in calls] == [9 - t for t in range(steps)]  # b_t = b - t


def test_features_are_the_final_hidden_states_of_the_same_forward(tiny_model, monkeypatch):
    inputs = left_padded_batch()
    adapter = AutoDecodingAdapter.for_model(tiny_model, "math-token").eval()
    calls = spy_on_policy(adapter, monkeypatch)
    forwards = []
    handle = tiny_model.register_forward_hook(lambda *args: forwards.append(1))
    tiny_model.generate(**inputs, decoding_adapter=adapter, max_new_tokens=5, min_new_tokens=5)
    handle.remove()
    assert len(forwards) == 5  # one forward per generated token: nothing extra to get features
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # what generate uses with left padding
    reference = tiny_model(**inputs, position_ids=positions, output_hidden_states=True).hidden_states[-1][:, -1]
    torch.testing.assert_close(calls[0][0], reference)


def test_sequence_level_one_action_per_prompt_shared_by_its_samples(tiny_model, monkeypatch):
    adapter = AutoDecodingAdapter.for_model(tiny_model, "mixed-seq").eval()
    calls = spy_on_policy(adapter, monkeypatch)
    torch.manual_seed(0)
    out = tiny_model.generate(
        **left_padded_batch(),
        decoding_adapter=adapter,
        num_return_sequences=4,
        max_new_tokens=6,
        return_dict_in_generate=True,
    )
    assert len(calls) == 1  # chosen once, at the first step
    hidden, budget = calls[0]
    assert hidden.shape[0] == 3 and int(budget) == 4  # per prompt, with B = num_return_sequences
    assert out.decoding_actions.shape == (12,) and out.decoding_action_probs.shape == (12, 6)
    per_prompt = out.decoding_actions.view(3, 4)
    assert (per_prompt == per_prompt[:, :1]).all()


def test_explicit_sampling_budget_and_mean_pooling(llama, monkeypatch):
    config = AdaptiveDecodingConfig.from_preset("math-seq", prompt_pooling="mean")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    calls = spy_on_policy(adapter, monkeypatch)
    inputs = left_padded_batch()
    llama.generate(**inputs, decoding_adapter=adapter, sampling_budget=16, max_new_tokens=3)
    hidden, budget = calls[0]
    assert int(budget) == 16
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    states = llama(**inputs, position_ids=positions, output_hidden_states=True).hidden_states[-1]
    mask = inputs["attention_mask"][..., None].float()
    torch.testing.assert_close(hidden, (states * mask).sum(1) / mask.sum(1))


def test_seeded_runs_reproduce_and_deterministic_takes_the_argmax(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    torch.nn.init.normal_(adapter.output_layer.weight, std=0.5)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(
            llama.generate(
                **left_padded_batch(), decoding_adapter=adapter, max_new_tokens=8, return_dict_in_generate=True
            )
        )
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert torch.equal(runs[0].decoding_actions, runs[1].decoding_actions)
    out = llama.generate(
        **left_padded_batch(),
        decoding_adapter=adapter,
        deterministic=True,
        max_new_tokens=8,
        return_dict_in_generate=True,
    )
    valid = out.decoding_actions >= 0
    assert torch.equal(out.decoding_actions[valid], out.decoding_action_probs.argmax(-1)[valid])


def test_rows_get_different_actions_in_one_batch(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    torch.manual_seed(0)
    out = llama.generate(
        **left_padded_batch(), decoding_adapter=adapter, max_new_tokens=16, return_dict_in_generate=True
    )
    assert len(out.decoding_actions[:, 0].unique()) > 1 or len(out.decoding_actions[0].unique()) > 1
    assert set(out.decoding_actions.unique().tolist()) <= {-1, 0, 1, 2, 3}


class StopAfter(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length)


def test_eos_and_stopping_criteria(llama):
    adapter = forced_adapter(llama, TOKEN_ACTIONS, 0)
    plain = llama.generate(**left_padded_batch(), do_sample=False, max_new_tokens=10)
    eos = int(plain[0, 9])  # make the 3rd generated token of row 0 its EOS
    out = llama.generate(
        **left_padded_batch(),
        decoding_adapter=adapter,
        max_new_tokens=10,
        eos_token_id=eos,
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    first_eos = int((out.sequences[0, 7:] == eos).nonzero()[0])
    assert (out.decoding_actions[0, first_eos + 1 :] == -1).all()
    assert (out.decoding_actions[0, : first_eos + 1] == 0).all()
    stopped = llama.generate(
        **left_padded_batch(),
        decoding_adapter=adapter,
        max_new_tokens=10,
        stopping_criteria=StoppingCriteriaList([StopAfter(11)]),
    )
    assert stopped.shape[1] == 11


class BanToken(LogitsProcessor):
    def __init__(self, token):
        self.token, self.calls = token, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        return scores.index_fill(1, torch.tensor([self.token]), -float("inf"))


def test_user_logits_processors_and_repetition_penalty_still_apply(llama):
    adapter = forced_adapter(llama, TOKEN_ACTIONS, 0)
    inputs = left_padded_batch()
    plain = llama.generate(**inputs, do_sample=False, max_new_tokens=10, repetition_penalty=1.8)
    ours = llama.generate(**inputs, decoding_adapter=adapter, max_new_tokens=10, repetition_penalty=1.8)
    assert torch.equal(ours, plain)
    assert not torch.equal(ours, llama.generate(**inputs, decoding_adapter=adapter, max_new_tokens=10))
    banned = int(plain[0, 8])
    ban = BanToken(banned)
    out = llama.generate(
        **inputs, decoding_adapter=adapter, max_new_tokens=10, logits_processor=LogitsProcessorList([ban])
    )
    assert ban.calls == 10 and banned not in out[:, 7:].tolist()[0]


class Collect(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("route", ["import", "custom_generate"])
def test_streamer_sees_every_token(llama, route):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    streamer = Collect()
    ids = left_padded_batch(lengths=(6,))["input_ids"]
    extra = {"custom_generate": adaptive_generate} if route == "custom_generate" else {}
    out = llama.generate(ids, decoding_adapter=adapter, max_new_tokens=7, streamer=streamer, **extra)
    assert streamer.ended
    assert streamer.chunks[0] == ids[0].tolist()
    assert sum(streamer.chunks[1:], []) == out[0, 6:].tolist()


def test_custom_generate_route_matches_the_import_route(tiny_model):
    adapter = AutoDecodingAdapter.for_model(tiny_model, "math-token").eval()
    torch.nn.init.normal_(adapter.output_layer.weight, std=0.5)
    outputs = []
    for extra in ({}, {"custom_generate": adaptive_generate}):
        torch.manual_seed(11)
        outputs.append(
            tiny_model.generate(
                **left_padded_batch(),
                decoding_adapter=adapter,
                max_new_tokens=8,
                return_dict_in_generate=True,
                **extra,
            )
        )
    assert torch.equal(outputs[0].sequences, outputs[1].sequences)
    assert torch.equal(outputs[0].decoding_actions, outputs[1].decoding_actions)


def test_return_dict_false_gives_plain_sequences(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    out = llama.generate(**left_padded_batch(), decoding_adapter=adapter, max_new_tokens=4)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 11)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.7}, "temperature"),
        ({"top_k": 5}, "top_k"),
        ({"do_sample": False}, "do_sample"),
        ({"num_beams": 2}, "num_beams"),
        ({"sampling_budget": 0}, "sampling_budget"),
        ({"sampling_budget": 4}, "token-level"),
        ({"decoding_adapter": "not an adapter"}, "DecodingAdapterModel"),
    ],
)
def test_bad_generate_arguments(llama, kwargs, message):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    arguments = {"decoding_adapter": adapter, "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        llama.generate(**left_padded_batch(), **arguments)


def test_adapter_only_arguments_need_an_adapter(llama):
    with pytest.raises(ValueError, match="only apply together with `decoding_adapter=`"):
        llama.generate(**left_padded_batch(), sampling_budget=4, max_new_tokens=3)


def test_incompatible_adapter_fails_before_any_forward(llama):
    adapter = AutoDecodingAdapter.for_model(make_tiny_model("qwen2"), "math-token")
    forwards = []
    llama.register_forward_hook(lambda *args: forwards.append(1))
    with pytest.raises(IncompatibleBaseModelError, match="hidden size 32"):
        llama.generate(**left_padded_batch(), decoding_adapter=adapter, max_new_tokens=3)
    assert forwards == []


class Poison(LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[1] = float("nan")
        return scores


def test_nan_logits_raise_a_clear_error(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    with pytest.raises(NonFiniteLogitsError, match=r"row\(s\) \[1\] at generation step 0"):
        llama.generate(
            **left_padded_batch(),
            decoding_adapter=adapter,
            max_new_tokens=3,
            logits_processor=LogitsProcessorList([Poison()]),
        )


def test_default_max_length_budget(llama, monkeypatch):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    calls = spy_on_policy(adapter, monkeypatch)
    out = llama.generate(**left_padded_batch(), decoding_adapter=adapter)  # transformers' default: 20 new tokens
    assert out.shape[1] - 7 == 20 and int(calls[0][1]) == 20


def test_hook_is_removed_even_when_generation_fails(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    decoder = llama.get_decoder()
    with pytest.raises(NonFiniteLogitsError):
        llama.generate(
            **left_padded_batch(),
            decoding_adapter=adapter,
            max_new_tokens=3,
            logits_processor=LogitsProcessorList([Poison()]),
        )
    assert not decoder._forward_hooks


@pytest.mark.parametrize(
    "config_kwargs",
    [{"num_beams": 2}, {"prompt_lookup_num_tokens": 3}, {"top_k": 50}, {"temperature": 0.3, "do_sample": True}],
)
def test_a_generation_config_is_checked_like_keyword_arguments(llama, config_kwargs):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    forwards = []
    llama.register_forward_hook(lambda *args: forwards.append(1))
    with pytest.raises(ValueError, match="decoding_adapter"):
        llama.generate(
            **left_padded_batch(lengths=(5,)),
            decoding_adapter=adapter,
            generation_config=GenerationConfig(max_new_tokens=4, **config_kwargs),
        )
    assert forwards == []


def test_beam_search_from_the_models_own_generation_config_is_refused(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    llama.generation_config.num_beams = 3
    with pytest.raises(ValueError, match="beam"):
        llama.generate(**left_padded_batch(), decoding_adapter=adapter, max_new_tokens=3)


def test_a_plain_generation_config_is_accepted_and_left_untouched(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    config = GenerationConfig(max_new_tokens=5, min_new_tokens=5)
    out = llama.generate(**left_padded_batch(), decoding_adapter=adapter, generation_config=config)
    assert out.shape[1] == 7 + 5 and config.do_sample is None


def test_rows_ended_by_a_stopping_criterion_get_no_actions(llama):
    class StopRowZero(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([input_ids.shape[1] >= 9, False, False])

    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    out = llama.generate(
        **left_padded_batch(),
        decoding_adapter=adapter,
        max_new_tokens=6,
        eos_token_id=1,
        pad_token_id=0,
        stopping_criteria=StoppingCriteriaList([StopRowZero()]),
        return_dict_in_generate=True,
    )
    assert (out.sequences[0, 9:] == 0).all()  # generate padded row 0 after its stop
    assert (out.decoding_actions[0, :2] >= 0).all() and (out.decoding_actions[0, 2:] == -1).all()
    assert (out.decoding_actions[1:, :-1] >= 0).all()  # (a row's very last token may be a pad it generated)


def test_budget_with_inputs_embeds_and_max_length(llama, monkeypatch):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    calls = spy_on_policy(adapter, monkeypatch)
    embeds = llama.get_input_embeddings()(torch.arange(3, 14)[None])
    out = llama.generate(inputs_embeds=embeds, decoding_adapter=adapter, max_length=11 + 4, min_new_tokens=4)
    assert out.shape[1] == 4
    assert [int(budget) for _, budget in calls] == [4, 3, 2, 1]


def test_custom_route_keeps_user_warpers_and_refuses_sampling_arguments(llama, monkeypatch):
    from transformers.generation.logits_process import TopKLogitsWarper

    adapter = AutoDecodingAdapter.for_model(llama, "math-token").eval()
    transform_calls = []
    from hf_adaptive_decoding.generation import sampling

    real_call = sampling.ActionTransform.__call__

    def spy(self, scores, action_ids, step=None):
        transform_calls.append(int(torch.isfinite(scores).sum(-1).max()))
        return real_call(self, scores, action_ids, step)

    monkeypatch.setattr(sampling.ActionTransform, "__call__", spy)
    llama.generate(
        **left_padded_batch(),
        custom_generate=adaptive_generate,
        decoding_adapter=adapter,
        max_new_tokens=3,
        logits_processor=LogitsProcessorList([TopKLogitsWarper(10)]),
    )
    assert transform_calls and max(transform_calls) == 10  # the user's own top-k ran before the adapter's action
    with pytest.raises(ValueError, match="temperature"):
        llama.generate(
            **left_padded_batch(),
            custom_generate=adaptive_generate,
            decoding_adapter=adapter,
            max_new_tokens=3,
            temperature=0.1,
            do_sample=True,
        )


def test_custom_route_removes_the_warpers_of_the_models_sampling_defaults(llama):
    llama.generation_config.update(do_sample=True, temperature=0.6, top_p=0.8)  # like many Hub chat models
    adapter = forced_adapter(llama, TOKEN_ACTIONS, 0)  # always greedy
    inputs = left_padded_batch()
    ours = llama.generate(**inputs, custom_generate=adaptive_generate, decoding_adapter=adapter, max_new_tokens=8)
    assert torch.equal(ours, llama.generate(**inputs, do_sample=False, max_new_tokens=8))


@pytest.mark.parametrize("action_index", [0, 1])
def test_an_adapter_that_samples_its_action_draws_the_tokens_transformers_would(tiny_model, action_index):
    """Sampled (not deterministic) actions come from a stream of their own: a policy that always picks one action
    generates token for token what transformers generates with that action's settings under the same seed."""
    inputs = left_padded_batch()
    adapter = forced_adapter(tiny_model, TOKEN_ACTIONS, action_index)
    torch.manual_seed(321)
    ours = tiny_model.generate(**inputs, decoding_adapter=adapter, max_new_tokens=12)
    torch.manual_seed(321)
    plain = tiny_model.generate(**inputs, **TOKEN_ACTIONS[action_index].to_generation_kwargs(), max_new_tokens=12)
    assert torch.equal(ours, plain)


def test_a_fresh_adapter_decides_without_dropout_and_keeps_its_training_flag(llama, tmp_path):
    """`for_model` returns a module in training mode; generate decides without dropout, so the same adapter saved
    and reloaded generates the same under one seed, and the adapter is still in training mode afterwards."""
    config = AdaptiveDecodingConfig(actions=TOKEN_ACTIONS, level="token")
    adapter = AutoDecodingAdapter.for_model(llama, config, dropout=0.5)
    with torch.no_grad():
        adapter.output_layer.weight.normal_(0, 1.0)  # a policy that depends on what it sees
    assert adapter.training
    inputs = left_padded_batch()
    torch.manual_seed(9)
    fresh = llama.generate(**inputs, decoding_adapter=adapter, max_new_tokens=10, return_dict_in_generate=True)
    assert adapter.training
    adapter.save_pretrained(tmp_path)
    reloaded = AutoDecodingAdapter.from_pretrained(tmp_path)
    torch.manual_seed(9)
    again = llama.generate(**inputs, decoding_adapter=reloaded, max_new_tokens=10, return_dict_in_generate=True)
    assert torch.equal(fresh.sequences, again.sequences)
    assert torch.equal(fresh.decoding_action_probs, again.decoding_action_probs)
