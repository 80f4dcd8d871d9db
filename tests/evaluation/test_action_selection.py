import json

import pytest
import torch
from datasets import Dataset

from hf_adaptive_decoding import DecodingAction
from hf_adaptive_decoding.data.prompting import encode_prompts
from hf_adaptive_decoding.evaluation import runner
from hf_adaptive_decoding.evaluation.action_selection import (
    StrategyRewardCache,
    best_of_k_curve,
    evaluate_strategies,
    greedy_coverage,
    plot_best_of_k,
    problem_keys,
    top_k_by_mean,
)
from tests.conftest import make_char_tokenizer, make_tiny_model

# Six problems, five strategies. Strategies 0 and 1 are strong and redundant (they solve the same problems),
# strategy 2 solves exactly the problems they miss, strategy 3 is weak, strategy 4 solves nothing.
COMPLEMENTARY = torch.tensor(
    [
        [1, 1, 0, 1, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 0, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
    ],
    dtype=torch.float32,
)


def test_greedy_coverage_picks_complementary_strategies_where_top_k_by_mean_picks_redundant_ones():
    assert greedy_coverage(COMPLEMENTARY, 2) == [0, 2]
    assert top_k_by_mean(COMPLEMENTARY, 2) == [0, 1]
    # Everything is covered after two: later picks are ties in gain, broken by mean (then index).
    assert greedy_coverage(COMPLEMENTARY, 5) == [0, 2, 1, 3, 4]
    assert top_k_by_mean(COMPLEMENTARY, 5) == [0, 1, 3, 2, 4]
    assert best_of_k_curve(COMPLEMENTARY, greedy_coverage(COMPLEMENTARY, 3)) == [4 / 6, 1.0, 1.0]
    assert best_of_k_curve(COMPLEMENTARY, top_k_by_mean(COMPLEMENTARY, 3)) == [4 / 6, 4 / 6, 5 / 6]


def test_greedy_coverage_ties_go_to_the_higher_mean_then_the_earlier_strategy():
    rewards = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    # First pick: strategy 2 has the largest gain (2). Then 0 and 3 each gain 1 with the same mean: the earlier
    # one first; strategy 1 (gain 0) comes last.
    assert greedy_coverage(rewards, 4) == [2, 0, 3, 1]
    # Same gain, different means: the higher mean wins even if it comes later. Strategies 0 and 2 tie on the
    # first pick (gain 2, mean 0.5): 0 is earlier. Then 1 and 2 both add problem 2, and 2 has the higher mean.
    rewards = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert greedy_coverage(rewards, 2) == [0, 2]
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    # Both cover problem 0; after strategy 1 (gain 2) is chosen strategy 0 has gain 0.
    assert greedy_coverage(rewards, 2) == [1, 0]
    # All zero: pure index order.
    assert greedy_coverage(torch.zeros(3, 4), 4) == [0, 1, 2, 3]
    assert top_k_by_mean(torch.zeros(3, 4), 4) == [0, 1, 2, 3]


def test_greedy_coverage_maximises_the_covered_mass_with_integer_rewards():
    """Rewards in {0, 1, 2} (two reward functions summed): the gain still decides before the mean."""
    rewards = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    assert greedy_coverage(rewards, 2) == [0, 2]


def test_greedy_coverage_gain_comes_before_mean_with_fractional_rewards():
    rewards = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.95, 0.0], [0.0, 0.05, 0.1]])
    # After strategy 0, strategy 1 adds 0.05 and strategy 2 adds 0.1: F({0, 2}) = 2.1 > F({0, 1}) = 2.05.
    assert greedy_coverage(rewards, 2) == [0, 2]


def test_best_of_k_curve_values():
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert best_of_k_curve(rewards, [0, 1, 2]) == pytest.approx([0.125, 0.375, 0.625])
    assert best_of_k_curve(rewards, [2, 1]) == pytest.approx([0.25, 0.5])
    assert best_of_k_curve(rewards, [1]) == pytest.approx([0.25])


@pytest.mark.parametrize("k", [0, 6, -1, 2.0, True, "2"])
def test_k_is_validated(k):
    for select in (greedy_coverage, top_k_by_mean):
        with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\]"):
            select(COMPLEMENTARY, k)


