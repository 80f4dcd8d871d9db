import json
import os
import zlib

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hf_adaptive_decoding import (
    AdapterTrainer,
    AdapterTrainerConfig,
    AdaptiveDecodingConfig,
    AutoDecodingAdapter,
    DecodingAction,
)
from hf_adaptive_decoding.data.prompting import encode_prompts
from hf_adaptive_decoding.rewards.scoring import RewardFunctionError
from hf_adaptive_decoding.training import checkpointing
from tests.conftest import make_char_tokenizer, make_tiny_model

ACTIONS = [DecodingAction(do_sample=False), DecodingAction(temperature=1.0)]


def tiny_dataset(size: int = 16) -> Dataset:
    return Dataset.from_list([{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(size)])


def starts_with_digit(prompts, completions, answer, **kwargs):
    return [float(bool(c) and c[0].isdigit()) for c in completions]


def completion_length(prompts, completions, **kwargs):
    return [len(c) / 6 for c in completions]


def make_trainer(
    tmp_path, level="token", reward_funcs=starts_with_digit, model=None, budget_logits=False, **overrides
):
    model = model if model is not None else make_tiny_model("llama")
    config = AdaptiveDecodingConfig(actions=ACTIONS, level=level, budget_feature="log")
    torch.manual_seed(0)
    adapter = AutoDecodingAdapter.for_model(
        model, config, adapter_hidden_size=16, budget_hidden_size=8, budget_logits=budget_logits
    )
    settings = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        token_budgets=[4, 6],
        parallel_budgets=[1, 2],
        eval_steps=2,
        save_steps=2,
        per_device_eval_batch_size=4,
        eval_num_examples=4,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return AdapterTrainer(
        model=model,
        adapter=adapter,
        reward_funcs=reward_funcs,
        args=AdapterTrainerConfig(**settings),
        train_dataset=tiny_dataset(),
        eval_dataset=tiny_dataset(8),
        processing_class=make_char_tokenizer(),
    )


def adapter_state(trainer):
    return {k: v.clone() for k, v in trainer.unwrapped_adapter.state_dict().items()}


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_training_updates_only_the_adapter_and_writes_everything(tmp_path, level):
    trainer = make_trainer(tmp_path, level, reward_funcs=completion_length)
    lm_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    adapter_before = adapter_state(trainer)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.unwrapped_adapter.parameters()}

    trainer.train()

    assert all(torch.equal(lm_before[k], v) for k, v in trainer.model.state_dict().items())  # bit-identical LM
    assert not trainer.model.training and not any(p.requires_grad for p in trainer.model.parameters())
    assert any(not torch.equal(adapter_before[k], v) for k, v in adapter_state(trainer).items())
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "reward" in line]
    assert [line["step"] for line in train_lines] == [1, 2, 3, 4]
    assert {"reward", "reward_std", "entropy", "loss", "time/rollout", "time/update", "tokens_per_second"} <= set(
        train_lines[0]
    )
    assert {f"action_probs/{a.name}" for a in ACTIONS} <= set(train_lines[0])
    assert (level == "token") == ("masked_fraction" in train_lines[0])
    for line in train_lines:  # sequence level: the policy at each parallel budget, which the overall mean weighs
        per_budget = {b: [line.get(f"action_probs/B={b}/{a.name}") for a in ACTIONS] for b in (1, 2)}
        if level == "token":
            assert all(value is None for values in per_budget.values() for value in values)
            continue
        drawn = {b: values for b, values in per_budget.items() if values[0] is not None}
        assert drawn and all(sum(values) == pytest.approx(1.0) for values in drawn.values())
        overall = [line[f"action_probs/{a.name}"] for a in ACTIONS]
        columns = list(zip(*drawn.values(), strict=True))  # one tuple per action: its probability at each budget
        assert all(min(c) - 1e-6 <= value <= max(c) + 1e-6 for c, value in zip(columns, overall, strict=True))
    assert [line["step"] for line in lines if "eval_reward" in line] == [2, 4]
    assert (run / "config.json").is_file() and (run / "model.safetensors").is_file()
    card = (run / "README.md").read_text()
    assert "## Action space" in card and "Best static action" in card
    assert set(json.loads((run / "eval_results.json").read_text())["static"]) == {a.name for a in ACTIONS}
    assert (run / "plots" / "action_probs.png").is_file() and (run / "plots" / "reward.png").is_file()
    assert [p.name for p in checkpointing.complete_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    reloaded = AutoDecodingAdapter.from_pretrained(run)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in adapter_state(trainer).items())


