"""Exact replay of greedy speculative decoding, so a draft adapter can be trained without timing a noisy machine.

With greedy decoding the target's output does not depend on how drafts are sized, and a drafted token is accepted
exactly when it equals the target's token at that position. So one greedy generation of the target and one
teacher-forced pass of the draft (or, for prompt lookup, the lookup at every position) tell the outcome of every
possible draft: a [`DraftTrace`]. [`simulate_drafting`] then replays any policy on many traces at once, pricing each
cycle with a [`CycleCostModel`] fitted to this machine by [`calibrate_cost_model`](see `draft_calibration`).

One approximation: after the first rejected token of a cycle, the live draft model continues from its own tokens,
while the replay shows the policy the teacher-forced draft statistics of those positions. Those tokens are rejected
either way; only the policy's view of them (and so when it stops) can differ.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

from ..generation.features import next_token_entropy
from .generate import ACCEPTANCE_EMA_DECAY, REMAINING_TOKENS_SCALE
from .modeling import DRAFT_FEATURES, DraftAdapterModel

Source = Literal["assistant_model", "early_exit", "prompt_lookup"]


@dataclass
class DraftTrace:
    """
    One greedy generation of the target and what a candidate source proposes along it.

    Args:
        tokens (`torch.LongTensor` of shape `(T,)`): the generated tokens.
        hidden (`torch.FloatTensor` of shape `(T, hidden_size)`): the target's final hidden state that produced each.
        match_run (`torch.LongTensor` of shape `(T,)`): from each position, how many proposed tokens in a row equal
            the target's (a draft started there has this many accepted at most).
        draft_stats (`torch.FloatTensor` of shape `(T, 3)`): the draft's probability of its greedy token, entropy
            over log(vocabulary) and top-1 minus top-2 margin at each position (zeros for prompt lookup).
        proposal_length (`torch.LongTensor` of shape `(T,)`): prompt lookup only, how many tokens the lookup
            proposes from each position (up to `max_draft_tokens`); -1 for a draft model, which proposes on demand.
        max_new_tokens (`int`): the budget of the call, which caps drafts near the end as transformers does.
        source (`str`): `"assistant_model"`, `"early_exit"` or `"prompt_lookup"`.
    """

    tokens: torch.LongTensor
    hidden: torch.FloatTensor
    match_run: torch.LongTensor
    draft_stats: torch.FloatTensor
    proposal_length: torch.LongTensor
    max_new_tokens: int
    source: str


def _match_runs(proposed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """run[j] = number of consecutive positions from j where the proposal equals the target's token."""
    equal = (proposed == tokens).long().flip(0)
    # Cumulative count of ones that resets at each zero, computed from the end.
    runs = torch.zeros_like(equal)
    count = 0
    for index, value in enumerate(equal.tolist()):  # T is at most a few hundred: once per trace, not per step
        count = count + 1 if value else 0
        runs[index] = count
    return runs.flip(0)


def _draft_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and (prob, entropy / log V, margin) of the draft's logits `(T, V)`."""
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    top2 = probs.topk(2, dim=-1)
    entropy = next_token_entropy(logits) / math.log(logits.shape[-1])
    return top2.indices[:, 0], torch.stack([top2.values[:, 0], entropy, top2.values[:, 0] - top2.values[:, 1]], -1)


