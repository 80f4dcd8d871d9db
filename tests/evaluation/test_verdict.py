import pytest
import torch
from datasets import Dataset

from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter
from hf_adaptive_decoding.evaluation.comparison import BEST, BEST_AT_K
from hf_adaptive_decoding.evaluation.evaluate import Decoder, evaluate_decoders
from hf_adaptive_decoding.evaluation.verdict import adapter_verdict, render_verdict
from tests.conftest import make_char_tokenizer, make_tiny_model

PROMPTS = ["12+3", "what?", "x", "a long one", "7*8=", "??"]


def even_length(prompts, completions, **kwargs):
    return [1.0 if len(completion) % 2 == 0 else 0.0 for completion in completions]


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama")


def always(model, preset: str, action: int, **overrides):
    """An adapter whose most likely action is `action` whatever it sees."""
    adapter = AutoDecodingAdapter.for_model(model, AdaptiveDecodingConfig.from_preset(preset, **overrides))
    with torch.no_grad():
        adapter.output_layer.weight.zero_()
        adapter.output_layer.bias.fill_(-10.0)
        adapter.output_layer.bias[action] = 10.0
    return adapter


def verdict_of(model, adapter, ks=(1,), num_samples=None, tmp_path=None):
    return adapter_verdict(
        model,
        make_char_tokenizer(),
        adapter,
        Dataset.from_dict({"prompt": PROMPTS}),
        even_length,
        token_budget=3,
        ks=ks,
        num_samples=num_samples,
        cache_dir=tmp_path,
        disable_tqdm=True,
    )


def test_an_adapter_that_always_picks_greedy_is_greedy_pair_by_pair(llama):
    verdict = verdict_of(llama, always(llama, "math-token", 0), num_samples=2)
    assert verdict["num_problems"] == len(PROMPTS) and verdict["num_samples"] == 2 and verdict["level"] == "token"
    scores = verdict["pass_at_k"]
    assert list(scores) == ["adapter", "greedy", "T=0.5", "T=1", "T=1.25", BEST, BEST_AT_K]
    assert scores["adapter"] == scores["greedy"]
    against_greedy = [row for row in verdict["comparisons"] if row["reference"] == "greedy"]
    assert against_greedy == [
        {
            "level": "token",
            "decoder": "adapter",
            "budget_aware": True,
            "reference": "greedy",
            "k": 1,
            "token_budget": 3,
            "delta": 0.0,
            "ci95": [0.0, 0.0],
        }
    ]
    assert "adapter - greedy at Pass@1: +0.0 [+0.0, +0.0] points: no difference resolved" in render_verdict(verdict)


def test_best_is_the_best_static_action_on_these_problems_and_the_differences_are_paired(llama, tmp_path):
    adapter = always(llama, "math-token", 2)  # always T=1
    verdict = verdict_of(llama, adapter, num_samples=4, tmp_path=tmp_path)
    statics = ["greedy", "T=0.5", "T=1", "T=1.25"]
    scores = verdict["pass_at_k"]
    best = max(statics, key=lambda name: (scores[name]["1"], -statics.index(name)))
    assert verdict["best"] == {BEST: best, BEST_AT_K: {"1": best}}
    assert scores[BEST] == scores[best] == scores[BEST_AT_K]
    assert scores["adapter"] == scores["T=1"]  # the same random numbers as the static action it always picks
    # The rows recomputed from an evaluation of the same decoders (it reads the verdict's cache: the same samples).
    decoders = [Decoder.adapter("adapter", adapter), *(Decoder.static(name, name) for name in statics)]
    summary = evaluate_decoders(
        llama,
        make_char_tokenizer(),
        decoders,
        Dataset.from_dict({"prompt": PROMPTS}),
        even_length,
        token_budgets=[3],
        ks=[1],
        num_samples=4,
        seeds=[0],
        cache_dir=tmp_path,
        disable_tqdm=True,
    )
    difference = torch.tensor(summary["per_problem"]["adapter"]["3"]["1"]) - torch.tensor(
        summary["per_problem"][best]["3"]["1"]
    )
    row = next(row for row in verdict["comparisons"] if row["reference"] == BEST)
    assert row["delta"] == pytest.approx(round(100 * float(difference.mean()), 2))
    half = 1.959963984540054 * float(difference.std(unbiased=True)) / len(PROMPTS) ** 0.5
    assert row["ci95"][0] == pytest.approx(row["delta"] - 100 * half, abs=0.01)


def test_a_budget_aware_sequence_adapter_is_compared_at_every_parallel_budget(llama):
    adapter = always(llama, "mixed-seq", 5)  # mixed-seq's last action is greedy
    verdict = verdict_of(llama, adapter, ks=(2, 1))
    assert verdict["level"] == "sequence" and verdict["budget_aware"] and verdict["num_samples"] == 2
    rows = {(row["reference"], row["k"]) for row in verdict["comparisons"]}
    assert rows == {(reference, k) for reference in ("greedy", BEST, BEST_AT_K) for k in (1, 2)}
    assert verdict["pass_at_k"]["adapter"] == verdict["pass_at_k"]["greedy"]


def test_the_reading_of_each_interval():
    verdict = {
        "num_problems": 100,
        "num_samples": 1,
        "token_budget": 48,
        "best": {BEST: "greedy", BEST_AT_K: {"1": "greedy"}},
        "pass_at_k": {"adapter": {"1": 30.0}, "greedy": {"1": 25.0}, BEST: {"1": 25.0}, BEST_AT_K: {"1": 25.0}},
        "comparisons": [
            {"reference": "greedy", "k": 1, "delta": 5.0, "ci95": [1.0, 9.0]},
            {"reference": BEST, "k": 1, "delta": -5.0, "ci95": [-9.0, -1.0]},
            {"reference": BEST_AT_K, "k": 1, "delta": 1.0, "ci95": [-3.0, 5.0]},
        ],
    }
    text = render_verdict(verdict)
    assert "| BEST (greedy) | 25.0 |" in text and "| BEST@k (greedy) | 25.0 |" in text
    assert "adapter - greedy at Pass@1: +5.0 [+1.0, +9.0] points: better" in text
    assert "adapter - BEST at Pass@1: -5.0 [-9.0, -1.0] points: worse" in text
    assert "adapter - BEST@k at Pass@1: +1.0 [-3.0, +5.0] points: no difference resolved" in text


@pytest.mark.parametrize(
    "overrides, message",
    [({"ks": ()}, r"ks must be .* got \[\]"), ({"ks": (0, 1)}, r"got \[0, 1\]"), ({"token_budget": 0}, "got 0")],
)
def test_bad_arguments_name_the_value(llama, overrides, message):
    arguments = {"token_budget": 3, "ks": (1,), **overrides}
    with pytest.raises(ValueError, match=message):
        adapter_verdict(
            llama,
            make_char_tokenizer(),
            always(llama, "math-token", 0),
            Dataset.from_dict({"prompt": ["x"]}),
            even_length,
            **arguments,
        )