def test_policy_moves_towards_the_rewarded_action(tmp_path):
    """Sequence level with a reward only the greedy action earns: the policy learns to prefer greedy."""
    model = make_tiny_model("llama")
    tokenizer = make_char_tokenizer()
    greedy = {}

    def matches_greedy(prompts, completions, **kwargs):
        for prompt in set(prompts) - set(greedy):  # a string prompt is text, as the trainer encodes it
            encoded = encode_prompts(tokenizer, [prompt], [AdapterTrainerConfig.instruction])
            out = model.generate(**encoded, do_sample=False, max_new_tokens=6)
            greedy[prompt] = tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        return [float(c == greedy[p]) for p, c in zip(prompts, completions, strict=True)]

    trainer = make_trainer(
        tmp_path, "sequence", matches_greedy, model=model, max_steps=12, learning_rate=0.05, eval_steps=None
    )
    trainer.args.plot = False
    with torch.no_grad():
        before = trainer.unwrapped_adapter(torch.zeros(1, 32), torch.tensor([1])).logits.softmax(-1)[0, 0]
    trainer.train()
    history = [entry["action_probs/greedy"] for entry in trainer.state["log_history"] if "reward" in entry]
    assert history[-1] > 0.7 > float(before)


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    uninterrupted = make_trainer(tmp_path / "a")
    uninterrupted.train()

    interrupted = make_trainer(tmp_path / "b")
    original = interrupted._update
    calls = []

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(interrupted, "_update", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert [p.name for p in checkpointing.complete_checkpoints(tmp_path / "b" / "run")] == ["checkpoint-2"]

    resumed = make_trainer(tmp_path / "b")
    resumed.train(resume_from_checkpoint=True)
    expected, actual = adapter_state(uninterrupted), adapter_state(resumed)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    steps = [e["step"] for e in resumed.state["log_history"] if "reward" in e]
    assert steps == [1, 2, 3, 4]  # the log history of the first two steps came back with the checkpoint


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=4, save_steps=2, eval_steps=None)
    real_replace = os.replace

    def crash_on_second(source, target):
        if str(target).endswith("checkpoint-4"):
            raise OSError("disk gone")
        return real_replace(source, target)

    monkeypatch.setattr(checkpointing.os, "replace", crash_on_second)
    with pytest.raises(OSError, match="disk gone"):
        trainer.train()
    run = tmp_path / "run"
    assert (run / ".staging-checkpoint-4").is_dir()  # the partial one never got its final name
    assert checkpointing.resolve_checkpoint(run, True).name == "checkpoint-2"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpointing.resolve_checkpoint(run, run / ".staging-checkpoint-4")
    monkeypatch.setattr(checkpointing.os, "replace", real_replace)
    resumed = make_trainer(tmp_path, max_steps=4, save_steps=2, eval_steps=None)
    resumed.train(resume_from_checkpoint=True)
    assert [p.name for p in checkpointing.complete_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert not (run / ".staging-checkpoint-4").exists()


def test_reward_function_errors_name_the_function(tmp_path):
    def broken_reward(prompts, completions, **kwargs):
        raise KeyError("answer")

    trainer = make_trainer(tmp_path, reward_funcs=[starts_with_digit, broken_reward])
    with pytest.raises(RewardFunctionError, match="broken_reward"):
        trainer.train()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("baseline", "median", "baseline must be one of"),
        ("reward_aggregation", "pass@9", "k <= min"),
        ("token_budgets", [100], "at most max_completion_length"),
        ("max_prob_threshold", 1.5, "max_prob_threshold"),
        ("report_to", ["nonsense"], "report_to"),
        ("action_sampling", "some", "action_sampling must be one of"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        AdapterTrainerConfig(**{field: value})


def test_every_action_needs_enough_samples_for_the_largest_budget_and_a_sequence_adapter(tmp_path):
    with pytest.raises(ValueError, match=r"num_generations must be >= max\(parallel_budgets\)=8"):
        AdapterTrainerConfig(action_sampling="all", num_generations=4, parallel_budgets=[1, 8])
    with pytest.raises(ValueError, match="needs a sequence-level adapter, got a token-level one"):
        make_trainer(tmp_path, "token", action_sampling="all", num_generations=2, parallel_budgets=[1, 2])


def test_trying_every_action_learns_a_different_action_per_budget(tmp_path):
    """Greedy earns 0.5, a sample 1 a quarter of the time: greedy is best at B = 1, sampling at B = 4 (best of four
    ~0.68). With every action tried at both budgets and the budget path to the logits, the policy learns both."""
    model = make_tiny_model("llama")
    tokenizer = make_char_tokenizer()
    greedy = {}

    def reward(prompts, completions, **kwargs):
        for prompt in set(prompts) - set(greedy):
            encoded = encode_prompts(tokenizer, [prompt], [AdapterTrainerConfig.instruction])
            out = model.generate(**encoded, do_sample=False, max_new_tokens=6)
            greedy[prompt] = tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        return [
            0.5 if c == greedy[p] else float(zlib.crc32(c.encode()) % 4 == 0)
            for p, c in zip(prompts, completions, strict=True)
        ]

    trainer = make_trainer(
        tmp_path,
        "sequence",
        reward,
        model=model,
        budget_logits=True,
        action_sampling="all",
        num_generations=4,
        parallel_budgets=[1, 4],
        max_steps=12,
        learning_rate=0.05,
        eval_steps=None,
        plot=False,
    )
    trainer.train()
    last = [entry for entry in trainer.state["log_history"] if "reward" in entry][-1]
    assert last["action_probs/B=1/greedy"] > 0.9 and last["action_probs/B=4/T=1"] > 0.8
    assert last["num_samples"] == 4 * 2 * 4  # every prompt: both actions, four samples each
    assert {"expected_reward/B=1", "best_action_reward/B=4"} <= set(last)


def test_bad_datasets_and_adapters_are_refused(tmp_path):
    model = make_tiny_model("llama")
    other = make_tiny_model("qwen2")
    adapter = AutoDecodingAdapter.for_model(other, "math-token")
    with pytest.raises(Exception, match="hidden size"):
        AdapterTrainer(model, adapter, starts_with_digit, train_dataset=tiny_dataset())
    adapter = AutoDecodingAdapter.for_model(model, "math-token")
    with pytest.raises(ValueError, match="empty"):
        AdapterTrainer(model, adapter, starts_with_digit, train_dataset=tiny_dataset().select([]))
    with pytest.raises(ValueError, match="'prompt' column"):
        AdapterTrainer(model, adapter, starts_with_digit, train_dataset=tiny_dataset().rename_column("prompt", "q"))


@pytest.mark.slow
def test_a_short_run_on_the_default_model(default_model, tmp_path):
    from hf_adaptive_decoding import arithmetic_dataset, math_reward

    model, tokenizer = default_model
    adapter = AutoDecodingAdapter.for_model(
        model, AdaptiveDecodingConfig.from_preset("math-token", budget_feature="log")
    )
    lm_before = {k: v.clone() for k, v in model.state_dict().items()}
    args = AdapterTrainerConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=16,
        eval_steps=2,
        eval_num_examples=4,
        disable_tqdm=True,
        plot=False,
    )
    trainer = AdapterTrainer(
        model,
        adapter,
        math_reward,
        args=args,
        train_dataset=arithmetic_dataset("train", 20, levels=[1]),
        eval_dataset=arithmetic_dataset("validation", 4, levels=[1]),
        processing_class=tokenizer,
    )
    metrics = trainer.train()
    assert 0 <= metrics["reward"] <= 1 and 0 <= metrics["eval_reward"] <= 1
    assert 0 < metrics["masked_fraction"] < 1  # the 0.95 mask is in force on real next-token distributions
    assert metrics["rewards/math_reward/mean"] == metrics["reward"]
    assert all(torch.equal(lm_before[k], v) for k, v in model.state_dict().items())
    assert AutoDecodingAdapter.from_pretrained(tmp_path).config.base_model_name_or_path == model.name_or_path


def test_a_hanging_reward_function_gets_the_failure_reward_and_training_goes_on(tmp_path):
    import time

    def hangs_on_first_call(prompts, completions, **kwargs):
        if not hangs_on_first_call.called:
            hangs_on_first_call.called = True
            time.sleep(30)
        return [1.0] * len(completions)

    hangs_on_first_call.called = False
    trainer = make_trainer(
        tmp_path,
        reward_funcs=hangs_on_first_call,
        max_steps=2,
        eval_steps=None,
        reward_timeout=0.5,
        failure_reward=-1.0,
    )
    start = time.monotonic()
    trainer.train()
    assert time.monotonic() - start < 25
    rewards = [entry["reward"] for entry in trainer.state["log_history"] if "reward" in entry]
    assert rewards == [-1.0, 1.0]


def test_metrics_reach_tensorboard_and_the_adapter_is_pushed(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pushed = []
    monkeypatch.setattr(
        "hf_adaptive_decoding.adapters.modeling.DecodingAdapterModel.push_to_hub",
        lambda self, repo_id, **kwargs: pushed.append(("adapter", repo_id, kwargs.get("private"))),
    )
    monkeypatch.setattr(
        "huggingface_hub.ModelCard.push_to_hub", lambda self, repo_id, **kwargs: pushed.append(("card", repo_id))
    )
    trainer = make_trainer(
        tmp_path,
        max_steps=2,
        eval_steps=None,
        report_to=["tensorboard"],
        push_to_hub=True,
        hub_model_id="me/tiny-adapter",
        hub_private_repo=True,
    )
    trainer.train()
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert pushed == [("adapter", "me/tiny-adapter", True), ("card", "me/tiny-adapter")]


def test_an_output_dir_holding_a_run_is_not_silently_mixed_with_a_new_one(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_steps=1, eval_steps=None, plot=False, save_total_limit=None).train()
    with pytest.raises(ValueError, match="already holds a training run"):
        make_trainer(tmp_path, max_steps=2, eval_steps=None, plot=False).train()
    # Resuming from an earlier checkpoint drops what came after it: later checkpoints and later metrics.
    trainer = make_trainer(tmp_path, max_steps=2, save_steps=1, eval_steps=None, plot=False, save_total_limit=None)
    trainer.train(resume_from_checkpoint=tmp_path / "run" / "checkpoint-1")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    # Starting over is explicit.
    make_trainer(tmp_path, max_steps=1, eval_steps=None, plot=False, overwrite_output_dir=True).train()
    assert [p.name for p in checkpointing.complete_checkpoints(tmp_path / "run")] == ["checkpoint-1"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]


def test_conversational_prompts_get_the_instruction_and_conversational_completions(tmp_path):
    seen = []

    def records(prompts, completions, **kwargs):
        seen.extend(completions)
        return [0.0] * len(completions)

    trainer = make_trainer(tmp_path, reward_funcs=records, max_steps=1, eval_steps=None, plot=False)
    trainer.train_dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Add {i} and {i}."}], "answer": str(2 * i)} for i in range(4)]
    )
    trainer.eval_dataset = None
    trainer.train()
    assert seen and all(isinstance(c, list) and c[0]["role"] == "assistant" for c in seen)
    prompt = trainer.train_dataset[0]["prompt"]
    encoded = encode_prompts(trainer.tokenizer, [prompt], [trainer.args.instruction], trainer.args.system_prompt)
    text = trainer.tokenizer.decode(encoded["input_ids"][0], skip_special_tokens=True)
    assert text.startswith("Add 0 and 0.\n" + trainer.args.instruction)


def test_validation_samples_from_its_own_seeds_and_leaves_the_training_rng_alone(tmp_path):
    seen = []

    def records(prompts, completions, **kwargs):
        seen.append(list(completions))
        return [0.0] * len(completions)

    trainer = make_trainer(tmp_path, reward_funcs=records, eval_num_examples=8)

    def validate():
        seen.clear()
        trainer.evaluate()
        trainer.evaluate_static_actions()
        return list(seen)

    torch.manual_seed(1)
    first = validate()
    torch.manual_seed(2)
    rng_before = torch.get_rng_state()
    second = validate()
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert second == first
    # Two chunks of 4 prompts each for the adapter, static greedy and static T=1: T=1 really samples.
    assert len(first) == 6 and first[4:] != first[2:4]


def test_load_best_model_at_end_keeps_the_best_validated_adapter(tmp_path):
    def even_length(prompts, completions, **kwargs):  # varies across samples, so every step moves the adapter
        return [float(len(completion) % 2 == 0) for completion in completions]

    trainer = make_trainer(
        tmp_path, reward_funcs=even_length, eval_steps=1, save_steps=4, load_best_model_at_end=True, plot=False
    )
    real, scripted = trainer.evaluate, iter([0.1, 0.5, 0.5, 0.2])
    trainer.evaluate = lambda *args, **kwargs: {**real(*args, **kwargs), "eval_reward": next(scripted)}
    trainer.train()
    run = tmp_path / "run"
    evaluation = json.loads((run / "eval_results.json").read_text())
    assert evaluation["best_step"] == 2 and evaluation["adapter"] == 0.5  # the tie at step 3 keeps step 2
    saved, best = load_file(run / "model.safetensors"), load_file(run / "best-2" / "model.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[key], best[key]) for key in saved)
    last = trainer.unwrapped_adapter.state_dict()
    assert any(not torch.equal(last[key].cpu(), saved[key]) for key in saved)
    assert sorted(p.name for p in run.glob("best-*")) == ["best-1", "best-2"]


def test_load_best_model_at_end_needs_validations():
    with pytest.raises(ValueError, match="load_best_model_at_end must be False when eval_steps is None"):
        AdapterTrainerConfig(output_dir="x", eval_steps=None, load_best_model_at_end=True)


def test_without_load_best_model_at_end_no_best_copies_are_written(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, eval_steps=1, plot=False)
    trainer.train()
    assert not list((tmp_path / "run").glob("best-*"))
    assert "best_step" not in json.loads((tmp_path / "run" / "eval_results.json").read_text())


def test_use_vllm_trains_sequence_level_adapters_only(tmp_path):
    with pytest.raises(ValueError, match="use_vllm draws whole completions under one action.*token-level"):
        make_trainer(tmp_path, level="token", use_vllm=True)


def test_vllm_engine_kwargs_take_json_and_refuse_other_text():
    parsed = AdapterTrainerConfig(vllm_engine_kwargs='{"max_model_len": 512}').vllm_engine_kwargs
    assert parsed == {"max_model_len": 512}
    with pytest.raises(ValueError, match="vllm_engine_kwargs must be a dict or a JSON object string"):
        AdapterTrainerConfig(vllm_engine_kwargs="max_model_len=512")
