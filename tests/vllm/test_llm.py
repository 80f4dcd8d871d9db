"""AdaptiveLLM on the embedded default model with vLLM's CPU engine: greedy policies reproduce vLLM's greedy output,
sequence-level choices match the transformers path, token-level actions come back per token, bad input is refused
before any request runs."""

import gc
import os

import pytest

vllm = pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402

from hf_adaptive_decoding import AutoDecodingAdapter, IncompatibleBaseModelError  # noqa: E402
from hf_adaptive_decoding.adapters.shipped import resolve_adapter  # noqa: E402
from hf_adaptive_decoding.default_model import build_default_model_cache  # noqa: E402
from hf_adaptive_decoding.vllm import AdaptiveLLM  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "seed": 0}
PROMPTS = ["What is 17 + 25?", "Name three colors.", "Write a haiku about rain."]
SEQUENCE_ADAPTER = "smollm2-135m-arithmetic-seq-budget"
TOKEN_ADAPTER = "smollm2-135m-arithmetic-token-budget"


def _release(llm) -> None:
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def plain_greedy():
    llm = vllm.LLM(model=str(build_default_model_cache()), **ENGINE)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    _release(llm)
    return [list(output.outputs[0].token_ids) for output in outputs]


@pytest.fixture(scope="module")
def greedy_adapter_path(tmp_path_factory, default_model):
    model, _ = default_model
    # A fresh adapter is uniform; taken deterministically it always picks its first action, greedy.
    adapter = AutoDecodingAdapter.for_model(model, "math-token")
    assert adapter.decoding_config.actions[0].name == "greedy"
    path = tmp_path_factory.mktemp("greedy-adapter")
    adapter.save_pretrained(path)
    return path


def test_a_policy_that_always_picks_greedy_gives_vllms_greedy_output(plain_greedy, greedy_adapter_path):
    llm = AdaptiveLLM(decoding_adapter=greedy_adapter_path, deterministic=True, **ENGINE)
    outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=24), use_tqdm=False)
    assert [list(output.outputs[0].token_ids) for output in outputs] == plain_greedy
    for output in outputs:
        completion = output.outputs[0]
        assert completion.decoding_actions == ["greedy"] * len(completion.token_ids)
    [fanned] = llm.generate(PROMPTS[:1], SamplingParams(max_tokens=8, n=3), use_tqdm=False)
    assert [completion.index for completion in fanned.outputs] == [0, 1, 2]
    assert len({tuple(completion.token_ids) for completion in fanned.outputs}) == 1  # greedy: one answer
    with pytest.raises(ValueError, match="set temperature=0.5, top_p=0.9: the decoding adapter chooses"):
        llm.generate(PROMPTS, SamplingParams(temperature=0.5, top_p=0.9))
    _release(llm)


def test_sequence_level_picks_per_prompt_the_action_of_the_transformers_path(default_model):
    model, tokenizer = default_model
    adapter = AutoDecodingAdapter.from_pretrained(resolve_adapter(SEQUENCE_ADAPTER))
    assert adapter.level == "sequence" and adapter.prompt_pooling == "last"
    conversations = [[{"role": "user", "content": prompt}] for prompt in PROMPTS]
    expected = {}
    for budget in (1, 8):
        for conversation in conversations:
            inputs = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = model.generate(
                **inputs,
                decoding_adapter=adapter,
                deterministic=True,
                do_sample=True,
                num_return_sequences=budget,
                max_new_tokens=1,
                return_dict_in_generate=True,
            )
            expected.setdefault(budget, []).append(adapter.decoding_config.actions[int(out.decoding_actions[0])].name)
    llm = AdaptiveLLM(decoding_adapter=SEQUENCE_ADAPTER, deterministic=True, **ENGINE)
    for budget in (1, 8):
        outputs = llm.chat(conversations, SamplingParams(max_tokens=4, n=budget), use_tqdm=False)
        chosen = [[completion.decoding_actions for completion in output.outputs] for output in outputs]
        assert chosen == [[[name]] * budget for name in expected[budget]], (budget, expected)
    _release(llm)


def test_token_level_actions_come_back_per_token_and_a_seed_repeats_them():
    llm = AdaptiveLLM(decoding_adapter=TOKEN_ADAPTER, **ENGINE)
    names = set(llm.actions)
    params = SamplingParams(max_tokens=32, n=2, seed=7)
    conversation = [{"role": "user", "content": "What is 48 + 37? Put the final answer in \\boxed{}."}]
    first = llm.chat([conversation] * 2, params, use_tqdm=False)
    again = llm.chat([conversation] * 2, params, use_tqdm=False)
    for output, repeated in zip(first, again, strict=True):
        assert len(output.outputs) == 2
        for completion, same in zip(output.outputs, repeated.outputs, strict=True):
            assert len(completion.decoding_actions) == len(completion.token_ids) > 0
            assert set(completion.decoding_actions) <= names
            assert completion.decoding_actions == same.decoding_actions and completion.token_ids == same.token_ids
    _release(llm)


def test_an_adapter_built_for_another_model_is_refused_before_the_engine_starts(tmp_path):
    adapter = AutoDecodingAdapter.for_model(make_tiny_model("llama"), "math-token")
    adapter.save_pretrained(tmp_path / "tiny")
    with pytest.raises(IncompatibleBaseModelError, match="the vLLM engine's model.*hidden size 576"):
        AdaptiveLLM(decoding_adapter=tmp_path / "tiny", **ENGINE)
    with pytest.raises(ValueError, match="does not run speculative decoding"):
        AdaptiveLLM(decoding_adapter=TOKEN_ADAPTER, speculative_config={"method": "ngram"})
