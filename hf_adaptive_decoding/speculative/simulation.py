"""Exact replay of greedy speculative decoding, so a draft adapter can be trained without timing a noisy machine.

With greedy decoding the target's output does not depend on how drafts are sized, and a drafted token is accepted
exactly when it equals the target's token at that position. So one greedy generation of the target and one
teacher-forced pass of the draft (or, for prompt lookup, the lookup at every position) tell the outcome of every
possible draft: a [`DraftTrace`]. [`simulate_drafting`] then replays any policy on many traces at once, pricing each
cycle with a [`CycleCostModel`] fitted to this machine by [`calibrate_cost_model`] (see `calibration`).

One approximation: after the first rejected token of a cycle, the live draft model continues from its own tokens,
while the replay shows the policy the teacher-forced draft statistics of those positions. Those tokens are rejected
either way; only the policy's view of them (and so when it stops) can differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel

from .. import compat
from .features import DraftFeatureState, draft_token_stats
from .modeling import DRAFT_FEATURES, DraftAdapterModel
from .sources import Source, check_source


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
    check_source(source, draft_model, early_exit_layer)
    prompt_length = input_ids.shape[1]
    sequence = model.generate(input_ids=input_ids, do_sample=False, max_new_tokens=max_new_tokens)
    tokens = sequence[0, prompt_length:]
    if len(tokens) == 0:
        raise ValueError("The target generated no token for this prompt: there is nothing to draft.")
    outputs = model(input_ids=sequence[:, :-1], output_hidden_states=True)
    positions = slice(prompt_length - 1, None)  # the states that predict each generated token
    hidden = outputs.hidden_states[-1][0, positions].float()
    if source == "prompt_lookup":
        lookup = compat.prompt_lookup(
            _eos_ids(model), max_draft_tokens, max_matching_ngram_size, prompt_length + max_new_tokens, sequence.device
        )
        runs, proposal_length = _lookup_runs(lookup, sequence, prompt_length)
        return DraftTrace(tokens, hidden, runs, torch.zeros(len(tokens), 3), proposal_length, max_new_tokens, source)
    if source == "early_exit":
        early = model.get_decoder().norm(outputs.hidden_states[early_exit_layer])
        draft_logits = model.get_output_embeddings()(early)[0, positions]
    else:
        draft_logits = draft_model(input_ids=sequence[:, :-1]).logits[0, positions]
    greedy, stats = draft_token_stats(draft_logits)
    proposal_length = torch.full_like(tokens, -1)
    return DraftTrace(tokens, hidden, _match_runs(greedy, tokens), stats, proposal_length, max_new_tokens, source)


def _lookup_runs(
    lookup: Callable[[torch.LongTensor], torch.LongTensor], sequence: torch.LongTensor, prompt_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each generated position of `sequence` `(1, length)`: how many of the tokens `lookup` proposes there in a
    row are the target's, and how many it proposes."""
    tokens = sequence[0, prompt_length:]
    runs, proposal_length = torch.zeros_like(tokens), torch.zeros_like(tokens)
    for position in range(len(tokens)):
        proposal = lookup(sequence[:, : prompt_length + position])
        proposal_length[position] = len(proposal)
        target = tokens[position : position + len(proposal)]
        agree = (proposal[: len(target)] == target).long()
        runs[position] = int(agree.cumprod(0).sum()) if len(agree) else 0
    return runs, proposal_length


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


_RECORDED = ("features", "hidden", "stopped", "episode", "cycle")  # per decision the policy took


