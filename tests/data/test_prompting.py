import pytest

from hf_adaptive_decoding import encode_chat


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
