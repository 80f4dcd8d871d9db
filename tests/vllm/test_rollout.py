"""vLLM as the rollout engine of sequence-level training: the same features and decisions as the transformers path,
the same greedy tokens, and a short `use_vllm=True` run on the default model."""

import os

import pytest
import torch

vllm = pytest.importorskip("vllm")

from hf_adaptive_decoding import (  # noqa: E402
    AdapterTrainer,
    AdapterTrainerConfig,
    AdaptiveDecodingConfig,
    AutoDecodingAdapter,
    arithmetic_dataset,
    math_reward,
)
from hf_adaptive_decoding.data.prompting import encode_prompts  # noqa: E402
from hf_adaptive_decoding.generation.rollout import generate_rollouts  # noqa: E402
from hf_adaptive_decoding.vllm.rollout import vllm_generate_rollouts  # noqa: E402

pytestmark = pytest.mark.slow
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
QUESTIONS = ["What is 17 + 25?", "What is 9 * 6?", "What is 81 - 47?"]


@pytest.fixture(scope="module")
def engine(default_model):
    model, _ = default_model
    llm = vllm.LLM(model=model.weights_folder, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    yield llm
    del llm


def test_greedy_rollouts_and_prompt_features_match_the_transformers_path(default_model, engine):
    model, tokenizer = default_model
    config = AdaptiveDecodingConfig.from_preset("mixed-seq", budget_feature="log")
    adapter = AutoDecodingAdapter.for_model(model, config)
    greedy = [action.name for action in adapter.decoding_config.actions].index("greedy")
    encoded = encode_prompts(tokenizer, QUESTIONS, [None] * 3, None, model.device)
    common = dict(
        num_samples=torch.tensor([2, 2, 2]),
        token_budgets=torch.tensor([12, 12, 12]),
        fixed_actions=torch.full((6,), greedy),
        noise_keys=torch.tensor([1, 2, 3]),
    )
    reference = generate_rollouts(model, adapter, encoded["input_ids"], encoded["attention_mask"], **common)
    drawn = vllm_generate_rollouts(engine, model, adapter, encoded["input_ids"], encoded["attention_mask"], **common)
    assert torch.equal(drawn.input_index, reference.input_index)
    assert torch.equal(drawn.completion_mask, reference.completion_mask)
    tokens = drawn.completion_ids[drawn.completion_mask]
    assert torch.equal(tokens, reference.completion_ids[reference.completion_mask])
    torch.testing.assert_close(drawn.prompt_features, reference.prompt_features, atol=1e-4, rtol=1e-4)
    inputs = (encoded["input_ids"], encoded["attention_mask"], torch.tensor([1, 8, 2]), torch.tensor([4, 4, 4]))
    decided = vllm_generate_rollouts(engine, model, adapter, *inputs, deterministic=True)
    expected = generate_rollouts(model, adapter, *inputs, deterministic=True)
    assert torch.equal(decided.actions, expected.actions) and decided.budgets.tolist() == [1.0, 8.0, 2.0]
    assert decided.completion_ids.shape == (11, 4) and bool(decided.completion_mask[:, 0].all())


def test_a_token_level_policy_is_refused(default_model, engine):
    model, tokenizer = default_model
    adapter = AutoDecodingAdapter.for_model(model, "math-token")
    encoded = encode_prompts(tokenizer, QUESTIONS[:1], [None], None, model.device)
    inputs = (encoded["input_ids"], encoded["attention_mask"], torch.tensor([1]), torch.tensor([4]))
    with pytest.raises(ValueError, match="need a sequence-level policy"):
        vllm_generate_rollouts(engine, model, adapter, *inputs)


def test_two_training_steps_with_vllm_rollouts_on_the_default_model(default_model, tmp_path):
    model, tokenizer = default_model
    adapter = AutoDecodingAdapter.for_model(
        model, AdaptiveDecodingConfig.from_preset("mixed-seq", budget_feature="log"), budget_logits=True
    )
    args = AdapterTrainerConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        action_sampling="all",
        parallel_budgets=[1, 2],
        reward_aggregation="best_of_b",
        max_completion_length=16,
        use_vllm=True,
        vllm_engine_kwargs={"max_model_len": 512, "dtype": "float32"},
        eval_steps=None,
        disable_tqdm=True,
        plot=False,
    )
    trainer = AdapterTrainer(
        model,
        adapter,
        math_reward,
        args=args,
        train_dataset=arithmetic_dataset("train", 20, levels=[1]),
        processing_class=tokenizer,
    )
    before = {key: value.clone() for key, value in adapter.state_dict().items()}
    metrics = trainer.train()
    assert trainer._vllm_llm is not None and 0 <= metrics["reward"] <= 1
    assert any(not torch.equal(before[key], value) for key, value in adapter.state_dict().items())
    assert (tmp_path / "model.safetensors").exists()
