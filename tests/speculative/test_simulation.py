import pytest
import torch

from hf_adaptive_decoding import DRAFT_FEATURES, DraftAdapterModel
from hf_adaptive_decoding.speculative.simulation import (
    CycleCostModel,
    collect_trace,
    cycle_advantages,
    episode_log_probs,
    simulate_drafting,
)
from tests.conftest import make_tiny_model

NEW_TOKENS = 30
DRAFT_COLUMNS = [DRAFT_FEATURES.index(name) for name in ("draft_prob", "draft_entropy", "draft_margin")]
DRAFT_COLUMNS.append(DRAFT_FEATURES.index("cumulative_draft_prob"))


@pytest.fixture
def target():
    model = make_tiny_model("llama")
    model.generation_config.top_k = None
    model.generation_config.eos_token_id = None  # full-length generations: every prompt drafts to the end
    return model


@pytest.fixture
def draft_model():
    model = make_tiny_model("llama", seed=1)
    model.generation_config.top_k = None
    model.generation_config.eos_token_id = None
    return model


def _prompt(seed: int):
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(3, 128, (5,), generator=generator)
    return torch.cat([body, body, body[:3]])[None]


def _policy(target, seed: int, blind_to_draft_stats: bool) -> DraftAdapterModel:
    """A policy whose decisions depend on its inputs (random output weights), thresholded deterministically."""
    adapter = DraftAdapterModel.for_model(target, max_draft_tokens=5, initial_stop_probability=0.4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
        if blind_to_draft_stats:
            # After a rejected token the replay shows teacher-forced draft statistics (see the module docstring):
            # a policy that ignores them must replay exactly.
            adapter.mlp[0].weight[:, DRAFT_COLUMNS] = 0.0
    return adapter.eval()


COST = {"intercept": 0.01, "per_token": 0.002, "plain_step": 0.009}


@pytest.mark.parametrize(
    ("source", "generate_kwargs"),
    [
        ("prompt_lookup", {"prompt_lookup_num_tokens": 5}),
        ("assistant_model", None),
        ("early_exit", {"assistant_early_exit": 1}),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_replay_matches_live_generation(target, draft_model, source, generate_kwargs, seed):
    generate_kwargs = generate_kwargs or {"assistant_model": draft_model}
    adapter = _policy(target, seed, blind_to_draft_stats=source != "prompt_lookup")
    input_ids = _prompt(seed)
    live = target.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        decoding_adapter=adapter,
        deterministic=True,
        return_dict_in_generate=True,
        **generate_kwargs,
    )
    trace = collect_trace(
        target, input_ids, source, NEW_TOKENS, adapter.max_draft_tokens, draft_model=draft_model, early_exit_layer=1
    )
    assert torch.equal(trace.tokens, live.sequences[0, input_ids.shape[1] :])
    replay = simulate_drafting(adapter, [trace], CycleCostModel(source, **COST), deterministic=True)
    assert int(replay.cycles[0]) == len(live.draft_lengths)
    assert int(replay.drafted[0]) == int(live.draft_lengths.sum())
    assert int(replay.accepted[0]) == int(live.accepted_lengths.sum())
    expected_seconds = COST["intercept"] * len(live.draft_lengths) + COST["per_token"] * live.draft_lengths.sum()
    assert float(replay.speedup[0]) == pytest.approx(NEW_TOKENS * COST["plain_step"] / float(expected_seconds))


@pytest.mark.parametrize("source", ["prompt_lookup", "early_exit"])
@pytest.mark.parametrize("cap", [1, 3])
def test_a_trace_taken_with_a_larger_cap_replays_a_smaller_one(target, source, cap):
    """Training validates fixed draft lengths 1..max on traces taken once with the largest."""
    fixed = DraftAdapterModel.for_model(target, max_draft_tokens=cap, initial_stop_probability=1e-4)
    input_ids = _prompt(0)
    extra = {"prompt_lookup_num_tokens": cap} if source == "prompt_lookup" else {"assistant_early_exit": 1}
    live = target.generate(
        input_ids=input_ids,
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        decoding_adapter=fixed,
        deterministic=True,
        return_dict_in_generate=True,
        **extra,
    )
    trace = collect_trace(target, input_ids, source, NEW_TOKENS, 8, early_exit_layer=1)
    replay = simulate_drafting(fixed, [trace], CycleCostModel(source, **COST), deterministic=True)
    assert int(replay.cycles[0]) == len(live.draft_lengths)
    assert int(replay.drafted[0]) == int(live.draft_lengths.sum())
    assert int(replay.accepted[0]) == int(live.accepted_lengths.sum())


def test_rollouts_sample_decisions_and_log_probs_have_gradients(target, draft_model):
    adapter = DraftAdapterModel.for_model(target, max_draft_tokens=4, initial_stop_probability=0.3)
    traces = [
        collect_trace(target, _prompt(seed), "assistant_model", NEW_TOKENS, 4, draft_model=draft_model)
        for seed in range(3)
    ]
    torch.manual_seed(0)
    result = simulate_drafting(adapter, traces, CycleCostModel("assistant_model", **COST), rollouts=5)
    assert result.speedup.shape == (15,) and result.trace_index.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert len(result.stopped) == len(result.features) == len(result.hidden) == len(result.episode) > 0
    assert 0.2 < result.stopped.float().mean() < 0.4
    assert len(set(result.speedup.tolist())) > 3  # sampled decisions differ between rollouts
    log_probs = episode_log_probs(adapter.train()(result.features, result.hidden).stop_logits, result)
    expected = torch.zeros(15).index_add(
        0, result.episode, torch.where(result.stopped, torch.tensor(0.3).log(), torch.tensor(0.7).log())
    )
    torch.testing.assert_close(log_probs.detach(), expected, atol=1e-5, rtol=1e-5)
    log_probs.sum().backward()
    assert adapter.output_layer.bias.grad is not None and adapter.output_layer.bias.grad.abs() > 0


def test_always_stopping_drafts_only_in_the_first_cycle(target, draft_model):
    adapter = DraftAdapterModel.for_model(target, max_draft_tokens=4, initial_stop_probability=0.999)
    trace = collect_trace(target, _prompt(0), "assistant_model", NEW_TOKENS, 4, draft_model=draft_model)
    result = simulate_drafting(adapter, [trace], CycleCostModel("assistant_model", **COST), deterministic=True)
    # The first cycle always drafts (one token, then it stops); every later cycle stops before drafting.
    assert int(result.drafted[0]) == 1
    assert int(result.cycles[0]) + int(result.accepted[0]) == NEW_TOKENS
    assert result.stopped.all() and (result.features[:, DRAFT_FEATURES.index("position")] * 4).round().tolist() == [
        1.0
    ] + [0.0] * (len(result.stopped) - 1)


def test_cycle_outcomes_add_up_and_credit_each_decision_with_its_cycle(target, draft_model):
    adapter = DraftAdapterModel.for_model(target, max_draft_tokens=4, initial_stop_probability=0.3)
    traces = [
        collect_trace(target, _prompt(seed), "assistant_model", NEW_TOKENS, 4, draft_model=draft_model)
        for seed in range(2)
    ]
    cost = CycleCostModel("assistant_model", **COST)
    torch.manual_seed(0)
    result = simulate_drafting(adapter, traces, cost, rollouts=3)
    # Every episode's cycles add up to its tokens and to its priced time.
    torch.testing.assert_close(result.cycle_tokens.sum(dim=1), torch.full((6,), float(NEW_TOKENS)))
    torch.testing.assert_close(result.cycle_seconds.sum(dim=1), NEW_TOKENS * COST["plain_step"] / result.speedup)
    assert ((result.cycle_tokens > 0).sum(dim=1) == result.cycles).all()
    advantages = cycle_advantages(result, rollouts=3)
    assert advantages.shape == result.stopped.shape
    # By hand: tokens - speedup * seconds / plain_step, minus its mean over the trace's cycles (all rollouts).
    speedup = result.speedup.view(2, 3).mean(dim=1).repeat_interleave(3)
    expected = []
    for episode, cycle in zip(result.episode.tolist(), result.cycle.tolist(), strict=True):
        trace = episode // 3
        rewards = [
            float(result.cycle_tokens[e, c] - speedup[e] * result.cycle_seconds[e, c] / COST["plain_step"])
            for e in range(3 * trace, 3 * trace + 3)
            for c in range(int(result.cycles[e]))
        ]
        own = float(
            result.cycle_tokens[episode, cycle]
            - speedup[episode] * result.cycle_seconds[episode, cycle] / COST["plain_step"]
        )
        expected.append(own - sum(rewards) / len(rewards))
    torch.testing.assert_close(advantages, torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_errors_name_the_problem(target, draft_model):
    adapter = DraftAdapterModel.for_model(target)
    trace = collect_trace(target, _prompt(0), "prompt_lookup", 8, 4)
    with pytest.raises(ValueError, match="at least one trace"):
        simulate_drafting(adapter, [], CycleCostModel("prompt_lookup", **COST))
    with pytest.raises(
        ValueError, match=r"Traces from \['prompt_lookup'\] cannot be priced by a cost model of 'early"
    ):
        simulate_drafting(adapter, [trace], CycleCostModel("early_exit", **COST))
    with pytest.raises(ValueError, match="source='assistant_model' needs draft_model"):
        collect_trace(target, _prompt(0), "assistant_model", 8, 4)
    with pytest.raises(ValueError, match=r"one prompt of shape \(1, length\), got \(2, 13\)"):
        collect_trace(target, torch.cat([_prompt(0), _prompt(1)]), "prompt_lookup", 8, 4)


def test_cost_model_round_trips_through_json(tmp_path):
    cost = CycleCostModel("early_exit", 0.02, 0.004, 0.015, measurements=[[1, 0.03]])
    cost.to_json_file(tmp_path / "cost.json")
    assert CycleCostModel.from_json_file(tmp_path / "cost.json") == cost
    torch.testing.assert_close(cost.cycle_seconds(torch.tensor([0, 5])), torch.tensor([0.02, 0.04]))
    tabulated = CycleCostModel("early_exit", 0.02, 0.004, 0.015, seconds_by_length=[0.015, 0.03, 0.031])
    tabulated.to_json_file(tmp_path / "tabulated.json")
    assert CycleCostModel.from_json_file(tmp_path / "tabulated.json") == tabulated
    torch.testing.assert_close(
        tabulated.cycle_seconds(torch.tensor([0, 1, 2, 5])), torch.tensor([0.015, 0.03, 0.031, 0.04])
    )
