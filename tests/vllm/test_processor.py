"""The adapter's vLLM logits processor on its own: per-request state through vLLM's batch updates, the budget it
feeds the policy, the actions it records and applies. No engine is started."""

from types import SimpleNamespace

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from hf_adaptive_decoding import AutoDecodingAdapter  # noqa: E402
from hf_adaptive_decoding.vllm import models  # noqa: E402
from hf_adaptive_decoding.vllm.processor import (  # noqa: E402
    PROCESSORS,
    REQUEST_KEY,
    AdapterLogitsProcessor,
    adapter_conflicts,
)
from tests.conftest import make_tiny_model  # noqa: E402


def make_processor(tmp_path, preset: str, engine: str | None = "test-engine") -> AdapterLogitsProcessor:
    adapter = AutoDecodingAdapter.for_model(make_tiny_model("llama"), preset)
    adapter.save_pretrained(tmp_path / "adapter")
    hf_config = SimpleNamespace(hfad_decoding_adapter=str(tmp_path / "adapter"), hfad_deterministic=True)
    if engine is not None:
        hf_config.hfad_engine = engine
    config = SimpleNamespace(
        model_config=SimpleNamespace(hf_config=hf_config, max_model_len=64),
        scheduler_config=SimpleNamespace(max_num_seqs=8),
    )
    return AdapterLogitsProcessor(config, torch.device("cpu"), False)


def sizes(processor: AdapterLogitsProcessor) -> tuple[int, int]:
    return processor.adapter.config.base_model_hidden_size, processor.adapter.config.base_model_vocab_size


def added(index: int, max_tokens: int, number: int, outputs: list[int]):
    return (index, SamplingParams(max_tokens=max_tokens, extra_args={REQUEST_KEY: number}), [1, 2], outputs)


def test_budget_is_max_tokens_minus_generated_and_follows_moves(tmp_path):
    processor = make_processor(tmp_path, "math-token")
    seen = []
    real = processor.decision.token_actions

    def spy(context, remaining, keys, position):
        seen.append((remaining.tolist(), position.tolist()))
        return real(context, remaining, keys, position)

    processor.decision.token_actions = spy
    outputs = [[], [7, 7, 7], []]
    processor.update_state(
        BatchUpdate(3, removed=[], added=[added(i, 10 * (i + 1), 100 + i, outputs[i]) for i in range(3)], moved=[])
    )
    hidden_size = processor.adapter.config.base_model_hidden_size
    models.SAMPLED.hidden_states = torch.randn(3, hidden_size)
    processor.apply(torch.randn(3, processor.adapter.config.base_model_vocab_size))
    assert seen[-1] == ([10, 17, 30], [0, 3, 0])
    # Request 0 ends: vLLM moves request 2 into its slot; then rows 0 and 1 swap.
    processor.update_state(
        BatchUpdate(
            2,
            removed=[0],
            added=[],
            moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL), (0, 1, MoveDirectionality.SWAP)],
        )
    )
    outputs[1].append(8)
    models.SAMPLED.hidden_states = torch.randn(2, hidden_size)
    processor.apply(torch.randn(2, processor.adapter.config.base_model_vocab_size))
    assert seen[-1] == ([16, 30], [4, 0])


def test_records_one_action_per_position_and_hands_them_over_once(tmp_path):
    processor = make_processor(tmp_path, "math-token", engine="records-engine")
    assert PROCESSORS["records-engine"] is processor
    outputs = [[], []]
    processor.update_state(
        BatchUpdate(2, removed=[], added=[added(i, 5, 200 + i, outputs[i]) for i in range(2)], moved=[])
    )
    hidden_size, vocab = sizes(processor)
    for step in range(3):
        models.SAMPLED.hidden_states = torch.randn(2, hidden_size)
        logits = torch.randn(2, vocab)
        transformed = processor.apply(logits)
        # A fresh adapter is uniform, so the deterministic choice is the first action: greedy keeps only the argmax.
        assert torch.equal(transformed.argmax(-1), logits.argmax(-1))
        assert torch.isinf(transformed).sum() == 2 * (vocab - 1)
        outputs[0].append(1)
        if step < 1:
            outputs[1].append(1)
    actions = processor.take_actions([200, 201])
    # Request 201 stopped growing after one token: its later steps re-decide position 1 (e.g. a chunked prefill).
    assert actions == {200: [0, 0, 0], 201: [0, 0]}
    assert processor.take_actions([200]) == {200: []}


