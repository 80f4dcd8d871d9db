import pytest
import torch
from datasets import Dataset

from hf_adaptive_decoding import (
    AdapterTrainer,
    AdapterTrainerConfig,
    AdaptiveDecodingConfig,
    AutoDecodingAdapter,
    DecodingAction,
    encode_chat,
)
from hf_adaptive_decoding.data.prompting import encode_prompts
from hf_adaptive_decoding.evaluation.runner import rollout_and_score
from hf_adaptive_decoding.generation.policies import ConstantPolicy
from tests.conftest import make_char_tokenizer, make_tiny_model


@pytest.mark.slow
def test_encode_chat_left_pads_and_uses_the_template(default_model):
    _, tokenizer = default_model
    batch = encode_chat(tokenizer, ["Hi", "What is 23 + 19?"], system_prompt="Be brief.")
    assert batch["input_ids"].shape[0] == 2
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padding
    text = tokenizer.decode(batch["input_ids"][1])
    assert "Be brief." in text and "What is 23 + 19?" in text and text.rstrip().endswith("assistant")


@pytest.mark.parametrize("bad", ["just a string", []])
def test_encode_chat_rejects_bad_messages(bad):
    with pytest.raises(ValueError, match="non-empty list"):
        encode_chat(None, bad)


# --- encode_prompts: TRL's standard (string) and conversational (messages) formats -------------------------------


def base_tokenizer():
    """The tiny character tokenizer as a base model's: no chat template."""
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = None
    return tokenizer


def rows_of(batch) -> list[list[int]]:
    """Each row's ids without its padding."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def test_standard_prompts_are_text_with_the_instruction_appended():
    tokenizer = base_tokenizer()
    batch = encode_prompts(tokenizer, ["What is 1 + 1?", "Hi"], ["Answer.", None], system_prompt="Be brief.")
    texts = ["Be brief.\nWhat is 1 + 1?\nAnswer.", "Be brief.\nHi"]
    assert rows_of(batch) == tokenizer(texts)["input_ids"]
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padding
    assert [tokenizer.decode(row) for row in rows_of(encode_prompts(tokenizer, ["Hi"], [None]))] == ["Hi"]


def test_conversational_prompts_are_chat_templated():
    tokenizer = make_char_tokenizer()
    prompts = [[{"role": "user", "content": "What is 1 + 1?"}], [{"role": "user", "content": "Hi"}]]
    batch = encode_prompts(tokenizer, prompts, ["Answer.", None], system_prompt="Be brief.")
    expected = tokenizer.apply_chat_template(
        [
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 1?\nAnswer."}],
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        ],
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    # A conversation's own system turn is kept; the instruction goes to the last user turn; the input is not edited.
    conversation = [
        {"role": "system", "content": "Mine."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    (row,) = rows_of(encode_prompts(tokenizer, [conversation], ["Go."], system_prompt="Be brief."))
    assert tokenizer.decode(row) == "Mine.\na\nb\nc\nGo.\n>"
    assert conversation[-1]["content"] == "c"


def test_mixed_formats_encode_each_row_as_alone():
    tokenizer = make_char_tokenizer()  # has a chat template, which the string prompt does not use
    prompts = ["plain text", [{"role": "user", "content": "chat"}]]
    batch = encode_prompts(tokenizer, prompts, ["Now.", "Now."])
    alone = [rows_of(encode_prompts(tokenizer, [prompt], ["Now."]))[0] for prompt in prompts]
    assert rows_of(batch) == alone
    assert [tokenizer.decode(row) for row in alone] == ["plain text\nNow.", "chat\nNow.\n>"]


def test_conversational_prompts_without_a_chat_template_are_a_clear_error():
    with pytest.raises(ValueError, match="no chat template.*as strings"):
        encode_prompts(base_tokenizer(), [[{"role": "user", "content": "Hi"}]], [None])


@pytest.mark.parametrize(
    ("prompts", "instructions", "message"),
    [
        ("a string", [None], "non-empty list of prompts"),
        ([], [], "non-empty list of prompts"),
        ([42], [None], "neither a string"),
        ([[]], [None], "neither a string"),
        ([[{"role": "system", "content": "s"}]], ["Go."], "no user message"),
    ],
)
def test_bad_prompts_are_named(prompts, instructions, message):
    with pytest.raises(ValueError, match=message):
        encode_prompts(make_char_tokenizer(), prompts, instructions)


def test_a_base_model_is_rolled_out_and_scored_on_its_text():
    """String prompts, a tokenizer without a chat template: the rollouts continue the text itself (greedy equals plain
    greedy decoding of the text), and the reward functions get strings."""
    model, tokenizer = make_tiny_model("llama"), base_tokenizer()
    rows = [{"prompt": "12+3=", "answer": "15"}, {"prompt": "What is 7 * 8?", "answer": "56"}]
    seen = {}

    def record(prompts, completions, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [float(len(completion)) for completion in completions]

    greedy = ConstantPolicy.static(DecodingAction(do_sample=False))
    scored = rollout_and_score(model, tokenizer, greedy, rows, [record], token_budgets=6, instructions="Answer:")
    texts = [f"{row['prompt']}\nAnswer:" for row in rows]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    plain = model.generate(**encoded, do_sample=False, max_new_tokens=6)
    expected = tokenizer.batch_decode(plain[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert scored.completions == expected
    assert seen == {"prompts": ["12+3=", "What is 7 * 8?"], "completions": expected}
    assert scored.rewards.tolist() == [float(len(text)) for text in expected]


def test_a_base_model_trains_on_string_prompts(tmp_path):
    """The trainer end to end on a base model: training and validation rollouts, rewards and the saved adapter."""
    model = make_tiny_model("llama")
    config = AdaptiveDecodingConfig(actions=[DecodingAction(do_sample=False), DecodingAction(temperature=1.0)])
    torch.manual_seed(0)
    adapter = AutoDecodingAdapter.for_model(model, config, adapter_hidden_size=16)
    seen = []

    def starts_with_digit(prompts, completions, answer, **kwargs):
        seen.extend(completions)
        return [float(bool(c) and c[0].isdigit()) for c in completions]

    dataset = Dataset.from_list([{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(8)])
    args = AdapterTrainerConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        token_budgets=[4],
        eval_steps=2,
        save_steps=2,
        per_device_eval_batch_size=4,
        eval_num_examples=4,
        disable_tqdm=True,
        plot=False,
        seed=0,
    )
    trainer = AdapterTrainer(
        model=model,
        adapter=adapter,
        reward_funcs=starts_with_digit,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(4)),
        processing_class=base_tokenizer(),
    )
    trainer.train()
    assert seen and all(isinstance(completion, str) for completion in seen)
    assert any("eval_reward" in entry for entry in trainer.state["log_history"])
    assert (tmp_path / "run" / "config.json").is_file()
