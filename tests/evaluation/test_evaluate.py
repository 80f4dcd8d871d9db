import json
import math
import shutil
import statistics

import pytest
import torch
from datasets import Dataset

from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter, DecodingAction
from hf_adaptive_decoding.adapters.modeling import DecodingAdapterModel
from hf_adaptive_decoding.data.prompting import encode_prompts
from hf_adaptive_decoding.evaluation import runner
from hf_adaptive_decoding.evaluation.comparison import Z_95
from hf_adaptive_decoding.evaluation.evaluate import Decoder, evaluate_decoders
from hf_adaptive_decoding.generation.policies import ConstantPolicy, EntropyDynamicTemperatureLogitsWarper
from tests.conftest import make_char_tokenizer, make_tiny_model

# Decoder.from_spec and friends


@pytest.mark.parametrize(
    ("spec", "name", "action"),
    [
        ("greedy=static:greedy", "greedy", DecodingAction(do_sample=False)),
        ("T=1=static:T=1", "T=1", DecodingAction(temperature=1.0)),
        ("min-p=static:T=1 min_p=0.1", "min-p", DecodingAction(temperature=1.0, min_p=0.1)),
        ("T=0.5 top_k=10=static:T=0.5 top_k=10", "T=0.5 top_k=10", DecodingAction(temperature=0.5, top_k=10)),
        ("a=static=static:T=2", "a=static", DecodingAction(temperature=2.0)),
    ],
)
def test_static_specs(spec, name, action):
    decoder = Decoder.from_spec(spec)
    assert decoder.name == name
    assert isinstance(decoder.policy, ConstantPolicy)
    assert decoder.policy.decoding_config.actions == [action]
    assert decoder.level == "token"  # so that per-token entropies are recorded
    assert decoder.description == f"static {action.name}"
    assert not decoder.deterministic and decoder.logits_processor is None
    assert not decoder.budget_aware
    assert decoder.samples_identical == (not action.do_sample)


def test_best_spec_without_a_best_entry_says_what_it_expects(tmp_path):
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"sequence": []}))
    with pytest.raises(ValueError, match="has no 'best' entry with 'action' and 'mean_reward'"):
        Decoder.from_spec(f"BEST=best:{selection}")


def test_best_spec_reads_the_selection(tmp_path):
    action = DecodingAction(temperature=0.75, top_p=0.9, min_p=0.1)
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"best": {"name": action.name, "action": action.to_dict(), "mean_reward": 0.625}}))
    decoder = Decoder.from_spec(f"BEST=best:{selection}")
    assert decoder.name == "BEST"
    assert decoder.policy.decoding_config.actions == [action]
    assert decoder.description == "static T=0.75 top_p=0.9 min_p=0.1 (best on validation: 0.625)"
    assert decoder.level == "token" and not decoder.samples_identical


def test_mixed_spec_from_a_preset_or_a_json_file(tmp_path):
    decoder = Decoder.from_spec("MIXED=mixed:math-token")
    assert decoder.name == "MIXED" and decoder.level == "token"
    assert decoder.policy.decoding_config == AdaptiveDecodingConfig(
        actions=AdaptiveDecodingConfig.from_preset("math-token").actions, level="token", budget_feature=None
    )
    torch.testing.assert_close(decoder.policy.probs, torch.full((4,), 0.25))
    assert decoder.description == "uniform over ['greedy', 'T=0.5', 'T=1', 'T=1.25'] (token level)"
    assert not decoder.samples_identical and not decoder.budget_aware
    assert Decoder.from_spec("M=mixed:math-seq").level == "sequence"
    path = tmp_path / "actions.json"
    AdaptiveDecodingConfig(actions=[DecodingAction(do_sample=False), DecodingAction(temperature=0.3)]).to_json_file(
        path
    )
    from_file = Decoder.from_spec(f"mine=mixed:{path}")
    assert from_file.policy.decoding_config.action_names == ["greedy", "T=0.3"]
    # A mixture of greedy alone is greedy: one sample stands for all.
    assert Decoder.mixed("g", AdaptiveDecodingConfig(actions=[DecodingAction(do_sample=False)])).samples_identical