@pytest.mark.parametrize("shape", [(5,), (0, 3), (2, 3, 1)])
def test_rewards_shape_is_validated(shape):
    with pytest.raises(ValueError, match="rewards must have shape"):
        greedy_coverage(torch.zeros(shape), 1)


def test_plot_best_of_k_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "best_of_k.png"
    plot_best_of_k({"greedy": [0.5, 1.0], "by mean": [0.5, 0.5]}, path, title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_problem_keys_use_the_key_column_or_a_row_hash():
    assert problem_keys(Dataset.from_dict({"prompt": ["a", "b"], "key": [3, 17]})) == ["3", "17"]
    keys = problem_keys(Dataset.from_dict({"prompt": ["a", "b", "a"], "answer": ["1", "2", "1"]}))
    assert keys[0] == keys[2] != keys[1] and len(keys[0]) == 16
    assert keys == problem_keys(Dataset.from_dict({"answer": ["1", "2", "1"], "prompt": ["a", "b", "a"]}))


# StrategyRewardCache


def test_reward_cache_resumes_and_ignores_a_truncated_last_line(tmp_path):
    context = {"model": "tiny", "seed": 0}
    cache = StrategyRewardCache(tmp_path, context)
    assert cache.rewards == {} and not cache.path.exists()
    assert json.loads((tmp_path / f"{cache.path.stem}.context.json").read_text()) == context
    cache.add([("p1", "greedy", 1.0), ("p1", "T=1", 0.0)])
    cache.add([("p2", "greedy", 0.5)])
    assert cache.missing("p2", ["greedy", "T=1"]) and not cache.missing("p1", ["greedy", "T=1"])

    resumed = StrategyRewardCache(tmp_path, context)
    assert resumed.path == cache.path
    assert resumed.rewards == {("p1", "greedy"): 1.0, ("p1", "T=1"): 0.0, ("p2", "greedy"): 0.5}

    with open(cache.path, "a") as handle:  # a write cut by a kill
        handle.write('{"problem": "p2", "strategy": "T=1", "rew')
    cut = StrategyRewardCache(tmp_path, context)
    assert cut.rewards == resumed.rewards
    assert cut.missing("p2", ["greedy", "T=1"])


def test_reward_cache_entries_added_after_a_truncated_line_survive(tmp_path):
    cache = StrategyRewardCache(tmp_path, {"seed": 0})
    cache.add([("p1", "greedy", 1.0)])
    with open(cache.path, "a") as handle:
        handle.write('{"problem": "p2", "strat')
    StrategyRewardCache(tmp_path, {"seed": 0}).add([("p2", "greedy", 0.5), ("p2", "T=1", 0.25)])
    assert StrategyRewardCache(tmp_path, {"seed": 0}).rewards == {
        ("p1", "greedy"): 1.0,
        ("p2", "greedy"): 0.5,
        ("p2", "T=1"): 0.25,
    }


def test_reward_cache_keeps_one_file_per_context(tmp_path):
    first = StrategyRewardCache(tmp_path, {"model": "tiny", "seed": 0})
    first.add([("p1", "greedy", 1.0)])
    other = StrategyRewardCache(tmp_path, {"model": "tiny", "seed": 1})
    assert other.path != first.path and other.rewards == {}
    # The key order of the context does not matter.
    same = StrategyRewardCache(tmp_path, {"seed": 0, "model": "tiny"})
    assert same.path == first.path and same.rewards == {("p1", "greedy"): 1.0}
    assert [p.name for p in tmp_path.glob("*.jsonl")] == [first.path.name]  # the other has written nothing yet
    assert len(list(tmp_path.glob("*.context.json"))) == 2


# evaluate_strategies

STRATEGIES = [
    DecodingAction(do_sample=False),
    DecodingAction(temperature=1.0),
    DecodingAction(temperature=2.0, top_k=5),
]
MAX_NEW_TOKENS = 6


def length_reward(prompts, completions, value, **kwargs):
    """Depends on the row (`value`) and on the completion (its length), so that rows and strategies can be told
    apart in the reward matrix."""
    return [1000.0 * v + len(c) for v, c in zip(value, completions, strict=True)]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama"), make_char_tokenizer()


@pytest.fixture(scope="module")
def problems():
    return Dataset.from_dict({"prompt": ["12+3", "what?", "x"], "value": [1, 2, 3]})


def _count_rollouts(monkeypatch):
    calls = []
    real = runner.generate_rollouts

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_rollouts", counting)
    return calls


def test_evaluate_strategies_rewards_every_problem_and_strategy_and_resumes(tiny, problems, tmp_path, monkeypatch):
    model, tokenizer = tiny
    calls = _count_rollouts(monkeypatch)
    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "rows_per_batch": 6, "disable_tqdm": True, "reward_timeout": None}
    rewards = evaluate_strategies(model, tokenizer, STRATEGIES, problems, length_reward, cache_dir=tmp_path, **kwargs)
    assert rewards.shape == (3, 3)
    assert len(calls) == 2  # 6 rows per batch: 2 problems x 3 strategies, then the last problem
    assert calls[0]["fixed_actions"].tolist() == [0, 1, 2, 0, 1, 2]
    assert calls[0]["num_samples"].tolist() == [3, 3] and calls[1]["num_samples"].tolist() == [3]
    # Row i is problem i (reward 1000 * value + length); the greedy column is plain greedy decoding.
    assert (rewards // 1000).tolist() == [[1.0] * 3, [2.0] * 3, [3.0] * 3]
    lengths = rewards % 1000
    assert ((lengths >= 0) & (lengths <= MAX_NEW_TOKENS)).all()
    encoded = encode_prompts(tokenizer, problems["prompt"], [None] * 3)
    plain = model.generate(
        input_ids=encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    texts = tokenizer.batch_decode(plain[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert lengths[:, 0].tolist() == [float(len(text)) for text in texts]

    (cache_file,) = tmp_path.glob("rewards-*.jsonl")
    entries = [json.loads(line) for line in cache_file.read_text().splitlines()]
    assert len(entries) == 9
    assert {(e["problem"], e["strategy"]) for e in entries} == {
        (key, s.name) for key in problem_keys(problems) for s in STRATEGIES
    }

    # Everything cached: nothing is generated, the same rewards come back.
    calls.clear()
    again = evaluate_strategies(model, tokenizer, STRATEGIES, problems, length_reward, cache_dir=tmp_path, **kwargs)
    assert calls == [] and torch.equal(again, rewards)

    # Interrupted after the first batch: only the second batch runs again, and gives the same rewards.
    cache_file.write_text("".join(line + "\n" for line in cache_file.read_text().splitlines()[:6]))
    resumed = evaluate_strategies(model, tokenizer, STRATEGIES, problems, length_reward, cache_dir=tmp_path, **kwargs)
    assert len(calls) == 1 and calls[0]["num_samples"].tolist() == [3]
    assert torch.equal(resumed, rewards)

    # Another seed is another context: another file, and everything runs.
    calls.clear()
    evaluate_strategies(model, tokenizer, STRATEGIES, problems, length_reward, cache_dir=tmp_path, seed=1, **kwargs)
    assert len(calls) == 2 and len(list(tmp_path.glob("rewards-*.jsonl"))) == 2


def test_evaluate_strategies_without_cache_and_its_errors(tiny, problems):
    model, tokenizer = tiny
    kwargs = {"max_new_tokens": 3, "disable_tqdm": True, "reward_timeout": None}
    rewards = evaluate_strategies(model, tokenizer, STRATEGIES[:2], problems.select([2]), length_reward, **kwargs)
    assert rewards.shape == (1, 2) and (rewards // 1000 == 3).all()
    with pytest.raises(ValueError, match="dataset is empty"):
        evaluate_strategies(model, tokenizer, STRATEGIES, problems.select([]), length_reward, **kwargs)
    with pytest.raises(ValueError, match=r"duplicates: \['T=1'\]"):
        evaluate_strategies(
            model, tokenizer, [*STRATEGIES, DecodingAction(temperature=1.0, top_p=1.0)], problems, length_reward
        )


def test_greedy_coverage_with_negative_rewards_starts_from_the_best_total():
    rewards = torch.tensor([[-1.0, -0.5, 0.0], [-1.0, -0.5, -2.0]])
    # Totals -2, -1, -2: strategy 1 first; then strategy 2 lifts problem 0 from -0.5 to 0.
    assert greedy_coverage(rewards, 2) == [1, 2]