class _Replay:
    """
    Every episode of one [`simulate_drafting`] call, stepped together. Each step, every unfinished episode takes one
    decision (stop drafting, or draft one more token) with the features a [`DraftFeatureState`] builds, as live; a
    cycle ends where the policy stops or the cap does, and is priced and credited then.
    """

    def __init__(
        self,
        adapter: DraftAdapterModel,
        traces: list[DraftTrace],
        cost_model: CycleCostModel,
        rollouts: int,
        deterministic: bool,
    ):
        self.adapter, self.cost_model, self.deterministic = adapter, cost_model, deterministic
        self.max_draft = adapter.max_draft_tokens
        self.has_draft_probs = cost_model.source != "prompt_lookup"
        self.trace_index = torch.arange(len(traces)).repeat_interleave(rollouts)
        self.lengths = torch.tensor([len(t.tokens) for t in traces])[self.trace_index]
        self.budget = torch.tensor([t.max_new_tokens for t in traces])[self.trace_index]
        self.runs = _stack(traces, "match_run", 0, torch.long)[self.trace_index]
        self.proposals = _stack(traces, "proposal_length", 0, torch.long)[self.trace_index]
        self.stats = _stack(traces, "draft_stats", 0.0, torch.float)[self.trace_index]
        self.hidden = _stack(traces, "hidden", 0.0, torch.float)[self.trace_index]
        episodes = len(self.trace_index)
        self.rows = torch.arange(episodes)
        self.state = DraftFeatureState(episodes, self.max_draft)
        self.position = torch.zeros(episodes, dtype=torch.long)  # tokens committed
        self.drafted = torch.zeros(episodes, dtype=torch.long)  # tokens drafted in the current cycle
        self.seconds = torch.zeros(episodes)
        self.total_drafted, self.total_accepted = torch.zeros(episodes), torch.zeros(episodes)
        self.cycles = torch.zeros(episodes, dtype=torch.long)
        self.cycle_tokens = torch.zeros(episodes, int(self.lengths.max()))  # by (episode, cycle number)
        self.cycle_seconds = torch.zeros(episodes, int(self.lengths.max()))
        self.record: dict[str, list[torch.Tensor]] = {key: [] for key in _RECORDED}

    def step(self) -> bool:
        """One decision (or one stop the cap forces) in every unfinished episode; `False` once all have finished."""
        active = self.position < self.lengths
        if not active.any():
            return False
        start = self.position.clamp(max=self.lengths - 1)
        features, hidden = self._decision_inputs()
        full = self.drafted >= self._draft_cap(start)
        decides = active & ~full & ((self.drafted > 0) | (self.position > 0))  # the first cycle always drafts (live)
        use_hidden = self.adapter.config.use_hidden_state
        stop, _ = self.adapter.decide_stop(features, hidden if use_hidden else None, self.deterministic)
        stop = stop.cpu()
        if decides.any():
            taken = (features, hidden, stop, self.rows, self.cycles)
            for key, value in zip(_RECORDED, taken, strict=True):
                self.record[key].append(value[decides])
        ends = active & (full | (decides & stop))
        # Draft one more token where the cycle goes on; close the cycles that end here.
        self.drafted = torch.where(active & ~ends, self.drafted + 1, self.drafted)
        self._close_cycles(ends, start)
        return True

    def _draft_cap(self, start: torch.Tensor) -> torch.Tensor:
        # What this cycle may draft: a draft model, up to the cap and what max_length leaves (as transformers sizes
        # it); prompt lookup, what the lookup found (within max_length), up to the cap. A lookup capped at k proposes
        # the first k tokens of the same match, so traces taken with a larger cap serve any smaller one.
        if self.has_draft_probs:
            cap = torch.full_like(self.position, self.max_draft)
            return torch.minimum(cap, self.budget - self.position - 1).clamp(min=0)
        return self.proposals[self.rows, start].clamp(max=self.max_draft)

    def _decision_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The features and hidden state of each episode's decision this step: before the first token (draft at
        all?) or after each drafted one (draft another?), seeing the statistics of the token just drafted."""
        at = (self.position + self.drafted - 1).clamp(min=0, max=self.stats.shape[1] - 1)
        stats = self.stats[self.rows, at]
        has_draft_probs = (self.drafted > 0) & self.has_draft_probs
        remaining = self.budget - self.position - self.drafted
        features = self.state.features(self.drafted, remaining, stats, has_draft_probs)
        self.state.add_token(stats, has_draft_probs)
        last = self.hidden[self.rows, (self.position - 1).clamp(min=0)]
        hidden = torch.where((self.position > 0)[:, None], last, torch.zeros_like(last))
        return features, hidden

    def _close_cycles(self, ends: torch.Tensor, start: torch.Tensor) -> None:
        """Price and credit the cycles that end here, which started at `start`, and start the next ones."""
        k = torch.where(ends, self.drafted, torch.zeros_like(self.drafted))
        accepted = torch.minimum(k, self.runs[self.rows, start])
        accepted = torch.minimum(accepted, (self.lengths - self.position - 1).clamp(min=0))  # the call's last token
        cost = self.cost_model.cycle_seconds(k)
        self.seconds += torch.where(ends, cost, torch.zeros_like(self.seconds))
        closing = ends.nonzero().squeeze(-1)
        self.cycle_tokens[closing, self.cycles[closing]] = (accepted[closing] + 1).float()
        self.cycle_seconds[closing, self.cycles[closing]] = cost[closing]
        self.state.end_cycle(ends, k, accepted)
        self.total_drafted += k
        self.total_accepted += torch.where(ends, accepted, torch.zeros_like(accepted))
        self.cycles += ends.long()
        self.position = torch.where(ends, self.position + accepted + 1, self.position)
        self.drafted = torch.where(ends, torch.zeros_like(self.drafted), self.drafted)

    def result(self) -> SimulationResult:
        def cat(key: str, width: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(self.record[key]) if self.record[key] else torch.zeros((0, *width), dtype=dtype)

        plain_seconds = self.lengths.float() * self.cost_model.plain_step
        cycles = int(self.cycles.max())
        return SimulationResult(
            speedup=plain_seconds / self.seconds,
            trace_index=self.trace_index,
            features=cat("features", (len(DRAFT_FEATURES),), torch.float),
            hidden=cat("hidden", (self.hidden.shape[-1],), torch.float),
            stopped=cat("stopped", (), torch.bool),
            episode=cat("episode", (), torch.long),
            cycle=cat("cycle", (), torch.long),
            cycle_tokens=self.cycle_tokens[:, :cycles],
            cycle_seconds=self.cycle_seconds[:, :cycles],
            plain_step=self.cost_model.plain_step,
            drafted=self.total_drafted,
            accepted=self.total_accepted,
            cycles=self.cycles,
        )


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
    replay = _Replay(adapter, traces, cost_model, rollouts, deterministic)
    while replay.step():
        pass
    return replay.result()


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
