"""Each private transformers API that `hf_adaptive_decoding/compat.py` wraps still exists and behaves as we use it. A
failure names the API that a transformers release changed: generation's first, then speculative decoding's."""

import inspect

import pytest
import torch
import transformers
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation import (
    AssistedCandidateGenerator,
    CandidateGenerator,
    EarlyExitCandidateGenerator,
    GenerationMixin,
    PromptLookupCandidateGenerator,
)

from hf_adaptive_decoding import compat
from hf_adaptive_decoding.generation.generate import BUILTIN_WARPERS
from tests.conftest import make_tiny_model

# ------------------------------------------------------------------------------------------ generation


def test_prepare_generation_config_resolves_model_defaults_and_kwargs(llama):
    assert hasattr(GenerationMixin, "_prepare_generation_config"), "GenerationMixin._prepare_generation_config is gone"
    llama.generation_config.top_k = 7
    resolved = compat.prepare_generation_config(llama, None, max_new_tokens=5, temperature=0.3)
    assert isinstance(resolved, GenerationConfig)
    assert (resolved.max_new_tokens, resolved.temperature, resolved.top_k) == (5, 0.3, 7)


def test_cache_argument_is_the_keyword_the_model_forward_fills(llama):
    cache = transformers.DynamicCache(config=llama.config)
    llama(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **compat.cache_argument(cache))
    assert cache.get_seq_length() == 3, f"{list(compat.cache_argument(cache))} is not the forward's cache keyword"


def test_default_generation_params_still_hold_the_library_defaults():
    assert hasattr(GenerationConfig, "_get_default_generation_params"), (
        "GenerationConfig._get_default_generation_params"
    )
    defaults = compat.default_generation_params()
    assert defaults.get("top_k") == 50 and defaults.get("temperature") == 1.0


def test_sample_takes_what_we_pass():
    assert compat.sample_signature_has(
        "input_ids", "logits_processor", "stopping_criteria", "generation_config", "synced_gpus", "streamer"
    ), f"GenerationMixin._sample's signature changed: {inspect.signature(GenerationMixin._sample)}"


def test_custom_generate_still_drops_the_streamer_so_we_read_it_from_generate(llama):
    """If transformers starts passing `streamer` to custom_generate callables, the frame read can go."""
    seen = {}

    def custom(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer=None, **kwargs):
        seen["streamer"] = streamer
        seen["from_frame"] = compat.streamer_of_calling_generate(inspect.currentframe().f_back)[0]
        return input_ids

    class Streamer:
        def put(self, value): ...

        def end(self): ...

    streamer = Streamer()
    llama.generate(torch.tensor([[3, 4, 5]]), custom_generate=custom, streamer=streamer, max_new_tokens=2)
    assert seen["streamer"] is None and seen["from_frame"] is streamer


@pytest.mark.parametrize(
    "settings",
    [
        {"do_sample": False},
        {"do_sample": True, "temperature": 0.7, "top_k": 0},
        {"do_sample": True, "temperature": 1.0, "top_k": 20, "top_p": 0.9},
        {"do_sample": True, "top_k": 0, "min_p": 0.1, "typical_p": 0.5},
        {"do_sample": True, "top_k": 0, "epsilon_cutoff": 0.1, "eta_cutoff": 0.1, "top_h": 0.5},
    ],
)
def test_generate_warper_count_mirrors_get_logits_processor(llama, settings):
    assert hasattr(GenerationMixin, "_get_logits_processor"), "GenerationMixin._get_logits_processor is gone"
    config = GenerationConfig(**settings)
    built = compat.logits_processors_of_generate(llama, config, input_length=3)
    warpers = [processor for processor in built if isinstance(processor, BUILTIN_WARPERS)]
    assert compat.generate_warper_count(config) == len(warpers)


# ------------------------------------------------------------------------------------------ speculative decoding

NEW_TOKENS = 16


