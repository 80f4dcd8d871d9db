"""Read the features a decoding adapter needs off the forward pass that `generate` already runs."""

from __future__ import annotations

from typing import Literal

import torch
from transformers import PreTrainedModel


class HiddenStateCapture:
    """
    A forward hook on the language model's decoder stack that keeps its final (normed) hidden states.

    `last` is the last position's hidden state `(batch, hidden)` of the most recent forward (the current decoding
    step). With `prompt_pooling="mean"`, `prompt_mean` is the mean over the prompt's non-padding positions,
    accumulated over the forwards before the first decoding step (so a chunked prefill is covered too).
    Use as a context manager: the hook is removed on exit, whatever happens inside.
    """

    def __init__(self, model: PreTrainedModel, prompt_pooling: Literal["last", "mean"] = "last"):
        self.module = model.get_decoder()
        if self.module is model:
            raise ValueError(
                f"{type(model).__name__} exposes no decoder stack (`get_decoder()` returned the model itself), so its "
                "final hidden states cannot be read during generation."
            )
        self.prompt_pooling = prompt_pooling
        self.last: torch.Tensor | None = None
        self.prompt_done = False
        self._prompt_sum: torch.Tensor | None = None
        self._prompt_count: torch.Tensor | None = None
        self._handle = None

    def __enter__(self) -> HiddenStateCapture:
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module, args, kwargs, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        self.last = hidden[:, -1]
        if self.prompt_pooling == "mean" and not self.prompt_done:
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() != 2:
                raise ValueError(
                    f"prompt_pooling='mean' needs a 2D attention mask, but the decoder received shape "
                    f"{tuple(mask.shape)}; use prompt_pooling='last' with this model."
                )
            if mask is None:
                mask = torch.ones(hidden.shape[:2], device=hidden.device)
            mask = mask[:, -hidden.shape[1] :].to(hidden.dtype)[..., None]
            total = (hidden * mask).sum(dim=1)
            count = mask.sum(dim=1)
            self._prompt_sum = total if self._prompt_sum is None else self._prompt_sum + total
            self._prompt_count = count if self._prompt_count is None else self._prompt_count + count

    def prompt_embedding(self) -> torch.Tensor:
        """The prompt's pooled final hidden state; call once, at the first decoding step."""
        if self.last is None:
            raise RuntimeError("No forward pass was observed: the hook is not on the model's decoder stack.")
        self.prompt_done = True
        if self.prompt_pooling == "last":
            return self.last
        return self._prompt_sum / self._prompt_count.clamp(min=1)


def next_token_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of `softmax(scores)` per row, `(batch,)`, in float32; `-inf` entries (masked tokens) count 0."""
    scores = scores.float()
    log_probs = scores - scores.logsumexp(dim=-1, keepdim=True)
    return -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(dim=-1)


def next_token_max_prob(scores: torch.Tensor) -> torch.Tensor:
    """Largest probability of `softmax(scores)` per row, `(batch,)`, in float32."""
    scores = scores.float()
    return (scores.amax(dim=-1) - scores.logsumexp(dim=-1)).exp()


def token_context(
    context_features: Literal["hidden_state", "entropy", "hidden_state+stats"],
    hidden: torch.Tensor,
    scores: torch.Tensor,
    entropy: torch.Tensor | None = None,
    max_prob: torch.Tensor | None = None,
) -> torch.Tensor:
    """What a token-level policy sees of the current step: the final hidden state `(batch, hidden)`, the next-token
    entropy as `(batch, 1)`, or the hidden state followed by the entropy and the max probability `(batch, hidden + 2)`
    (`entropy` and `max_prob`, when the caller already has them). All come from the forward pass generation already
    ran."""
    if context_features == "hidden_state":
        return hidden
    entropy = next_token_entropy(scores) if entropy is None else entropy
    if context_features == "entropy":
        return entropy[:, None]
    max_prob = next_token_max_prob(scores) if max_prob is None else max_prob
    # In float32: bf16 would round a max probability of 0.999 to 1.
    statistics = torch.stack([entropy.float(), max_prob.float()], dim=-1)
    return torch.cat([hidden.float(), statistics], dim=-1)
