import json

import pytest
import torch

from hf_adaptive_decoding import AutoDecodingAdapter, DraftAdapterModel
from hf_adaptive_decoding.speculative.simulation import CycleCostModel, simulate_drafting
from hf_adaptive_decoding.speculative.trainer import DraftTrainer, DraftTrainerConfig
from tests.conftest import make_tiny_model


@pytest.fixture
def target():
    model = make_tiny_model("llama")
    model.generation_config.top_k = None
    model.generation_config.eos_token_id = None
    return model


def _prompts(count: int, seed: int = 0):
    """Prompts that stop in the middle of a repeat, so that prompt lookup finds something to propose."""
    generator = torch.Generator().manual_seed(seed)
    bodies = [torch.randint(3, 128, (1, 5), generator=generator) for _ in range(count)]
    return [torch.cat([body, body, body[:, :2]], dim=1) for body in bodies]


def _config(tmp_path, **overrides):
    values = {
        "output_dir": str(tmp_path / "run"),
        "source": "early_exit",
        "early_exit_layer": 1,
        "max_draft_tokens": 4,
        "max_completion_length": 16,
        "max_steps": 6,
        "per_device_train_batch_size": 3,
        "num_generations": 4,
        "eval_steps": 3,
        "save_steps": 3,
        "calibration_prompts": 2,
        "calibration_tokens": 16,
        "learning_rate": 0.05,
        "warm_start_steps": 3,
        "disable_tqdm": True,
    }
    return DraftTrainerConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    ("source", "credit", "load_best"), [("early_exit", "cycle", True), ("prompt_lookup", "episode", False)]
)
def test_training_writes_a_loadable_adapter_its_cost_model_metrics_and_plots(
    target, tmp_path, source, credit, load_best
):
    args = _config(tmp_path, source=source, credit=credit, load_best_model_at_end=load_best)
    before = DraftAdapterModel.for_model(target, max_draft_tokens=4)
    trainer = DraftTrainer(target, args, _prompts(6), _prompts(2, seed=1))
    final = trainer.train()
    run = tmp_path / "run"
    adapter = AutoDecodingAdapter.from_pretrained(run)
    assert isinstance(adapter, DraftAdapterModel) and adapter.max_draft_tokens == 4
    assert not torch.equal(adapter.output_layer.bias, before.output_layer.bias)  # it learned something
    cost = json.loads((run / "cost_model.json").read_text())
    assert cost["source"] == source and cost["plain_step"] > 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "speedup" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval_speedup" in r] == [0, 3, 6]
    assert [r["step"] for r in records if "warm_start_length" in r] == [0]
    assert {"eval_speedup", "eval_speedup_best_fixed", "eval_speedup_fixed/4"} <= set(final)
    evals = [r for r in records if "eval_speedup" in r]
    saved = json.loads((run / "eval_results.json").read_text())
    if load_best:  # the best evaluation's adapter, its results, and no leftover copies
        assert saved["eval_speedup"] == max(r["eval_speedup"] for r in evals) and saved["step"] == saved["best_step"]
        replay = simulate_drafting(adapter, trainer.eval_traces, trainer.cost_model, deterministic=True)
        assert float(replay.speedup.mean()) == pytest.approx(saved["eval_speedup"], rel=1e-5)
        assert (run / f"best-{saved['best_step']}" / "model.safetensors").exists()
    else:
        assert saved["step"] == 6 and "best_step" not in saved
    assert (run / "plots" / "speedup.png").exists() and (run / "plots" / "draft_length.png").exists()
    # The adapter drives live generation and leaves greedy output unchanged.
    inputs = _prompts(1, seed=2)[0]
    extra = {"assistant_early_exit": 1} if source == "early_exit" else {"prompt_lookup_num_tokens": 4}
    plain = target.generate(input_ids=inputs, do_sample=False, max_new_tokens=12)
    assert torch.equal(
        target.generate(input_ids=inputs, do_sample=False, max_new_tokens=12, decoding_adapter=adapter, **extra), plain
    )