@torch.no_grad()
def collect_trace(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    source: Source,
    max_new_tokens: int,
    max_draft_tokens: int,
    draft_model: PreTrainedModel | None = None,
    early_exit_layer: int | None = None,
    max_matching_ngram_size: int = 2,
) -> DraftTrace:
    """
    Generate greedily with the target from one prompt `(1, prompt_length)` and record what `source` proposes along
    the way: one generation plus one teacher-forced forward (of the draft model, or of the target, whose layer
    `early_exit_layer` gives the early-exit draft), or the prompt lookup at each position.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"collect_trace takes one prompt of shape (1, length), got {tuple(input_ids.shape)}.")
    prompt_length = input_ids.shape[1]
    sequence = model.generate(input_ids=input_ids, do_sample=False, max_new_tokens=max_new_tokens)
    tokens = sequence[0, prompt_length:]
    if len(tokens) == 0:
        raise ValueError("The target generated no token for this prompt: there is nothing to draft.")
    outputs = model(input_ids=sequence[:, :-1], output_hidden_states=True)
    positions = slice(prompt_length - 1, None)  # the states that predict each generated token
    hidden = outputs.hidden_states[-1][0, positions]
    proposal_length = torch.full_like(tokens, -1)
    if source == "prompt_lookup":
        lookup = PromptLookupCandidateGenerator(
            eos_token_id=torch.tensor(_eos_ids(model), device=sequence.device),
            num_output_tokens=max_draft_tokens,
            max_matching_ngram_size=max_matching_ngram_size,
            max_length=prompt_length + max_new_tokens,
        )
        runs = torch.zeros_like(tokens)
        for position in range(len(tokens)):
            prefix = sequence[:, : prompt_length + position]
            candidate, _ = lookup.get_candidates(prefix)
            proposal = candidate[0, prefix.shape[1] :]
            proposal_length[position] = len(proposal)
            target = tokens[position : position + len(proposal)]
            agree = (proposal[: len(target)] == target).long()
            runs[position] = int(agree.cumprod(0).sum()) if len(agree) else 0
        stats = torch.zeros(len(tokens), 3)
        return DraftTrace(tokens, hidden.float(), runs, stats, proposal_length, max_new_tokens, source)
    if source == "early_exit":
        if early_exit_layer is None:
            raise ValueError("source='early_exit' needs early_exit_layer.")
        decoder = model.get_decoder()
        early = decoder.norm(outputs.hidden_states[early_exit_layer])
        draft_logits = model.get_output_embeddings()(early)[0, positions]
    elif source == "assistant_model":
        if draft_model is None:
            raise ValueError("source='assistant_model' needs draft_model.")
        draft_logits = draft_model(input_ids=sequence[:, :-1]).logits[0, positions]
    else:
        raise ValueError(f"source must be 'assistant_model', 'early_exit' or 'prompt_lookup', got {source!r}.")
    greedy, stats = _draft_stats(draft_logits)
    runs = _match_runs(greedy, tokens)
    return DraftTrace(tokens, hidden.float(), runs, stats, proposal_length, max_new_tokens, source)


def _eos_ids(model: PreTrainedModel) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@dataclass
class CycleCostModel:
    """
    Seconds per draft-and-verify cycle that drafted `k` tokens, and per plain decoding step; fitted on this machine by
    `draft_calibration.calibrate_cost_model`.

    A cycle's cost is not a line in `k` on a CPU: a cycle that drafts nothing (prompt lookup found no match) costs
    about a plain step, while one that drafts even a single token pays the candidate source and a wider verify forward.
    So `seconds_by_length[k]` holds the measured cost for each `k` up to the calibrated cap, and the line
    `intercept + per_token * k`, fitted on the cycles that drafted, prices anything longer.
    """

    source: str
    intercept: float
    per_token: float
    plain_step: float
    measurements: list = field(default_factory=list)
    seconds_by_length: list[float] = field(default_factory=list)

    def cycle_seconds(self, drafted: torch.Tensor) -> torch.Tensor:
        line = self.intercept + self.per_token * drafted.float()
        if not self.seconds_by_length:
            return line
        table = torch.tensor(self.seconds_by_length, dtype=line.dtype, device=drafted.device)
        return torch.where(drafted < len(table), table[drafted.clamp(max=len(table) - 1)], line)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w") as handle:
            json.dump(asdict(self), handle, indent=2)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> CycleCostModel:
        with open(path) as handle:
            return cls(**json.load(handle))


@dataclass
class SimulationResult:
    """
    What [`simulate_drafting`] replayed, one episode per (trace, rollout).

    Args:
        speedup (`torch.FloatTensor` of shape `(episodes,)`): plain decoding time over the replayed time.
        trace_index (`torch.LongTensor` of shape `(episodes,)`): the trace each episode replays.
        features, hidden, stopped, episode (`torch.Tensor`): one row per decision the policy took (not the stops the
            cap forced): its `DRAFT_FEATURES`, hidden state, whether it stopped, and its episode.
        drafted, accepted (`torch.FloatTensor` of shape `(episodes,)`): tokens drafted and accepted in total.
        cycles (`torch.LongTensor` of shape `(episodes,)`): number of cycles.
        cycle (`torch.LongTensor`): one row per decision: the number of the cycle it was taken in, within its episode.
        cycle_tokens, cycle_seconds (`torch.FloatTensor` of shape `(episodes, max cycles)`): tokens each cycle added
            (accepted plus the target's own) and its priced seconds; zero past an episode's last cycle.
        plain_step (`float`): the cost model's seconds per plain decoding step.
    """

    speedup: torch.Tensor
    trace_index: torch.Tensor
    features: torch.Tensor
    hidden: torch.Tensor
    stopped: torch.Tensor
    episode: torch.Tensor
    drafted: torch.Tensor
    accepted: torch.Tensor
    cycles: torch.Tensor
    cycle: torch.Tensor
    cycle_tokens: torch.Tensor
    cycle_seconds: torch.Tensor
    plain_step: float


def _stack(traces: list[DraftTrace], name: str, fill: float, dtype) -> torch.Tensor:
    values = [getattr(trace, name) for trace in traces]
    width = max(len(v) for v in values)
    shape = (len(values), width, *values[0].shape[1:])
    out = torch.full(shape, fill, dtype=dtype)
    for row, value in enumerate(values):
        out[row, : len(value)] = value
    return out


@torch.no_grad()
def simulate_drafting(
    adapter: DraftAdapterModel,
    traces: list[DraftTrace],
    cost_model: CycleCostModel,
    rollouts: int = 1,
    deterministic: bool = False,
) -> SimulationResult:
    """
    Replay the adapter's draft decisions on every trace, `rollouts` times each (sampled decisions, or its most
    likely ones), all episodes in step. Each step every unfinished episode drafts one more token and the policy
    decides whether to stop there, exactly as `LearnedDraftGenerator` does live.
    """
    if not traces:
        raise ValueError("simulate_drafting needs at least one trace.")
    sources = {trace.source for trace in traces}
    if len(sources) != 1 or sources != {cost_model.source}:
        raise ValueError(f"Traces from {sorted(sources)} cannot be priced by a cost model of {cost_model.source!r}.")
    max_draft = adapter.max_draft_tokens
    trace_index = torch.arange(len(traces)).repeat_interleave(rollouts)
    lengths = torch.tensor([len(t.tokens) for t in traces])[trace_index]
    budget = torch.tensor([t.max_new_tokens for t in traces])[trace_index]
    runs = _stack(traces, "match_run", 0, torch.long)[trace_index]
    proposals = _stack(traces, "proposal_length", 0, torch.long)[trace_index]
    stats = _stack(traces, "draft_stats", 0.0, torch.float)[trace_index]
    hidden_all = _stack(traces, "hidden", 0.0, torch.float)[trace_index]
    episodes = len(trace_index)
    rows = torch.arange(episodes)

    position = torch.zeros(episodes, dtype=torch.long)  # tokens committed
    drafted = torch.zeros(episodes, dtype=torch.long)  # tokens drafted in the current cycle
    seconds = torch.zeros(episodes)
    acceptance_ema, last_accepted = torch.full((episodes,), 0.5), torch.zeros(episodes)
    cumulative = torch.ones(episodes)
    total_drafted, total_accepted = torch.zeros(episodes), torch.zeros(episodes)
    cycles = torch.zeros(episodes, dtype=torch.long)
    has_draft_probs = float(cost_model.source != "prompt_lookup")
    record: dict[str, list[torch.Tensor]] = {"features": [], "hidden": [], "stopped": [], "episode": [], "cycle": []}
    cycle_tokens = torch.zeros(episodes, int(lengths.max()))  # each cycle's outcome, by (episode, cycle number)
    cycle_seconds = torch.zeros(episodes, int(lengths.max()))

    while True:
        active = position < lengths
        if not active.any():
            break
        # What this cycle may draft: a draft model, up to the cap and what max_length leaves (as transformers
        # sizes it); prompt lookup, what the lookup found (within max_length), up to the cap. A lookup capped at
        # k proposes the first k tokens of the same match, so traces taken with a larger cap serve any smaller one.
        start = position.clamp(max=lengths - 1)
        if has_draft_probs:
            cap = torch.minimum(torch.full_like(position, max_draft), budget - position - 1).clamp(min=0)
        else:
            cap = proposals[rows, start].clamp(max=max_draft)
        # The policy decides before the first token (draft at all?) and after each drafted one (draft another?),
        # seeing the statistics of the token just drafted; none before the first.
        at = (position + drafted - 1).clamp(min=0, max=stats.shape[1] - 1)
        seen = (drafted > 0)[:, None].float()
        token_stats = stats[rows, at] * seen if has_draft_probs else torch.zeros(episodes, 3)
        hidden = torch.where(
            (position > 0)[:, None], hidden_all[rows, (position - 1).clamp(min=0)], torch.zeros_like(hidden_all[:, 0])
        )
        columns = {
            "draft_prob": token_stats[:, 0],
            "draft_entropy": token_stats[:, 1],
            "draft_margin": token_stats[:, 2],
            "has_draft_probs": seen[:, 0] * has_draft_probs,
            "cumulative_draft_prob": cumulative * token_stats[:, 0],
            "position": drafted.float() / max_draft,
            "acceptance_ema": acceptance_ema,
            "last_accepted": last_accepted,
            "remaining_tokens": torch.log1p((budget - position - drafted).clamp(min=0).float())
            / REMAINING_TOKENS_SCALE,
            "has_hidden_state": (position > 0).float(),
        }
        features = torch.stack([columns[name] for name in DRAFT_FEATURES], dim=-1)
        full = drafted >= cap
        decides = active & ~full & ((drafted > 0) | (position > 0))  # the first cycle always drafts (see live)
        stop, _ = adapter.decide_stop(features, hidden if adapter.config.use_hidden_state else None, deterministic)
        stop = stop.cpu()
        if decides.any():
            taken = (
                ("features", features),
                ("hidden", hidden),
                ("stopped", stop),
                ("episode", rows),
                ("cycle", cycles),
            )
            for key, value in taken:
                record[key].append(value[decides])
        cumulative = cumulative * torch.where(seen[:, 0] > 0, token_stats[:, 0], torch.ones_like(cumulative))
        ends = active & (full | (decides & stop))
        # Draft one more token where the cycle goes on; close the cycles that end here.
        drafted = torch.where(active & ~ends, drafted + 1, drafted)
        k = torch.where(ends, drafted, torch.zeros_like(drafted))
        accepted = torch.minimum(k, runs[rows, start])
        accepted = torch.minimum(accepted, (lengths - position - 1).clamp(min=0))  # the call ends at its last token
        cost = cost_model.cycle_seconds(k)
        seconds = seconds + torch.where(ends, cost, torch.zeros_like(seconds))
        closing = ends.nonzero().squeeze(-1)
        cycle_tokens[closing, cycles[closing]] = (accepted[closing] + 1).float()
        cycle_seconds[closing, cycles[closing]] = cost[closing]
        cycled = ends & (k > 0)
        acceptance_ema = torch.where(
            cycled,
            ACCEPTANCE_EMA_DECAY * acceptance_ema + (1 - ACCEPTANCE_EMA_DECAY) * accepted / k.clamp(min=1),
            acceptance_ema,
        )
        last_accepted = torch.where(ends, accepted.float() / max_draft, last_accepted)
        total_drafted += k
        total_accepted += torch.where(ends, accepted, torch.zeros_like(accepted))
        cycles += ends.long()
        position = torch.where(ends, position + accepted + 1, position)
        drafted = torch.where(ends, torch.zeros_like(drafted), drafted)
        cumulative = torch.where(ends, torch.ones_like(cumulative), cumulative)

    def cat(key: str, width: tuple[int, ...], dtype) -> torch.Tensor:
        return torch.cat(record[key]) if record[key] else torch.zeros((0, *width), dtype=dtype)

    plain_seconds = lengths.float() * cost_model.plain_step
    return SimulationResult(
        speedup=plain_seconds / seconds,
        trace_index=trace_index,
        features=cat("features", (len(DRAFT_FEATURES),), torch.float),
        hidden=cat("hidden", (hidden_all.shape[-1],), torch.float),
        stopped=cat("stopped", (), torch.bool),
        episode=cat("episode", (), torch.long),
        cycle=cat("cycle", (), torch.long),
        cycle_tokens=cycle_tokens[:, : int(cycles.max())],
        cycle_seconds=cycle_seconds[:, : int(cycles.max())],
        plain_step=cost_model.plain_step,
        drafted=total_drafted,
        accepted=total_accepted,
        cycles=cycles,
    )


def cycle_advantages(result: SimulationResult, rollouts: int) -> torch.Tensor:
    """
    Credit per decision from its own cycle: the cycle's tokens minus what they would cost at the current throughput,
    `tokens - speedup * seconds / plain_step` (in plain steps; `speedup` is the mean over the trace's rollouts),
    minus the mean of that over the trace's cycles. Since the output is fixed, a policy's total time is the sum of its
    cycles' times, and this differential reward (as in average-reward RL) makes a cycle good exactly when it adds
    tokens faster than the policy does on average: far less noisy than crediting every decision with the whole
    episode's speed-up. `(decisions,)`.
    """
    episodes = len(result.speedup)
    speedup = result.speedup.view(-1, rollouts).mean(dim=1).repeat_interleave(rollouts)
    ran = torch.arange(result.cycle_tokens.shape[1])[None] < result.cycles[:, None]
    reward = result.cycle_tokens - speedup[:, None] * result.cycle_seconds / result.plain_step
    per_trace = (reward * ran).view(-1, rollouts, reward.shape[1]).sum(dim=(1, 2))
    baseline = (per_trace / ran.view(-1, rollouts, ran.shape[1]).sum(dim=(1, 2))).repeat_interleave(rollouts)
    advantage = reward - baseline[:, None]
    if episodes == 0 or len(result.episode) == 0:
        return torch.zeros(0)
    return advantage[result.episode, result.cycle]


def decision_log_probs(stop_logits: torch.Tensor, result: SimulationResult) -> torch.Tensor:
    """`log pi(decision)` of each recorded decision, given the policy's `stop_logits` on `result.features` (computed
    with gradients by the caller): `(decisions,)`."""
    stopped = result.stopped.to(stop_logits.device)
    logits = stop_logits.float()
    return torch.where(stopped, torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits))


def episode_log_probs(stop_logits: torch.Tensor, result: SimulationResult) -> torch.Tensor:
    """Sum over each episode's decisions of `log pi(decision)`: `(episodes,)`."""
    log_probs = decision_log_probs(stop_logits, result)
    totals = torch.zeros(len(result.speedup), device=log_probs.device)
    return totals.index_add(0, result.episode.to(log_probs.device), log_probs)