@pytest.mark.parametrize(
    ("spec", "values"),
    [
        ("EDT=edt", (1.0, 0.8, 1.0)),
        ("EDT=edt:", (1.0, 0.8, 1.0)),
        ("EDT=edt:1.5", (1.5, 0.8, 1.0)),
        ("EDT=edt:1.5,0.5", (1.5, 0.5, 1.0)),
        ("EDT=edt:1.5, 0.5, 2", (1.5, 0.5, 2.0)),
    ],
)
def test_edt_specs(spec, values):
    decoder = Decoder.from_spec(spec)
    temperature, base, theta = values
    assert decoder.name == "EDT"
    assert decoder.description == f"EDT T0={temperature:g} N={base:g} theta={theta:g}"
    assert decoder.policy.decoding_config.actions == [DecodingAction(temperature=1.0)]
    assert decoder.level == "token" and not decoder.samples_identical and not decoder.budget_aware
    scores = torch.randn(4, 9)
    expected = EntropyDynamicTemperatureLogitsWarper(temperature, base, theta)(None, scores)
    torch.testing.assert_close(decoder.logits_processor(scores), expected)


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama")


def _saved_adapter(model, folder, preset="math-seq", **overrides):
    adapter = AutoDecodingAdapter.for_model(model, AdaptiveDecodingConfig.from_preset(preset, **overrides))
    torch.manual_seed(0)
    torch.nn.init.normal_(adapter.output_layer.weight)
    adapter.save_pretrained(folder)
    return adapter