@pytest.mark.parametrize("source", ["early_exit", "prompt_lookup"])
def test_the_warm_start_imitates_the_best_fixed_draft_length(target, tmp_path, source):
    trainer = DraftTrainer(
        target, _config(tmp_path, source=source, warm_start_steps=60), _prompts(6), _prompts(2, seed=1)
    )
    trainer.train_traces = trainer._traces(trainer.train_prompts, "train")
    # A fixed cost model (not this machine's timings) in which drafting 2 tokens is cheapest per token.
    cost = CycleCostModel(source, 0.02, 0.01, 0.015, seconds_by_length=[0.015, 0.03, 0.031, 0.05, 0.06])
    cost.to_json_file(tmp_path / "run" / "cost_model.json")
    trainer.cost_model = trainer._cost_model()
    fixed = trainer._fixed_length_speedups(trainer.train_traces)
    warm = trainer._warm_start()
    assert warm["warm_start_length"] == max(fixed, key=fixed.get)
    assert warm["warm_start_train_speedup"] == max(fixed.values()) and warm["warm_start_agreement"] > 0.95
    # Its most likely decisions are that fixed length's: the same replayed speed-up.
    replay = simulate_drafting(trainer.unwrapped_adapter.eval(), trainer.train_traces, trainer.cost_model, 1, True)
    assert float(replay.speedup.mean()) == pytest.approx(warm["warm_start_train_speedup"], rel=1e-5)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(target, tmp_path):
    straight = DraftTrainer(target, _config(tmp_path / "a"), _prompts(6), _prompts(2, seed=1))
    straight.train()
    # The cost model is timed on the machine: both runs must price cycles alike, so the second reuses the first's.
    (tmp_path / "b" / "run").mkdir(parents=True)
    (tmp_path / "b" / "run" / "cost_model.json").write_text((tmp_path / "a" / "run" / "cost_model.json").read_text())
    first = DraftTrainer(target, _config(tmp_path / "b", max_steps=3), _prompts(6), _prompts(2, seed=1))
    first.train()
    second = DraftTrainer(target, _config(tmp_path / "b"), _prompts(6), _prompts(2, seed=1))
    second.train(resume_from_checkpoint=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [
        json.loads(line)["step"] for line in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    a = AutoDecodingAdapter.from_pretrained(tmp_path / "a" / "run")
    b = AutoDecodingAdapter.from_pretrained(tmp_path / "b" / "run")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"source": "beam"},
            r"source must be one of \('assistant_model', 'early_exit', 'prompt_lookup'\), got 'beam'",
        ),
        ({"early_exit_layer": None}, "needs early_exit_layer"),
        ({"num_generations": 1}, "num_generations must be an int >= 2"),
        ({"max_steps": 0}, "max_steps must be an int >= 1, got 0"),
        ({"report_to": ["nope"]}, r"report_to has \['nope'\]"),
        ({"credit": "token"}, "credit must be 'cycle' or 'episode', got 'token'"),
        ({"warm_start_steps": -1}, "warm_start_steps must be an int >= 0, got -1"),
        ({"warm_start_smoothing": 0.5}, r"warm_start_smoothing must be in \[0, 0.5\), got 0.5"),
    ],
)
def test_invalid_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_a_run_folder_is_not_overwritten_by_accident(target, tmp_path):
    DraftTrainer(target, _config(tmp_path, max_steps=3), _prompts(4), _prompts(1, seed=1)).train()
    with pytest.raises(ValueError, match="already holds a training run"):
        DraftTrainer(target, _config(tmp_path, max_steps=3), _prompts(4), _prompts(1, seed=1)).train()
    again = DraftTrainer(
        target, _config(tmp_path, max_steps=3, overwrite_output_dir=True), _prompts(4), _prompts(1, 1)
    )
    again.train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 0, 1, 2, 3, 3]  # one run's worth (warm start, evals, steps): the first run's are gone
    with pytest.raises(ValueError, match="at least one training and one validation prompt"):
        DraftTrainer(target, _config(tmp_path), [], _prompts(1))
