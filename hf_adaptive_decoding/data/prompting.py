"""Turn user messages into a left-padded batch through the model's own chat template."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import BatchEncoding, PreTrainedTokenizerBase


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    user_messages: Sequence[str],
    system_prompt: str | None = None,
    device=None,
) -> BatchEncoding:
    """
    One single-turn conversation per message, rendered by the tokenizer's chat template with the generation prompt
    appended, padded on the tokenizer's side (left, for generation, with [`load_default_model`]).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): a tokenizer with a chat template.
        user_messages (`Sequence[str]`): the user turns, one per row.
        system_prompt (`str`, *optional*): a system turn put before each user turn.
        device (*optional*): where to put the tensors.
    """
    if isinstance(user_messages, str) or not user_messages:
        raise ValueError(f"user_messages must be a non-empty list of strings, got {user_messages!r}.")
    if tokenizer.chat_template is None:
        raise ValueError(f"{type(tokenizer).__name__} has no chat template; use a chat/instruct model's tokenizer.")
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    conversations = [system + [{"role": "user", "content": message}] for message in user_messages]
    encoded = tokenizer.apply_chat_template(
        conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    return encoded.to(device) if device is not None else encoded


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | list[dict]],
    instructions: Sequence[str | None],
    system_prompt: str | None = None,
    device=None,
) -> BatchEncoding:
    """
    Chat-template dataset prompts the way training and evaluation both see them. A question (a string) becomes a
    user turn; a conversation (TRL's conversational format) is kept. Each row's instruction is appended to its last
    user turn, and the system turn is put first unless the conversation has one.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): a tokenizer with a chat template.
        prompts (`Sequence`): questions or conversations, one per row.
        instructions (`Sequence[str | None]`): the instruction of each row (e.g. the direct or the CoT one).
        system_prompt (`str`, *optional*): a system turn.
        device (*optional*): where to put the tensors.
    """
    conversations = []
    for prompt, instruction in zip(prompts, instructions, strict=True):
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt = [dict(message) for message in prompt]
        if instruction:
            last_user = max(i for i, message in enumerate(prompt) if message["role"] == "user")
            prompt[last_user]["content"] = f"{prompt[last_user]['content']}\n{instruction}"
        if system_prompt and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": system_prompt})
        conversations.append(prompt)
    encoded = tokenizer.apply_chat_template(
        conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    return encoded.to(device) if device is not None else encoded
