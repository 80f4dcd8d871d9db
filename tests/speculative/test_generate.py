import copy

import pytest
import torch

from hf_adaptive_decoding import (
    DraftAdapterModel,
    IncompatibleBaseModelError,
    IncompatibleDraftSourceError,
    SpeculativeGenerateOutput,
)
from hf_adaptive_decoding.speculative.generate import LearnedDraftGenerator
from tests.conftest import EOS, make_tiny_model

NEW_TOKENS = 24


@pytest.fixture
def target():
    model = make_tiny_model("llama")
    model.generation_config.top_k = None
    return model


@pytest.fixture
def draft_model():
    """Another random model over the same vocabulary: it agrees with the target on some tokens only."""
    model = make_tiny_model("llama", seed=1)
    model.generation_config.top_k = None
    return model


def _prompt(seed: int = 0, length: int = 6):
    generator = torch.Generator().manual_seed(seed)
    # A repeated stretch, so that prompt lookup finds matches.
    body = torch.randint(3, 128, (length,), generator=generator)
    input_ids = torch.cat([body, body])[None]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _sources(target, draft_model):
    return {
        "assistant_model": {"assistant_model": draft_model},
        "prompt_lookup": {"prompt_lookup_num_tokens": 4},
        "early_exit": {"assistant_early_exit": 1},
    }


SOURCES = ["assistant_model", "prompt_lookup", "early_exit"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_output_is_plain_greedy_and_cycles_add_up(target, draft_model, source, seed):
    inputs = _prompt(seed)
    plain = target.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    adapter = DraftAdapterModel.for_model(target, max_draft_tokens=5, initial_stop_probability=0.3)
    torch.manual_seed(seed)
    out = target.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        decoding_adapter=adapter,
        return_dict_in_generate=True,
        **_sources(target, draft_model)[source],
    )
    assert isinstance(out, SpeculativeGenerateOutput)
    assert torch.equal(out.sequences, plain)
    drafted, accepted = out.draft_lengths, out.accepted_lengths
    assert len(drafted) == len(accepted) == len(out.cycle_seconds) > 0
    assert ((accepted >= 0) & (accepted <= drafted) & (drafted <= 5)).all()
    # Every cycle adds the accepted drafts plus the target's own token.
    assert int((accepted + 1).sum()) == plain.shape[1] - inputs["input_ids"].shape[1]
    assert (out.cycle_seconds > 0).all()
    assert "_get_candidate_generator" not in vars(target)
    assert not target.get_decoder()._forward_hooks


def test_plain_tensor_output_without_return_dict(target):
    inputs = _prompt()
    adapter = DraftAdapterModel.for_model(target)
    out = target.generate(
        **inputs, do_sample=False, max_new_tokens=8, prompt_lookup_num_tokens=3, decoding_adapter=adapter
    )
    assert torch.equal(out, target.generate(**inputs, do_sample=False, max_new_tokens=8))


@pytest.mark.parametrize("source", ["assistant_model", "early_exit"])
def test_the_policy_sets_the_draft_length(target, draft_model, source):
    inputs = _prompt(length=10)
    kwargs = {"do_sample": False, "max_new_tokens": 30, "return_dict_in_generate": True}
    kwargs |= _sources(target, draft_model)[source]
    always = DraftAdapterModel.for_model(target, max_draft_tokens=6, initial_stop_probability=0.99)
    out = target.generate(**inputs, decoding_adapter=always, deterministic=True, **kwargs)
    # The first cycle always drafts; after it, stopping before the first token skips drafting (a plain step).
    assert out.draft_lengths[0] == 1 and (out.draft_lengths[1:] == 0).all()
    assert len(out.draft_lengths) + int(out.accepted_lengths.sum()) == 30
    plain = target.generate(**inputs, do_sample=False, max_new_tokens=30)
    assert torch.equal(out.sequences, plain)
    never = DraftAdapterModel.for_model(target, max_draft_tokens=6, initial_stop_probability=0.01)
    out = target.generate(**inputs, decoding_adapter=never, deterministic=True, **kwargs)
    # Drafts are cut only by the cap, and near the end by what max_length leaves.
    assert len(out.draft_lengths) > 5 and (out.draft_lengths[:5] == 6).all() and (out.draft_lengths <= 6).all()