def test_adapter_specs_load_the_folder(llama, tmp_path):
    saved = _saved_adapter(llama, tmp_path / "seq")
    most_likely = Decoder.from_spec(f"ours=adapter:{tmp_path / 'seq'}")
    assert most_likely.name == "ours" and most_likely.deterministic
    assert isinstance(most_likely.policy, DecodingAdapterModel) and not most_likely.policy.training
    for a, b in zip(saved.state_dict().values(), most_likely.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert most_likely.level == "sequence" and most_likely.budget_aware and not most_likely.samples_identical
    assert most_likely.description.startswith(f"sequence-level adapter {tmp_path / 'seq'} (most likely action)")
    sampled = Decoder.from_spec(f"ours-s=adapter-sampled:{tmp_path / 'seq'}")
    assert not sampled.deterministic and "(sampled actions)" in sampled.description
    # The description ends with a fingerprint of the weights: the same weights, the same fingerprint.
    assert most_likely.description.split("weights ")[-1] == sampled.description.split("weights ")[-1]
    assert len(most_likely.description.split("weights ")[-1]) == 12
    with torch.no_grad():
        sampled.policy.output_layer.bias.add_(1.0)
    assert (
        Decoder.adapter("x", sampled.policy).description.split("weights ")[-1]
        != most_likely.description.split("weights ")[-1]
    )


def test_budget_awareness_of_adapters(llama, tmp_path):
    agnostic = _saved_adapter(llama, tmp_path / "agnostic", budget_feature=None)
    token = _saved_adapter(llama, tmp_path / "token", preset="math-token")
    assert Decoder.adapter("a", agnostic).level == "sequence" and not Decoder.adapter("a", agnostic).budget_aware
    assert not Decoder.adapter("t", token).budget_aware
    assert not Decoder.adapter("t", token).samples_identical
    assert not Decoder.from_spec("M=mixed:math-seq").budget_aware  # not an adapter


@pytest.mark.parametrize(
    "spec",
    [
        "greedy",
        "greedy=static",
        "greedy=static:",
        "greedy=static:  ",
        "x=unknown:1",
        "x=STATIC:greedy",
        "=static:greedy",
        " =static:greedy",
        "x=best",
        "x=mixed",
        "x=adapter",
        "E=edt:1,0.8,1,2",
        "E=edt:abc",
        "x=static:T=abc",
        "x=static:T=0",
        "x=mixed:no-such-preset",
        "",
    ],
)
def test_bad_specs_raise_value_errors(spec):
    with pytest.raises(ValueError):
        Decoder.from_spec(spec)


def test_bad_spec_message_lists_the_kinds():
    with pytest.raises(ValueError) as error:
        Decoder.from_spec("x=unknown:1")
    message = str(error.value)
    assert "'x=unknown:1'" in message and "'static', 'best', 'mixed', 'edt', 'adapter', 'adapter-sampled'" in message
    with pytest.raises(ValueError, match="at most 3 numbers"):
        Decoder.from_spec("E=edt:1,0.8,1,2")


# evaluate_decoders

BUDGET = 3
KS = (1, 2, 4)
SEEDS = (0, 1)
PROMPTS = ["12+3", "what?", "x"]


def even_length(prompts, completions, **kwargs):
    return [1.0 if len(completion) % 2 == 0 else 0.0 for completion in completions]


def _decoders(model, folder):
    seq = _saved_adapter(model, folder / "seq")
    token = _saved_adapter(model, folder / "token", preset="math-token")
    return [
        Decoder.from_spec("greedy=static:greedy"),
        Decoder.from_spec("MIXED=mixed:math-token"),
        Decoder.from_spec("EDT=edt"),
        Decoder.adapter("seq", seq),
        Decoder.adapter("tok", token, deterministic=False),
    ]


def _spy(patch, calls):
    real = runner.generate_rollouts

    def spy(model, policy, input_ids, attention_mask, **kwargs):
        calls.append({"policy": policy, **kwargs})
        return real(model, policy, input_ids, attention_mask, **kwargs)

    patch.setattr(runner, "generate_rollouts", spy)


KWARGS = {
    "token_budgets": (BUDGET,),
    "ks": KS,
    "num_samples": 4,
    "seeds": SEEDS,
    "rows_per_batch": 8,  # two problems per batch of 4 samples each: two batches
    "reward_timeout": None,
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def run(llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluation")
    tokenizer = make_char_tokenizer()
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    decoders = _decoders(llama, folder)
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        _spy(patch, calls)
        summary = evaluate_decoders(
            llama, tokenizer, decoders, dataset, even_length, reference="greedy", cache_dir=folder / "cache", **KWARGS
        )
    return {
        "model": llama,
        "tokenizer": tokenizer,
        "dataset": dataset,
        "decoders": decoders,
        "summary": summary,
        "calls": calls,
        "cache": folder / "cache",
    }


def _unit(cache, name, seed, parallel=None):
    suffix = f"-B{parallel}" if parallel is not None else ""
    return json.loads((cache / f"{name}-b{BUDGET}-s{seed}{suffix}.json").read_text())


def _pass_at_k(rewards, k):
    n, c = len(rewards), sum(reward >= 1.0 for reward in rewards)
    if n == 1:
        return float(c)
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_summary_structure(run):
    summary = run["summary"]
    assert set(summary) == {"settings", "decoders", "results", "per_problem", "lengths", "token_entropy"}
    settings = summary["settings"]
    assert settings["num_problems"] == 3 and settings["num_samples"] == 4 and settings["reference"] == "greedy"
    assert settings["ks"] == [1, 2, 4] and settings["seeds"] == [0, 1] and settings["token_budgets"] == [BUDGET]
    assert summary["decoders"] == {
        d.name: {"description": d.description, "level": d.level, "budget_aware": d.uses_budget}
        for d in run["decoders"]
    }
    assert [d["budget_aware"] for d in summary["decoders"].values()] == [False, False, False, True, True]
    assert [d["level"] for d in summary["decoders"].values()] == ["token", "token", "token", "sequence", "token"]
    keys = [(e["decoder"], e["token_budget"], e["k"]) for e in summary["results"]]
    assert keys == [(d.name, BUDGET, k) for d in run["decoders"] for k in KS]
    for entry in summary["results"]:
        assert 0.0 <= entry["mean"] <= 1.0 and len(entry["seed_means"]) == 2
    # Lengths of every sample: greedy has one per problem and seed, the others num_samples.
    lengths = summary["lengths"]
    assert len(lengths["greedy"][str(BUDGET)]) == 3 * 2
    for name in ("MIXED", "EDT", "seq", "tok"):
        assert len(lengths[name][str(BUDGET)]) == 3 * 2 * 4
    assert all(1 <= length <= BUDGET for values in lengths.values() for length in values[str(BUDGET)])
    # Token-level decoders record an entropy and an action per generated token (seed 0).
    assert set(summary["token_entropy"]) == {"greedy", "MIXED", "EDT", "tok"}
    for name, record in summary["token_entropy"].items():
        unit = _unit(run["cache"], name, 0)
        assert len(record["entropy"]) == len(record["action"]) == sum(map(sum, unit["outcome"]["lengths"]))
        assert all(value >= 0 for value in record["entropy"])
        assert set(record["action"]) <= set(range(len(record["action_names"])))
    assert summary["token_entropy"]["MIXED"]["action_names"] == ["greedy", "T=0.5", "T=1", "T=1.25"]
    assert set(summary["token_entropy"]["greedy"]["action"]) == {0}


def test_pass_at_k_agrees_with_the_cached_rewards(run):
    summary, cache = run["summary"], run["cache"]
    per_problem = {}
    for decoder in run["decoders"]:
        for k in KS:
            parallel = k if decoder.budget_aware else None
            scores = [
                [_pass_at_k(r, k) for r in _unit(cache, decoder.name, s, parallel)["outcome"]["rewards"]]
                for s in SEEDS
            ]
            means = [statistics.mean(column) for column in zip(*scores, strict=True)]
            per_problem[(decoder.name, k)] = means
            assert summary["per_problem"][decoder.name][str(BUDGET)][str(k)] == pytest.approx(means, abs=1e-6)
            (entry,) = [e for e in summary["results"] if (e["decoder"], e["k"]) == (decoder.name, k)]
            assert entry["mean"] == pytest.approx(statistics.mean(means), abs=1e-6)
            assert entry["seed_means"] == pytest.approx([statistics.mean(row) for row in scores], abs=1e-6)
            assert entry["ci95"] == pytest.approx(Z_95 * statistics.stdev(means) / math.sqrt(3), abs=1e-6)
    for entry in summary["results"]:
        difference = [
            a - b
            for a, b in zip(
                per_problem[(entry["decoder"], entry["k"])], per_problem[("greedy", entry["k"])], strict=True
            )
        ]
        assert entry["delta"] == pytest.approx(statistics.mean(difference), abs=1e-6)
        assert entry["delta_ci95"] == pytest.approx(Z_95 * statistics.stdev(difference) / math.sqrt(3), abs=1e-6)
    # The reference against itself: exactly zero.
    for entry in summary["results"]:
        if entry["decoder"] == "greedy":
            assert entry["delta"] == 0.0 and entry["delta_ci95"] == 0.0
    # Greedy's samples are identical: its pass@k does not depend on k.
    greedy = [e["mean"] for e in summary["results"] if e["decoder"] == "greedy"]
    assert greedy[0] == greedy[1] == greedy[2]


def test_greedy_runs_one_sample_and_equals_plain_greedy_decoding(run):
    greedy_calls = [c for c in run["calls"] if c["policy"] is run["decoders"][0].policy]
    assert len(greedy_calls) == 2  # one batch (8 rows per batch, 1 sample each) per seed
    assert all(c["num_samples"].tolist() == [1, 1, 1] for c in greedy_calls)
    assert all(c["parallel_budgets"] is None and c["logits_processor"] is None for c in greedy_calls)
    tokenizer, model = run["tokenizer"], run["model"]
    encoded = encode_prompts(tokenizer, PROMPTS, [None] * len(PROMPTS))  # standard (string) prompts: plain text
    plain = model.generate(
        input_ids=encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        do_sample=False,
        max_new_tokens=BUDGET,
    )
    texts = tokenizer.batch_decode(plain[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    for seed in SEEDS:
        outcome = _unit(run["cache"], "greedy", seed)["outcome"]
        assert outcome["rewards"] == [[1.0 if len(text) % 2 == 0 else 0.0] for text in texts]


def test_other_decoders_draw_num_samples_in_batches(run):
    for decoder in run["decoders"][1:]:
        calls = [c for c in run["calls"] if c["policy"] is decoder.policy]
        units = len(SEEDS) * (len(KS) if decoder.budget_aware else 1)
        assert len(calls) == 2 * units  # problems [0, 1] then [2]
        assert [c["num_samples"].tolist() for c in calls[:2]] == [[4, 4], [4]]
        assert all((c["token_budgets"] == BUDGET).all() for c in calls)
        assert all(c["deterministic"] == decoder.deterministic for c in calls)
        for seed in SEEDS:
            parallel = KS[0] if decoder.budget_aware else None
            outcome = _unit(run["cache"], decoder.name, seed, parallel)["outcome"]
            assert len(outcome["rewards"]) == 3 and all(len(row) == 4 for row in outcome["rewards"])
    edt_calls = [c for c in run["calls"] if c["policy"] is run["decoders"][2].policy]
    assert all(c["logits_processor"] is run["decoders"][2].logits_processor for c in edt_calls)


def test_a_budget_aware_sequence_adapter_gets_one_unit_per_k(run):
    cache = run["cache"]
    assert sorted(p.name for p in cache.glob("seq-*.json")) == sorted(
        f"seq-b{BUDGET}-s{seed}-B{k}.json" for seed in SEEDS for k in KS
    )
    for seed in SEEDS:
        for k in KS:
            assert _unit(cache, "seq", seed, k)["context"]["B"] == k
    told = [c["parallel_budgets"].tolist() for c in run["calls"] if c["policy"] is run["decoders"][3].policy]
    assert told == [[k] * n for _ in SEEDS for k in KS for n in (2, 1)]
    assert _unit(cache, "greedy", 0)["context"]["B"] is None
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"{name}-b{BUDGET}-s{seed}.json" for name in ("greedy", "MIXED", "EDT", "tok") for seed in SEEDS]
        + [f"seq-b{BUDGET}-s{seed}-B{k}.json" for seed in SEEDS for k in KS]
    )


def test_a_unit_killed_between_batches_continues_from_its_last_batch(run, monkeypatch, tmp_path):
    real, calls = runner.generate_rollouts, []

    def killed_at_the_second_batch(*args, **kwargs):
        calls.append(kwargs["num_samples"].numel())
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_rollouts", killed_at_the_second_batch)
    mixed = [run["decoders"][1]]
    arguments = (run["model"], run["tokenizer"], mixed, run["dataset"], even_length)
    options = {**KWARGS, "seeds": (0,), "cache_dir": tmp_path}
    with pytest.raises(KeyboardInterrupt):
        evaluate_decoders(*arguments, **options)
    assert [p.name for p in tmp_path.iterdir()] == [f"MIXED-b{BUDGET}-s0.partial.pt"]
    resumed = evaluate_decoders(*arguments, **options)
    assert calls == [2, 1, 1]  # batches of two problems and one: the first is not generated again
    assert not (tmp_path / f"MIXED-b{BUDGET}-s0.partial.pt").exists()
    assert _unit(tmp_path, "MIXED", 0) == _unit(run["cache"], "MIXED", 0)
    rewards = _unit(run["cache"], "MIXED", 0)["outcome"]["rewards"]
    assert resumed["results"][0]["mean"] == pytest.approx(statistics.mean(_pass_at_k(r, 1) for r in rewards))


def test_a_second_call_resumes_from_the_cache(run, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("generate_rollouts was called although every unit is cached")

    monkeypatch.setattr(runner, "generate_rollouts", fail)
    again = evaluate_decoders(
        run["model"],
        run["tokenizer"],
        run["decoders"],
        run["dataset"],
        even_length,
        reference="greedy",
        cache_dir=run["cache"],
        **KWARGS,
    )
    assert json.dumps(again, sort_keys=True) == json.dumps(run["summary"], sort_keys=True)
    # The threshold is applied to cached rewards: no generation either.
    strict = evaluate_decoders(
        run["model"],
        run["tokenizer"],
        run["decoders"][:1],
        run["dataset"],
        even_length,
        success_threshold=2.0,
        cache_dir=run["cache"],
        **KWARGS,
    )
    assert [e["mean"] for e in strict["results"]] == [0.0, 0.0, 0.0]
    assert "delta" not in strict["results"][0] and strict["settings"]["reference"] is None


def test_adding_a_decoder_only_runs_that_decoder(run, monkeypatch, tmp_path):
    cache = shutil.copytree(run["cache"], tmp_path / "cache")
    calls = []
    _spy(monkeypatch, calls)
    hot = Decoder.static("hot", "T=1.5")
    summary = evaluate_decoders(
        run["model"],
        run["tokenizer"],
        [*run["decoders"], hot],
        run["dataset"],
        even_length,
        cache_dir=cache,
        **{**KWARGS, "seeds": (0,)},
    )
    assert len(calls) == 2 and all(c["policy"] is hot.policy for c in calls)
    assert [e["decoder"] for e in summary["results"]][-3:] == ["hot"] * 3


def test_a_changed_decoder_is_run_again(run, monkeypatch, tmp_path):
    cache = shutil.copytree(run["cache"], tmp_path / "cache")
    calls = []
    _spy(monkeypatch, calls)
    other = Decoder.from_spec("EDT=edt:1.5")  # same name, other settings
    evaluate_decoders(run["model"], run["tokenizer"], [other], run["dataset"], even_length, cache_dir=cache, **KWARGS)
    assert len(calls) == 2 * len(SEEDS)
    assert _unit(cache, "EDT", 0)["context"]["decoder"] == "EDT T0=1.5 N=0.8 theta=1"


def test_another_reward_function_is_not_served_from_the_cache(llama, tmp_path):
    tokenizer, dataset = make_char_tokenizer(), Dataset.from_dict({"prompt": PROMPTS})
    decoders = [Decoder.from_spec("greedy=static:greedy")]

    def always(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    def never(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    first = evaluate_decoders(llama, tokenizer, decoders, dataset, always, cache_dir=tmp_path, **KWARGS)
    assert first["results"][0]["mean"] == 1.0
    second = evaluate_decoders(llama, tokenizer, decoders, dataset, never, cache_dir=tmp_path, **KWARGS)
    assert second["results"][0]["mean"] == 0.0


def test_without_cache_and_recorded_tokens_are_subsampled(llama):
    tokenizer, dataset = make_char_tokenizer(), Dataset.from_dict({"prompt": PROMPTS})
    summary = evaluate_decoders(
        llama,
        tokenizer,
        [Decoder.from_spec("greedy=static:greedy")],
        dataset,
        even_length,
        max_recorded_tokens=2,
        **{**KWARGS, "seeds": (0,), "ks": (1,)},
    )
    assert len(summary["token_entropy"]["greedy"]["entropy"]) == 2
    assert math.isfinite(summary["results"][0]["ci95"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ks": (1, 8)}, r"ks must be in \[1, num_samples=4\], got \[1, 8\]"),
        ({"ks": ()}, r"ks must be in \[1, num_samples=4\]"),
        ({"ks": (0, 2)}, r"ks must be in \[1, num_samples=4\]"),
        ({"reference": "nope"}, "reference 'nope' is not one of the decoders"),
    ],
)
def test_bad_arguments(llama, monkeypatch, change, message):
    monkeypatch.setattr(runner, "generate_rollouts", None)  # nothing may be generated
    decoders = [Decoder.from_spec("greedy=static:greedy")]
    with pytest.raises(ValueError, match=message):
        evaluate_decoders(
            llama,
            make_char_tokenizer(),
            decoders,
            Dataset.from_dict({"prompt": PROMPTS}),
            even_length,
            **{
                **KWARGS,
                **change,
            },
        )


def test_decoders_must_be_given_with_distinct_names_and_the_dataset_not_empty(llama):
    tokenizer, dataset = make_char_tokenizer(), Dataset.from_dict({"prompt": PROMPTS})
    greedy = Decoder.from_spec("greedy=static:greedy")
    with pytest.raises(ValueError, match=r"distinct names; got \['greedy', 'greedy'\]"):
        evaluate_decoders(llama, tokenizer, [greedy, Decoder.static("greedy", "T=1")], dataset, even_length, **KWARGS)
    with pytest.raises(ValueError, match="at least one decoder"):
        evaluate_decoders(llama, tokenizer, [], dataset, even_length, **KWARGS)
    with pytest.raises(ValueError, match="evaluation dataset is empty"):
        evaluate_decoders(llama, tokenizer, [greedy], dataset.select([]), even_length, **KWARGS)


def test_a_static_decoder_and_an_adapter_that_always_picks_its_action_score_the_same(llama, tmp_path):
    """Every decoder draws the same random numbers per (seed, problem, sample, position): an adapter whose sampled
    action is always T=1 scores what `Decoder.static("T=1")` scores, sample by sample; another batch size changes
    nothing."""
    actions = [DecodingAction(do_sample=False), DecodingAction(temperature=1.0)]
    adapter = AutoDecodingAdapter.for_model(llama, AdaptiveDecodingConfig(actions=actions, level="token"))
    with torch.no_grad():
        adapter.output_layer.bias[1] = 100.0
    decoders = [Decoder.static("T=1", "T=1"), Decoder.adapter("pinned", adapter.eval(), deterministic=False)]
    dataset = Dataset.from_dict({"prompt": PROMPTS * 3})
    options = {**KWARGS, "token_budgets": (6,), "seeds": (0,)}

    def unit_rewards(cache, **overrides):
        evaluate_decoders(
            llama, make_char_tokenizer(), decoders, dataset, even_length, cache_dir=cache, **{**options, **overrides}
        )
        return [
            json.loads((cache / f"{name}-b6-s0.json").read_text())["outcome"]["rewards"] for name in ("T_1", "pinned")
        ]

    static, pinned = unit_rewards(tmp_path / "a")
    assert static == pinned
    assert len({tuple(row) for row in static}) > 1  # samples differ: it really samples
    assert unit_rewards(tmp_path / "b", rows_per_batch=4) == [static, pinned]
