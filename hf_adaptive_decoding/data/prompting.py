"""Turn prompts into a left-padded batch: conversations through the model's chat template, plain strings as text."""

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
    Encode dataset prompts the way training and evaluation both see them, following TRL's dataset formats:

    - **Conversational** (a list of messages `{"role": ..., "content": ...}`, for chat/instruct models): the row's
      instruction is appended to the content of the last user message (after a newline), a `system_prompt` is put
      first as a system message unless the conversation starts with one, and the conversation is rendered by the
      tokenizer's chat template with the generation prompt appended (no special tokens added beyond the
      template's). Needs a tokenizer with a chat template.
    - **Standard** (a string, e.g. for a base model): used as text, no chat template. The text is
      `f"{system_prompt}\n{prompt}\n{instruction}"`, the system prompt and the instruction each only when
      given, tokenized as the tokenizer tokenizes any text (with its special tokens, e.g. a BOS token).

    The built-in datasets ([`arithmetic_dataset`], [`load_gsm8k_dataset`], [`load_math_dataset`],
    [`load_humaneval_dataset`], [`load_code_contests_dataset`]) are conversational by default; a dataset of strings
    is read as a base model reads text. Both formats may be mixed in one batch; rows are padded on the tokenizer's
    side (left, for generation, with [`load_default_model`] and in [`AdapterTrainer`]).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): the model's tokenizer; conversational prompts need
            its chat template.
        prompts (`Sequence[str | list[dict]]`): one prompt per row, standard or conversational.
        instructions (`Sequence[str | None]`): the instruction of each row (e.g. the direct or the CoT one).
        system_prompt (`str`, *optional*): a system message (conversational) or a first line (standard).
        device (*optional*): where to put the tensors.

    Returns:
        [`~transformers.BatchEncoding`]: `input_ids` and `attention_mask` of shape `(rows, longest)`.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of prompts, got {prompts!r}.")
    texts: dict[int, str] = {}
    conversations: dict[int, list[dict]] = {}
    for row, (prompt, instruction) in enumerate(zip(prompts, instructions, strict=True)):
        if isinstance(prompt, str):
            texts[row] = "\n".join(part for part in (system_prompt, prompt, instruction) if part)
            continue
        if not isinstance(prompt, (list, tuple)) or not prompt or not all(isinstance(m, dict) for m in prompt):
            raise ValueError(
                f"Prompt {row} is neither a string (standard format) nor a non-empty list of messages "
                f"(conversational format): {prompt!r:.200}"
            )
        conversation = [dict(message) for message in prompt]
        if instruction:
            users = [i for i, message in enumerate(conversation) if message.get("role") == "user"]
            if not users:
                raise ValueError(f"Prompt {row} has no user message to append the instruction to: {prompt!r:.200}")
            conversation[users[-1]]["content"] = f"{conversation[users[-1]]['content']}\n{instruction}"
        if system_prompt and conversation[0].get("role") != "system":
            conversation.insert(0, {"role": "system", "content": system_prompt})
        conversations[row] = conversation
    if conversations and tokenizer.chat_template is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat template, and {len(conversations)} prompt(s) are conversational "
            "(lists of messages). Give a base model its prompts as strings (TRL's standard format), e.g. "
            "`dataset.map(lambda row: {'prompt': row['prompt'][-1]['content']})`, or use a chat model."
        )
    ids: dict[int, list[int]] = {}
    if conversations:
        rendered = tokenizer.apply_chat_template(
            list(conversations.values()), add_generation_prompt=True, return_dict=True
        )["input_ids"]
        ids.update(zip(conversations, rendered, strict=True))
    if texts:
        ids.update(zip(texts, tokenizer(list(texts.values()))["input_ids"], strict=True))
    encoded = tokenizer.pad({"input_ids": [ids[row] for row in range(len(prompts))]}, return_tensors="pt")
    return encoded.to(device) if device is not None else encoded