def test_prompt_lookup_proposals_are_cut_where_the_policy_stops(target):
    inputs = _prompt(length=10)
    kwargs = {"do_sample": False, "max_new_tokens": 30, "return_dict_in_generate": True, "prompt_lookup_num_tokens": 2}
    never = DraftAdapterModel.for_model(target, max_draft_tokens=7, initial_stop_probability=0.01)
    long = target.generate(**inputs, decoding_adapter=never, deterministic=True, **kwargs)
    assert long.draft_lengths.max() > 2  # the adapter's cap replaces prompt_lookup_num_tokens
    always = DraftAdapterModel.for_model(target, max_draft_tokens=7, initial_stop_probability=0.99)
    short = target.generate(**inputs, decoding_adapter=always, deterministic=True, **kwargs)
    assert short.draft_lengths.max() <= 1 and (short.draft_lengths[1:] == 0).all()
    assert torch.equal(long.sequences, short.sequences)


def test_the_policy_sees_the_targets_hidden_state_at_the_last_accepted_token(target, draft_model, monkeypatch):
    seen = []
    update = LearnedDraftGenerator.update_candidate_strategy

    def spy(self, input_ids, scores, num_matches):
        update(self, input_ids, scores, num_matches)
        seen.append((input_ids.shape[1], self.hidden.clone()))

    monkeypatch.setattr(LearnedDraftGenerator, "update_candidate_strategy", spy)
    inputs = _prompt()
    adapter = DraftAdapterModel.for_model(target, max_draft_tokens=4, initial_stop_probability=0.2)
    torch.manual_seed(0)
    out = target.generate(
        **inputs, do_sample=False, max_new_tokens=NEW_TOKENS, assistant_model=draft_model, decoding_adapter=adapter
    )
    with torch.no_grad():
        states = target(out, output_hidden_states=True).hidden_states[-1][0]
    assert len(seen) > 3
    for length, hidden in seen:
        # The newest token (at length - 1) came from the target's state at the token before it.
        torch.testing.assert_close(hidden[0], states[length - 2], atol=1e-4, rtol=1e-4)


def test_sampling_keeps_the_targets_distribution(target):
    """With sampling, transformers' speculative acceptance keeps the target's distribution whatever the draft length.
    The draft model here proposes token 5 almost always: accepted blindly, it would fill the output with 5s."""
    draft_model = make_tiny_model("llama", seed=1)
    draft_model.lm_head = torch.nn.Linear(32, 128, bias=True)
    with torch.no_grad():
        draft_model.lm_head.weight.zero_()
        draft_model.lm_head.bias.zero_()
        draft_model.lm_head.bias[5] = 10.0
    inputs = _prompt()
    adapter = DraftAdapterModel.for_model(target, max_draft_tokens=4, initial_stop_probability=0.2)
    kwargs = {"do_sample": True, "top_k": None, "max_new_tokens": 3, "min_new_tokens": 3}

    def samples(model, **extra):
        torch.manual_seed(0)
        return torch.stack([model.generate(**inputs, **kwargs, **extra)[0, -3:] for _ in range(200)])

    plain, draft = samples(target), samples(draft_model)
    speculative = samples(target, assistant_model=draft_model, decoding_adapter=adapter)
    share_of_5 = {name: float((tokens == 5).float().mean()) for name, tokens in [("plain", plain), ("draft", draft)]}
    assert share_of_5["draft"] > 0.9 and share_of_5["plain"] < 0.1
    assert abs(float((speculative == 5).float().mean()) - share_of_5["plain"]) < 0.05
    histogram = lambda tokens: torch.bincount(tokens.flatten(), minlength=128).float() / tokens.numel()  # noqa: E731
    # Two samples of 600 tokens from one distribution over 128 tokens differ by about 0.25 in total variation.
    assert 0.5 * float((histogram(plain) - histogram(speculative)).abs().sum()) < 0.35


def test_a_draft_adapter_needs_a_candidate_source(target):
    adapter = DraftAdapterModel.for_model(target)
    with pytest.raises(IncompatibleDraftSourceError, match="pass assistant_model=<draft model>, prompt_lookup"):
        target.generate(**_prompt(), do_sample=False, max_new_tokens=4, decoding_adapter=adapter)
    with pytest.raises(ValueError, match="sampling_budget is for sequence-level decoding adapters"):
        target.generate(
            **_prompt(), max_new_tokens=4, prompt_lookup_num_tokens=2, decoding_adapter=adapter, sampling_budget=2
        )


