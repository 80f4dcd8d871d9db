"""Sequence-level rollouts drawn by vLLM: [`vllm_generate_rollouts`], a drop-in for
[`~generation.rollout.generate_rollouts`] that training uses with `AdapterTrainerConfig(use_vllm=True)`.

A sequence-level action is fixed for a whole completion, so vLLM can draw it with the action's own sampling
parameters; the adapter's features (the prompt's pooled final hidden state) come from one prefill of the frozen
transformers model, exactly as the transformers path computes them.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..adapters.configuration import DecodingAction
from ..adapters.modeling import DecodingAdapterModel
from ..generation.decision import DecisionStep, token_ids
from ..generation.features import HiddenStateCapture
from ..generation.noise import derive_keys
from ..generation.policies import DecodingPolicy
from ..generation.rollout import RolloutBatch, check_rollout_inputs, rollout_rows


def action_sampling_params(action: DecodingAction, max_tokens: int, seed: int, stop_token_ids: list[int]):
    """vLLM `SamplingParams` that decode like `action` for at most `max_tokens` tokens.

    vLLM applies min-p before top-k / top-p, transformers after them: for an action with min-p and top-p together the
    kept set can differ where the two cuts cross.
    """
    from vllm import SamplingParams

    common = {"max_tokens": max_tokens, "seed": seed, "stop_token_ids": stop_token_ids}
    if not action.do_sample:
        return SamplingParams(temperature=0.0, **common)
    return SamplingParams(
        temperature=action.temperature,
        top_k=action.top_k or 0,
        top_p=action.top_p or 1.0,
        min_p=action.min_p or 0.0,
        **common,
    )


@torch.no_grad()
def vllm_generate_rollouts(
    llm,
    model: PreTrainedModel,
    adapter: DecodingAdapterModel | DecodingPolicy,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    num_samples: torch.LongTensor,
    token_budgets: torch.LongTensor,
    deterministic: bool = False,
    logits_processor=None,
    parallel_budgets: torch.LongTensor | None = None,
    fixed_actions: torch.LongTensor | None = None,
    noise_keys: torch.LongTensor | None = None,
    sample_indices: torch.LongTensor | None = None,
) -> RolloutBatch:
    """
    [`~generation.rollout.generate_rollouts`] for sequence-level policies, the samples drawn by the vLLM engine `llm`
    (a `vllm.LLM` of the same weights as `model`). Each row's random numbers come from its vLLM seed, a function of
    its input's noise key and its sample index, so rows with the same sample index share their seed across actions
    (common random numbers, as in the transformers path, though not the same numbers). Arguments and result are those
    of `generate_rollouts`; `logits_processor` is not supported (vLLM samples outside this process's logits).
    """
    if adapter.level != "sequence":
        raise ValueError(
            "vLLM rollouts draw whole completions under one action: they need a sequence-level policy, got a "
            f"{adapter.level}-level one. Token-level adapters run on vLLM through AdaptiveLLM."
        )
    if logits_processor is not None:
        raise ValueError("vLLM rollouts take no logits_processor: vLLM samples outside this process's logits.")
    check_rollout_inputs(adapter, input_ids, num_samples, token_budgets, parallel_budgets, fixed_actions)
    device = input_ids.device
    rows = rollout_rows(input_ids, num_samples, noise_keys, sample_indices)
    num_samples, input_index, noise_keys, sample_indices = rows
    with HiddenStateCapture(model, adapter.decoding_config.prompt_pooling) as capture:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1)
        prompt_features = capture.prompt_embedding().detach().clone()
    records = {"features": None, "budgets": None, "actions": None, "probs": None, "rows": None}
    if fixed_actions is None:
        parallel = num_samples if parallel_budgets is None else parallel_budgets.to(device)
        decision = DecisionStep(adapter, deterministic)
        actions, probs = decision.prompt_actions(prompt_features, parallel, derive_keys(noise_keys, -1))
        records = {
            "features": prompt_features,
            "budgets": parallel.float(),
            "actions": actions,
            "probs": probs,
            "rows": torch.arange(len(input_ids), device=device),
        }
        row_actions = actions[input_index]
    else:
        row_actions = fixed_actions.to(device)
    # Host-side request building, once per rollout (not per step): vLLM takes token lists.
    prompts = [
        {"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(input_ids, attention_mask, strict=True)
    ]
    seeds = derive_keys(noise_keys[input_index], sample_indices).tolist()
    stop = token_ids(model.generation_config.eos_token_id)
    space = adapter.decoding_config.actions
    budgets = token_budgets.to(device)[input_index].tolist()
    params = [
        action_sampling_params(space[action], budget, seed, stop)
        for action, budget, seed in zip(row_actions.tolist(), budgets, seeds, strict=True)
    ]
    outputs = llm.generate([prompts[i] for i in input_index.tolist()], params, use_tqdm=False)
    max_new_tokens = int(token_budgets.max())
    pad_id = token_ids(model.generation_config.pad_token_id) or stop or [0]
    completion_ids = torch.full((len(outputs), max_new_tokens), pad_id[0], dtype=torch.long)
    completion_mask = torch.zeros((len(outputs), max_new_tokens), dtype=torch.bool)
    for row, output in enumerate(outputs):
        generated = list(output.outputs[0].token_ids)[:max_new_tokens]
        completion_ids[row, : len(generated)] = torch.tensor(generated, dtype=torch.long)
        completion_mask[row, : len(generated)] = True
    return RolloutBatch(
        completion_ids=completion_ids.to(device),
        completion_mask=completion_mask.to(device),
        input_index=input_index,
        features=records["features"],
        budgets=records["budgets"],
        actions=records["actions"],
        action_probs=records["probs"],
        decision_rows=records["rows"],
        prompt_features=prompt_features,
    )