def _speculative_api(owner: type, name: str, *parameters: str):
    """`owner.name`, after checking that transformers still has it and that it takes `parameters`."""
    api = f"{owner.__name__}.{name}"
    assert hasattr(owner, name), f"transformers {transformers.__version__} has no {api}"
    attribute = getattr(owner, name)
    signature = inspect.signature(attribute)
    missing = [parameter for parameter in parameters if parameter not in signature.parameters]
    assert not missing, f"transformers {transformers.__version__}: {api}{signature} no longer takes {missing}"
    return attribute


@pytest.fixture
def target():
    model = make_tiny_model("llama")
    model.generation_config.eos_token_id = None  # full-length generations
    return model


@pytest.fixture
def draft_model():
    model = make_tiny_model("llama", seed=1)
    model.generation_config.eos_token_id = None
    return model


def _repeating_prompt() -> torch.LongTensor:
    body = torch.randint(3, 128, (6,), generator=torch.Generator().manual_seed(0))
    return torch.cat([body, body])[None]


class _Recorder(CandidateGenerator):
    """Passes transformers' candidate generator through, recording what assisted decoding asks of it."""

    def __init__(self, source: CandidateGenerator, generation_config):
        self.source, self.generation_config = source, generation_config
        self.calls: list[tuple[torch.LongTensor, torch.LongTensor]] = []  # (input_ids, proposed tokens) per cycle
        self.updates: list[tuple[int, int]] = []  # (candidate positions scored, num_matches) per cycle

    def get_candidates(self, input_ids, **kwargs):
        candidates, logits = self.source.get_candidates(input_ids)
        self.calls.append((input_ids.clone(), candidates[0, input_ids.shape[1] :].clone()))
        return candidates, logits

    def update_candidate_strategy(self, input_ids, scores, num_matches):
        self.updates.append((scores.shape[1], num_matches))


def _wrapped_generate(model, prepare=None, **source_kwargs):
    """Greedy `generate` with every candidate generator passed to `prepare` and then wrapped in a `_Recorder`."""
    recorders: list[_Recorder] = []

    def wrap(source, generation_config):
        if prepare is not None:
            prepare(source)
        recorders.append(_Recorder(source, generation_config))
        return recorders[-1]

    input_ids = _repeating_prompt()
    with compat.candidate_generators_wrapped(model, wrap):
        out = model.generate(input_ids=input_ids, do_sample=False, max_new_tokens=NEW_TOKENS, **source_kwargs)
    assert len(recorders) == 1, "GenerationMixin._get_candidate_generator is no longer called once per call"
    return input_ids, out, recorders[0]


def test_speculative_candidate_generator_factory_is_shadowed_for_one_call(target):
    _speculative_api(
        GenerationMixin,
        "_get_candidate_generator",
        "generation_config",
        "input_ids",
        "inputs_tensor",
        "logits_processor",
        "model_kwargs",
        "assistant_model",
    )
    _speculative_api(CandidateGenerator, "get_candidates", "input_ids")
    _speculative_api(CandidateGenerator, "update_candidate_strategy", "input_ids", "scores", "num_matches")
    input_ids, out, recorder = _wrapped_generate(target, prompt_lookup_num_tokens=3)
    assert "_get_candidate_generator" not in vars(target)
    plain = target.generate(input_ids=input_ids, do_sample=False, max_new_tokens=NEW_TOKENS)
    assert torch.equal(out, plain), "assisted decoding no longer keeps the target's greedy output"
    assert recorder.generation_config.max_length == input_ids.shape[1] + NEW_TOKENS, (
        "GenerationMixin._get_candidate_generator no longer gets the call's resolved generation_config"
    )
    # The wrapper is what assisted decoding drives: a cycle per call, scores at every candidate position plus one.
    assert len(recorder.calls) == len(recorder.updates) > 1
    for (_, proposed), (scored, matches) in zip(recorder.calls, recorder.updates, strict=True):
        assert scored == len(proposed) + 1 and 0 <= matches <= len(proposed), (
            "_assisted_decoding calls update_candidate_strategy(input_ids, scores, num_matches) differently"
        )
    assert sum(matches + 1 for _, matches in recorder.updates) == NEW_TOKENS

    def failing(source, generation_config):
        raise RuntimeError("wrap failed")

    with pytest.raises(RuntimeError, match="wrap failed"):
        with compat.candidate_generators_wrapped(target, failing):
            target.generate(input_ids=input_ids, do_sample=False, max_new_tokens=4, prompt_lookup_num_tokens=3)
    assert "_get_candidate_generator" not in vars(target)