def test_an_adapter_for_another_target_is_refused(target):
    adapter = DraftAdapterModel.for_model(make_tiny_model("qwen2"))
    with pytest.raises(IncompatibleBaseModelError, match="draft adapter"):
        target.generate(**_prompt(), max_new_tokens=4, prompt_lookup_num_tokens=2, decoding_adapter=adapter)


def test_an_uncontrollable_source_is_refused(target):
    from transformers.generation.candidate_generator import CandidateGenerator

    with pytest.raises(IncompatibleDraftSourceError, match="this call uses CandidateGenerator"):
        LearnedDraftGenerator(CandidateGenerator(), DraftAdapterModel.for_model(target), None, max_length=20)


def test_a_failure_mid_generation_leaves_the_model_as_it_was(target, monkeypatch):
    adapter = DraftAdapterModel.for_model(target)
    layers = target.config.num_hidden_layers

    def broken(*args, **kwargs):
        raise RuntimeError("policy failed")

    monkeypatch.setattr(adapter, "decide_stop", broken)
    with pytest.raises(RuntimeError, match="policy failed"):
        target.generate(
            **_prompt(), do_sample=False, max_new_tokens=8, assistant_early_exit=1, decoding_adapter=adapter
        )
    assert "_get_candidate_generator" not in vars(target)
    assert not target.get_decoder()._forward_hooks
    assert target.config.num_hidden_layers == layers  # early exit truncated it while drafting
    plain = target.generate(**_prompt(), do_sample=False, max_new_tokens=8)
    assert torch.equal(plain, copy.deepcopy(target).generate(**_prompt(), do_sample=False, max_new_tokens=8))


def test_eos_ends_generation_as_in_plain_greedy(target):
    inputs = _prompt()
    target.generation_config.eos_token_id = EOS
    plain = target.generate(**inputs, do_sample=False, max_new_tokens=40)
    adapter = DraftAdapterModel.for_model(target, initial_stop_probability=0.05)
    out = target.generate(
        **inputs, do_sample=False, max_new_tokens=40, prompt_lookup_num_tokens=3, decoding_adapter=adapter
    )
    assert torch.equal(out, plain)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_greedy_on_the_default_model_is_plain_greedy(default_model, math_prompts, source):
    """The issue's acceptance test: on SmolLM2-135M, greedy speculative decoding under a draft adapter reproduces
    plain greedy token for token, with each candidate source (the draft model is the target's first 8 layers)."""
    from hf_adaptive_decoding.speculative.sources import layer_dropped_draft

    model, _ = default_model
    extra = {
        "assistant_model": lambda: {"assistant_model": layer_dropped_draft(model, 8)},
        "prompt_lookup": lambda: {"prompt_lookup_num_tokens": 6},
        "early_exit": lambda: {"assistant_early_exit": 8},
    }[source]()
    adapter = DraftAdapterModel.for_model(model, max_draft_tokens=6, initial_stop_probability=0.25)
    for row in range(len(math_prompts["input_ids"])):
        mask = math_prompts["attention_mask"][row].bool()
        inputs = {"input_ids": math_prompts["input_ids"][row][mask][None]}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        plain = model.generate(**inputs, do_sample=False, max_new_tokens=32)
        torch.manual_seed(row)
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=32,
            decoding_adapter=adapter,
            return_dict_in_generate=True,
            **extra,
        )
        assert torch.equal(out.sequences, plain), (source, row)
        assert int((out.accepted_lengths + 1).sum()) == plain.shape[1] - inputs["input_ids"].shape[1]
    assert model.config.num_hidden_layers == 30


def test_layer_dropped_draft_is_a_separate_shorter_model(target):
    from hf_adaptive_decoding.speculative.sources import layer_dropped_draft

    draft = layer_dropped_draft(target, 1)
    assert len(draft.model.layers) == 1 and draft.config.num_hidden_layers == 1
    assert len(target.model.layers) == 2 and target.config.num_hidden_layers == 2
    assert draft.model.embed_tokens.weight.data_ptr() != target.model.embed_tokens.weight.data_ptr()
    inputs = _prompt()
    with torch.no_grad():
        early = target(**inputs, output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(draft.model(**inputs).last_hidden_state, target.model.norm(early))
    with pytest.raises(ValueError, match=r"num_layers must be an int in \[1, 2\), got 2"):
        layer_dropped_draft(target, 2)