def test_sequence_level_decides_until_the_first_token_then_keeps_it(tmp_path):
    processor = make_processor(tmp_path, "mixed-seq")
    outputs = [[]]
    processor.update_state(BatchUpdate(1, removed=[], added=[added(0, 5, 300, outputs[0])], moved=[]))
    hidden_size, vocab = sizes(processor)
    chosen = []
    real = processor.decision.prompt_actions

    def spy(features, budget, keys):
        actions, probs = real(features, budget, keys)
        chosen.append(actions.clone())
        return torch.full_like(actions, len(chosen) % 2), probs  # a different action at each call

    processor.decision.prompt_actions = spy
    for _ in range(2):  # two prefill chunks: the second decision replaces the first
        models.SAMPLED.hidden_states = torch.randn(1, hidden_size)
        processor.apply(torch.randn(1, vocab))
    outputs[0].append(5)
    for _ in range(2):
        models.SAMPLED.hidden_states = torch.randn(1, hidden_size)
        processor.apply(torch.randn(1, vocab))
        outputs[0].append(5)
    assert processor.sequence_actions[0].item() == 0  # the second call's action (2 % 2), kept after the first token


def test_a_processor_without_adapter_changes_nothing(tmp_path):
    config = SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(), max_model_len=64))
    processor = AdapterLogitsProcessor(config, torch.device("cpu"), False)
    logits = torch.randn(2, 11)
    processor.update_state(BatchUpdate(1, removed=[], added=[added(0, 5, 1, [])], moved=[]))
    assert processor.apply(logits) is logits and processor.is_argmax_invariant()


def test_missing_hidden_states_are_a_clear_error(tmp_path):
    processor = make_processor(tmp_path, "math-token", engine=None)
    processor.update_state(BatchUpdate(2, removed=[], added=[added(i, 5, i, []) for i in range(2)], moved=[]))
    models.SAMPLED.hidden_states = torch.randn(3, processor.adapter.config.base_model_hidden_size)
    with pytest.raises(RuntimeError, match="HfadAdaptive architecture, or runs speculative decoding"):
        processor.apply(torch.randn(2, processor.adapter.config.base_model_vocab_size))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"temperature": 0.7}, "temperature=0.7"),
        ({"top_k": 20}, "top_k=20"),
        ({"top_p": 0.9}, "top_p=0.9"),
        ({"min_p": 0.1}, "min_p=0.1"),
        ({"repetition_penalty": 1.2}, "repetition_penalty=1.2"),
    ],
)
def test_sampling_settings_the_adapter_owns_are_refused(settings, named):
    assert adapter_conflicts(SamplingParams(**settings)) == [named]
    with pytest.raises(ValueError, match=named):
        AdapterLogitsProcessor.validate_params(SamplingParams(**settings))
    assert adapter_conflicts(SamplingParams(max_tokens=9, n=4, seed=3, stop=["\n"], logprobs=2)) == []


def test_every_vllm_architecture_gets_a_lazily_built_twin():
    models.register()
    archs = vllm.ModelRegistry.get_supported_archs()
    assert "HfadAdaptiveLlamaForCausalLM" in archs and "HfadAdaptiveQwen2ForCausalLM" in archs
    twin = models.HfadAdaptiveLlamaForCausalLM
    from vllm.model_executor.models.llama import LlamaForCausalLM

    assert issubclass(twin, LlamaForCausalLM) and twin.__name__ == "HfadAdaptiveLlamaForCausalLM"
    with pytest.raises(AttributeError, match="no architecture 'NoSuchArch'"):
        models.HfadAdaptiveNoSuchArch  # noqa: B018