@pytest.mark.parametrize(
    ("source", "expected_class"),
    [
        ("assistant_model", AssistedCandidateGenerator),
        ("early_exit", EarlyExitCandidateGenerator),
        ("prompt_lookup", PromptLookupCandidateGenerator),
    ],
)
def test_speculative_candidate_source_names_what_generate_builds(target, draft_model, source, expected_class):
    kwargs = {
        "assistant_model": {"assistant_model": draft_model},
        "early_exit": {"assistant_early_exit": 1},
        "prompt_lookup": {"prompt_lookup_num_tokens": 3},
    }[source]
    _, _, recorder = _wrapped_generate(target, **kwargs)
    assert type(recorder.source) is expected_class, (
        f"GenerationMixin._get_candidate_generator builds {type(recorder.source).__name__} for {kwargs}"
    )
    assert compat.candidate_source(recorder.source) == source
    assert compat.candidate_source(CandidateGenerator()) is None


@pytest.mark.parametrize("source", ["assistant_model", "early_exit"])
def test_speculative_cap_draft_length_makes_a_draft_model_draft_that_many(target, draft_model, source):
    kwargs = {"assistant_model": draft_model} if source == "assistant_model" else {"assistant_early_exit": 1}

    def prepare(generator):
        for name in ("num_assistant_tokens", "generation_config"):
            assert hasattr(generator, name), f"{type(generator).__name__}.{name} is gone"
        assert hasattr(generator.generation_config, "assistant_confidence_threshold")
        compat.cap_draft_length(generator, 3)

    input_ids, _, recorder = _wrapped_generate(target, prepare, **kwargs)
    proposed = [len(tokens) for _, tokens in recorder.calls]
    room = [input_ids.shape[1] + NEW_TOKENS - len(ids[0]) - 1 for ids, _ in recorder.calls]
    # Exactly the cap wherever max_length leaves room: no schedule, no confidence threshold cuts a draft short.
    assert proposed == [min(3, left) for left in room], (
        f"{type(recorder.source).__name__}.num_assistant_tokens / generation_config.assistant_confidence_threshold "
        f"no longer set the draft length: drafts of {proposed}"
    )


def test_speculative_cap_draft_length_caps_a_prompt_lookup(target):
    def prepare(generator):
        assert hasattr(generator, "num_output_tokens"), "PromptLookupCandidateGenerator.num_output_tokens is gone"
        compat.cap_draft_length(generator, 2)

    _, _, recorder = _wrapped_generate(target, prepare, prompt_lookup_num_tokens=5)
    proposed = [len(tokens) for _, tokens in recorder.calls]
    assert max(proposed) == 2, f"PromptLookupCandidateGenerator.num_output_tokens no longer caps: {proposed}"
    with pytest.raises(TypeError, match="does not know the internals of CandidateGenerator"):
        compat.cap_draft_length(CandidateGenerator(), 2)


class _StopAfter(StoppingCriteria):
    def __init__(self, tokens: int):
        self.tokens, self.seen = tokens, []

    def __call__(self, input_ids, scores, **kwargs):
        self.seen.append((input_ids.shape[1], len(scores), tuple(scores[-1].shape)))
        return torch.full((input_ids.shape[0],), len(scores) >= self.tokens, dtype=torch.bool)


