"""[`AdaptiveLLM`]: vLLM's offline `LLM` with a decoding adapter choosing how every request is decoded."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Sequence
from typing import Any

import torch

from ..generation.noise import derive_keys
from . import models
from .engine import adapter_engine_settings
from .processor import (
    ENGINE_ATTRIBUTE,
    NOISE_KEY,
    PARALLEL_BUDGET_KEY,
    PROCESSORS,
    REQUEST_KEY,
    AdapterLogitsProcessor,
    adapter_conflicts,
)

_next_request = iter(range(1 << 62))


class AdaptiveLLM:
    """
    vLLM's `LLM` with a decoding adapter: the adapter picks every request's decoding action (at sequence level once
    per prompt from the prompt's final hidden state and the parallel budget `B = n`; at token level at every step
    from that step's final hidden state and the remaining budget `b_t = max_tokens - generated`) and applies it to
    the logits inside vLLM's sampler, without an extra forward pass.

    ```python
    >>> from vllm import SamplingParams
    >>> from hf_adaptive_decoding.vllm import AdaptiveLLM
    >>> llm = AdaptiveLLM(decoding_adapter="smollm2-135m-arithmetic-token-budget")  # the embedded default model
    >>> [output] = llm.chat([{"role": "user", "content": "What is 17 + 25?"}], SamplingParams(max_tokens=48))
    >>> output.outputs[0].text, output.outputs[0].decoding_actions[:3]
    ```

    Args:
        model (`str`, *optional*):
            A Hub id or folder vLLM can load; `None` is the embedded default model (SmolLM2-135M-Instruct).
        decoding_adapter (`str`):
            The short name of a shipped adapter, a folder or a Hub id. It must have been built for `model`
            (refused otherwise, before the engine starts).
        deterministic (`bool`, defaults to `False`):
            Take the adapter's most likely action instead of sampling one.
        **engine_kwargs:
            Passed to `vllm.LLM` (e.g. `dtype`, `max_model_len`, `enforce_eager`, `seed`). `hf_overrides` and
            `logits_processors` are extended, not replaced; `speculative_config` is refused.

    The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` is set), where the actions it took are read
    back. Sampling settings the adapter owns (temperature, top-k, top-p, min-p) and penalties, which vLLM would apply
    after it, are refused per request; `max_tokens`, `n`, `stop`, `seed`, `logprobs` and the rest pass through.
    `logprobs` are those of the model's own distribution unless the engine's `logprobs_mode` says otherwise.
    """

    def __init__(
        self,
        model: str | None = None,
        decoding_adapter: str | os.PathLike | None = None,
        deterministic: bool = False,
        **engine_kwargs: Any,
    ):
        from vllm import LLM

        if engine_kwargs.get("speculative_config") is not None:
            raise ValueError(
                "AdaptiveLLM does not run speculative decoding: the adapter decides on the rows vLLM samples, and a "
                f"speculative step samples several tokens per row (got speculative_config="
                f"{engine_kwargs['speculative_config']!r})."
            )
        overrides = engine_kwargs.pop("hf_overrides", None)
        settings = adapter_engine_settings(model, decoding_adapter, deterministic, overrides)
        self.adapter = settings.adapter
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        models.register()  # the entry point does it in every vLLM process; this covers an uninstalled checkout
        self.engine_id = uuid.uuid4().hex
        overrides = {**settings.hf_overrides, ENGINE_ATTRIBUTE: self.engine_id}
        processors = [*(engine_kwargs.pop("logits_processors", None) or []), AdapterLogitsProcessor]
        # The model's generation_config.json would give every request its own temperature / top-p defaults.
        engine_kwargs.setdefault("generation_config", "vllm")
        self.llm = LLM(model=settings.model, hf_overrides=overrides, logits_processors=processors, **engine_kwargs)
        self.processor = PROCESSORS[self.engine_id]
        self.actions = [action.name for action in self.adapter.decoding_config.actions]

    @property
    def level(self) -> str:
        return self.adapter.level

    def get_tokenizer(self):
        return self.llm.get_tokenizer()

    def generate(self, prompts, sampling_params=None, **kwargs: Any) -> list:
        """
        vLLM's `LLM.generate` under the adapter. Returns one `RequestOutput` per prompt, whose `outputs` hold its `n`
        completions; each completion also carries `decoding_actions`: the names of the actions that produced it, one
        per generated token at token level, one (shared by the prompt's `n` samples) at sequence level.

        Args:
            prompts: a prompt (text, or a vLLM prompt dict) or a list of them.
            sampling_params (`vllm.SamplingParams` or a list of them, one per prompt, *optional*): defaults to
                vLLM's `SamplingParams()`.
            **kwargs: passed to `LLM.generate` (e.g. `use_tqdm`).
        """
        from vllm import SamplingParams

        single = isinstance(prompts, (str, dict))
        prompts = [prompts] if single else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = list(sampling_params) if isinstance(sampling_params, Sequence) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"Got {len(params)} SamplingParams for {len(prompts)} prompts: give one, or one each.")
        for index, param in enumerate(params):
            conflicts = adapter_conflicts(param)
            if conflicts:
                raise ValueError(
                    f"SamplingParams of prompt {index} set {', '.join(conflicts)}: the decoding adapter chooses "
                    "temperature, top-k, top-p and min-p itself, and vLLM applies penalties after it. Leave them at "
                    "their defaults; max_tokens, n, stop, seed and logprobs are yours."
                )
        # Each of a prompt's n samples is its own request (as vLLM's parallel sampling makes them), so that each
        # can be told apart; the prompt's prefill is computed once and reused through prefix caching.
        expanded_prompts, expanded_params, numbers, owners = [], [], [], []
        for index, (prompt, param) in enumerate(zip(prompts, params, strict=True)):
            prompt_key = random.getrandbits(62) if param.seed is None else param.seed
            for sample in range(param.n):
                child = param.clone()
                child.n = 1
                if param.seed is not None:
                    child.seed = param.seed + sample
                number = next(_next_request)
                key = prompt_key if self.level == "sequence" else int(derive_keys(torch.tensor([prompt_key]), sample))
                child.extra_args = {
                    **(param.extra_args or {}),
                    REQUEST_KEY: number,
                    NOISE_KEY: key,
                    PARALLEL_BUDGET_KEY: param.n,
                }
                expanded_prompts.append(prompt)
                expanded_params.append(child)
                numbers.append(number)
                owners.append((index, sample))
        try:
            outputs = self.llm.generate(expanded_prompts, expanded_params, **kwargs)
        finally:
            actions = self.processor.take_actions(numbers)
        results: list = [None] * len(prompts)
        for output, number, (index, sample) in zip(outputs, numbers, owners, strict=True):
            completion = output.outputs[0]
            completion.index = sample
            taken = [self.actions[action] for action in actions[number]]
            completion.decoding_actions = taken[: len(completion.token_ids)] if self.level == "token" else taken[:1]
            if results[index] is None:
                results[index] = output
            else:
                results[index].outputs.append(completion)
        return results

    def chat(self, messages, sampling_params=None, add_generation_prompt: bool = True, **kwargs: Any) -> list:
        """[`generate`] on one conversation (a list of `{"role", "content"}` messages) or a list of them, rendered
        with the model's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.get_tokenizer()
        prompts = [
            tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
            for conversation in conversations
        ]
        return self.generate(prompts, sampling_params, **kwargs)
