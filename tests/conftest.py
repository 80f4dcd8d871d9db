import os

# No hub is reachable here or in CI; without this, huggingface_hub waits for network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import hf_adaptive_decoding  # noqa: F401  (patches generate)
from hf_adaptive_decoding import encode_chat

VOCAB = 128
PAD, EOS, BOS = 0, 1, 2


def make_tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A small random causal LM built in-process; same seed, same weights."""
    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": BOS}
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = Qwen2Config(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
        model = Qwen2ForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=40, n_layer=2, n_head=4, n_positions=128, **common)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    # Sharper next-token distributions than a random init gives, so that truncation actually truncates.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config.top_k = 50  # like many Hub models: must not be applied on top of the adapter
    return model.eval()


ARCHS = ["llama", "qwen2", "gpt2"]


@pytest.fixture(params=ARCHS)
def tiny_model(request):
    return make_tiny_model(request.param)


@pytest.fixture
def llama():
    return make_tiny_model("llama")


def left_padded_batch(seed: int = 0, lengths=(7, 4, 6)):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), PAD)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length :] = torch.randint(3, VOCAB, (length,), generator=generator)
        attention_mask[row, width - length :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="session")
def default_model():
    from hf_adaptive_decoding.default_model import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def math_prompts(default_model):
    _, tokenizer = default_model
    questions = ["What is 7 * 8?", "What is 23 + 19?", "What is 9 - 4?"]
    return encode_chat(tokenizer, [f"{q} Put the final answer in \\boxed{{}}." for q in questions])


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}>{% endif %}"
)


def make_char_tokenizer():
    """A character-level tokenizer whose ids fit the tiny models' vocabulary, with a minimal chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(code) for code in range(32, 127)] + ["\n"]
    vocab = {"<pad>": PAD, "</s>": EOS, "<s>": BOS, **{char: index + 3 for index, char in enumerate(chars)}}
    assert max(vocab.values()) < VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture(autouse=True)
def grad_mode_is_left_as_found():
    """A test that leaves autograd off (a no_grad context never exited) fails itself, not a later training test."""
    enabled = torch.is_grad_enabled()
    yield
    assert torch.is_grad_enabled() == enabled, "this test left torch's grad mode changed"