@pytest.mark.parametrize("source", ["assistant_model", "early_exit"])
def test_speculative_draft_stopping_criteria_see_each_drafted_token(target, draft_model, source):
    _speculative_api(AssistedCandidateGenerator, "_prepare_generation_args", "input_ids", "min_new_tokens")
    kwargs = {"assistant_model": draft_model} if source == "assistant_model" else {"assistant_early_exit": 1}
    stop = _StopAfter(2)

    def prepare(generator):
        compat.cap_draft_length(generator, 5)
        compat.add_draft_stopping_criteria(generator, StoppingCriteriaList([stop]))

    _, _, recorder = _wrapped_generate(target, prepare, **kwargs)
    proposed = [len(tokens) for _, tokens in recorder.calls]
    assert max(proposed) == 2, f"AssistedCandidateGenerator._prepare_generation_args: criteria ignored, {proposed}"
    # After every drafted token: the draft's ids so far, and the tuple of its scores in this cycle, one per token.
    expected = []
    for ids, tokens in recorder.calls:
        expected += [(ids.shape[1] + n, n, (1, 128)) for n in range(1, len(tokens) + 1)]
    assert stop.seen == expected, "the draft's stopping criteria no longer get (input_ids, scores so far)"
    with pytest.raises(TypeError, match="takes no stopping criteria"):
        compat.add_draft_stopping_criteria(CandidateGenerator(), StoppingCriteriaList([stop]))


def test_speculative_early_exit_layer_count_is_kept_when_drafting_fails(target, monkeypatch):
    layers_while_drafting = []

    def failing_draft(self, input_ids, **kwargs):
        layers_while_drafting.append(target.model.config.num_hidden_layers)
        raise RuntimeError("draft failed")

    monkeypatch.setattr(AssistedCandidateGenerator, "get_candidates", failing_draft)
    generate = {"input_ids": _repeating_prompt(), "do_sample": False, "max_new_tokens": 4, "assistant_early_exit": 1}
    with pytest.raises(RuntimeError, match="draft failed"):
        target.generate(**generate)
    assert layers_while_drafting == [1], (
        "EarlyExitCandidateGenerator.get_candidates no longer sets the base model's config.num_hidden_layers while "
        "it drafts"
    )
    assert target.config.num_hidden_layers == 1, (
        "EarlyExitCandidateGenerator now restores num_hidden_layers when drafting fails: "
        "compat.early_exit_layer_count_kept is no longer needed"
    )
    target.config.num_hidden_layers = 2
    with pytest.raises(RuntimeError, match="draft failed"):
        with compat.early_exit_layer_count_kept(target):
            target.generate(**generate)
    assert target.config.num_hidden_layers == 2


def test_speculative_prompt_lookup_proposes_what_generate_proposes(target):
    _speculative_api(
        PromptLookupCandidateGenerator,
        "__init__",
        "eos_token_id",
        "num_output_tokens",
        "max_matching_ngram_size",
        "max_length",
    )
    input_ids, _, recorder = _wrapped_generate(target, prompt_lookup_num_tokens=4, max_matching_ngram_size=2)
    lookup = compat.prompt_lookup([], 4, 2, input_ids.shape[1] + NEW_TOKENS)
    assert any(len(tokens) > 0 for _, tokens in recorder.calls)
    for ids, tokens in recorder.calls:
        assert torch.equal(lookup(ids), tokens), "PromptLookupCandidateGenerator proposes differently when built so"
    prefix = torch.tensor([[5, 6, 7, 8, 5, 6]])
    assert compat.prompt_lookup([], 3, 2, 20)(prefix).tolist() == [7, 8, 5]
    assert compat.prompt_lookup([8], 3, 2, 20)(prefix).tolist() == [7]  # cut before the end of sequence
    assert compat.prompt_lookup([], 3, 2, 20)(torch.tensor([[3, 4, 5]])).tolist() == []
