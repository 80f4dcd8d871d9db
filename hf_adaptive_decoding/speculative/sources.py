"""Candidate sources for speculative decoding: how a call selects one, and a draft model that needs no second
checkpoint."""

from __future__ import annotations

import copy
from typing import Any, Literal

from torch import nn
from transformers import PreTrainedModel

Source = Literal["assistant_model", "early_exit", "prompt_lookup"]


def check_source(source: Source, draft_model: PreTrainedModel | None, early_exit_layer: int | None) -> None:
    """Raise a `ValueError` unless `source` is a candidate source and what it drafts with is given."""
    if source not in ("assistant_model", "early_exit", "prompt_lookup"):
        raise ValueError(f"source must be 'assistant_model', 'early_exit' or 'prompt_lookup', got {source!r}.")
    if source == "assistant_model" and draft_model is None:
        raise ValueError("source='assistant_model' needs draft_model.")
    if source == "early_exit" and early_exit_layer is None:
        raise ValueError("source='early_exit' needs early_exit_layer.")


def source_kwargs(
    source: Source,
    max_draft_tokens: int,
    draft_model: PreTrainedModel | None = None,
    early_exit_layer: int | None = None,
) -> dict[str, Any]:
    """The `generate()` arguments that select `source` as the candidate source."""
    check_source(source, draft_model, early_exit_layer)
    if source == "assistant_model":
        return {"assistant_model": draft_model}
    if source == "early_exit":
        return {"assistant_early_exit": early_exit_layer}
    return {"prompt_lookup_num_tokens": max_draft_tokens}


def layer_dropped_draft(model: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """
    A separate draft model made of the target's embeddings, first `num_layers` decoder layers, final norm and head:
    what `assistant_early_exit=num_layers` drafts with, as its own model with its own cache. It is the "separate draft
    model" for a target that has no smaller sibling (such as the embedded default), at the memory cost of a copy.

    Args:
        model ([`~transformers.PreTrainedModel`]): the target, a decoder whose stack keeps its blocks in `.layers`.
        num_layers (`int`): how many of its layers to keep, in [1, number of layers).
    """
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} keeps no `layers` list in its decoder: cannot drop layers from it.")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < len(layers):
        raise ValueError(f"num_layers must be an int in [1, {len(layers)}), got {num_layers!r}.")
    kept, decoder.layers = decoder.layers, nn.ModuleList()  # copy everything but the layers
    try:
        draft = copy.deepcopy(model)
    finally:
        decoder.layers = kept
    draft.get_decoder().layers = copy.deepcopy(nn.ModuleList(kept[:num_layers]))
    draft.config.num_hidden_layers = num_layers
    draft.config.get_text_config(decoder=True).num_hidden_layers = num_layers
    if getattr(draft.config, "layer_types", None) is not None:
        draft.config.layer_types = draft.config.layer_types[:num_layers]
    return draft.eval()
