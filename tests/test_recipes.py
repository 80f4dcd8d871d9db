import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(path.name for path in (ROOT / "recipes").glob("*.py") if not path.name.startswith("_"))


def _help_parser(recipe: str, monkeypatch) -> argparse.ArgumentParser:
    """Run `recipes/<recipe> --help` in this process and return the parser whose help it printed."""
    printed = []
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", lambda parser, file=None: printed.append(parser))
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "recipes" / recipe), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "recipes" / recipe), run_name="__main__")
    assert exit_info.value.code in (0, None) and len(printed) == 1, recipe
    return printed[0]


def test_recipes_are_all_found():
    assert {"train_tok.py", "train_seq.py", "train_draft.py", "evaluate.py", "generate.py"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_option_of_every_recipe_has_help(recipe, monkeypatch):
    parser = _help_parser(recipe, monkeypatch)
    options = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    assert len(options) >= 3, recipe
    missing = [action.option_strings[0] for action in options if not (action.help or "").strip()]
    assert not missing, f"{recipe} --help shows no help for {missing}"


@pytest.mark.parametrize(
    ("recipe", "old", "new"),
    [("train_tok.py", "beta", "entropy_coef"), ("train_draft.py", "rollouts", "num_generations")],
)
def test_a_config_with_a_renamed_field_is_refused_with_its_new_name(recipe, old, new, monkeypatch, tmp_path):
    config = tmp_path / "old.yaml"
    default = (ROOT / "recipes" / "configs" / recipe.replace(".py", ".yaml")).read_text()
    config.write_text(f"{default}\n{old}: 2\n")
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    monkeypatch.setattr(sys, "argv", [recipe, "--config", str(config), "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match=rf"\.{old} is now `{new}`.*set `{new}` instead"):
        runpy.run_path(str(ROOT / "recipes" / recipe), run_name="__main__")


@pytest.mark.slow
def test_generate_recipe_with_a_config_file(default_model, tmp_path):
    output = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        str(ROOT / "recipes" / "generate.py"),
        "--config",
        str(ROOT / "recipes/configs/generate.yaml"),
        "--max_prompts",
        "3",
        "--max_new_tokens",
        "6",
        "--num_return_sequences",
        "2",
        "--output_file",
        str(output),
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 6
    assert records[0]["prompt"] == records[1]["prompt"] != records[2]["prompt"]
    assert records[0]["action_names"] == ["greedy", "T=0.5", "T=1", "T=1.25"]
    assert all(len(r["actions"]) <= 6 for r in records)


def test_generate_recipe_rejects_an_empty_dataset(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    run = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "generate.py"), "--prompts_file", str(empty)],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert f"--prompts_file {str(empty)!r} is empty" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["train_tok.py", "train_seq.py"])
def test_training_recipes_run_with_overrides_of_their_default_config(default_model, tmp_path, recipe):
    output = tmp_path / "adapter"
    command = [sys.executable, str(ROOT / "recipes" / recipe), "--output_dir", str(output), "--max_steps", "1"]
    command += ["--per_device_train_batch_size", "2", "--num_generations", "2", "--max_completion_length", "8"]
    command += ["--token_budgets", "8", "--parallel_budgets", "1", "2", "--num_train_examples", "20"]
    command += ["--num_eval_examples", "2", "--num_comparison_examples", "3", "--disable_tqdm", "true"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Adapter and model card: {output}/" in run.stdout
    level = "token" if recipe == "train_tok.py" else "sequence"
    assert json.loads((output / "config.json").read_text())["decoding"]["level"] == level
    assert (output / "README.md").is_file() and (output / "metrics.jsonl").is_file()
    assert (output / "checkpoint-1" / "checkpoint_complete.json").is_file()
    # The last thing printed: the saved adapter against its static actions on 3 other validation problems.
    verdict = json.loads((output / "verdict.json").read_text())
    ks = [1] if level == "token" else [1, 2]
    assert verdict["num_problems"] == 3 and verdict["num_samples"] == max(ks) and verdict["level"] == level
    assert {(row["reference"], row["k"]) for row in verdict["comparisons"]} >= {("BEST", k) for k in ks}
    assert run.stdout.rstrip().endswith((output / "verdict.md").read_text().rstrip())
    assert "Did the adapter help? 3 problems not used to choose its checkpoint" in run.stdout
    assert (output / "README.md").read_text().rstrip().endswith((output / "verdict.md").read_text().rstrip())
    if recipe == "train_seq.py":  # a second run takes the static actions' outcomes from the first one's cache
        again = tmp_path / "again"
        reuse = [arg if arg != str(output) else str(again) for arg in command]
        reuse += ["--comparison_cache_from", str(output / "verdict_cache")]
        run = subprocess.run(reuse, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        static_units = [unit for unit in (output / "verdict_cache").glob("*.json") if "adapter" not in unit.name]
        assert static_units
        for unit in static_units:  # copied with its time stamp and not recomputed
            assert (again / "verdict_cache" / unit.name).stat().st_mtime == unit.stat().st_mtime
        assert json.loads((again / "verdict.json").read_text())["comparisons"] == verdict["comparisons"]


def test_a_missing_comparison_cache_is_refused_before_training(default_model, tmp_path):
    command = [sys.executable, str(ROOT / "recipes" / "train_seq.py"), "--output_dir", str(tmp_path / "run")]
    command += ["--comparison_cache_from", str(tmp_path / "nowhere"), "--disable_tqdm", "true"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert f"comparison_cache_from={str(tmp_path / 'nowhere')!r} is not a folder" in run.stderr
    assert "--comparison_cache_from ''" in run.stderr and not (tmp_path / "run").exists()


def test_the_default_configs_comparison_cache_is_found_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from _training import ScriptArguments, _comparison_cache_source

    monkeypatch.chdir(tmp_path)
    relative = "recipes/results/smollm2-135m-sequence-adapter/verdict_cache"
    assert _comparison_cache_source(ScriptArguments(comparison_cache_from=relative)) == ROOT / relative
    (tmp_path / "mine").mkdir()  # the current directory comes first
    assert _comparison_cache_source(ScriptArguments(comparison_cache_from="mine")) == Path("mine")


def test_training_recipes_keep_validation_prompts_out_of_training(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from _training import ScriptArguments, load_data

    for dataset, path in [("gsm8k", "tests/fixtures/gsm8k/test.jsonl"), ("math", "tests/fixtures/math")]:
        args = ScriptArguments(
            dataset=dataset, dataset_path=str(ROOT / path), num_eval_examples=2, num_train_examples=9
        )
        train, evaluation, comparison = load_data(args)
        assert len(evaluation) == 2 and len(train) >= 1 and comparison is None
        assert not {json.dumps(p) for p in train["prompt"]} & {json.dumps(p) for p in evaluation["prompt"]}
    train, evaluation, comparison = load_data(
        ScriptArguments(num_train_examples=50, num_eval_examples=10, num_comparison_examples=20)
    )
    assert (len(evaluation), len(comparison)) == (10, 20)
    assert not set(train["key"]) & set(evaluation["key"])
    assert not set(comparison["key"]) & (set(train["key"]) | set(evaluation["key"]))
    args = ScriptArguments(
        dataset="humaneval", num_train_examples=200, num_eval_examples=16, num_comparison_examples=4
    )
    train, evaluation, comparison = load_data(args)
    assert (len(train), len(evaluation), len(comparison)) == (144, 16, 4)
    assert not set(train["task_id"]) & (set(evaluation["task_id"]) | set(comparison["task_id"]))
    with pytest.raises(ValueError, match="num_comparison_examples must be >= 0 .* got -1"):
        load_data(ScriptArguments(num_comparison_examples=-1))
    folder = str(ROOT / "tests/fixtures/code_contests")
    args = ScriptArguments(
        dataset="code_contests", dataset_path=folder, eval_split="test", num_train_examples=3, num_eval_examples=3
    )
    train, evaluation, _ = load_data(args)
    assert train["name"] == ["1900_A. Sum of Two Numbers", "1901_B. Mirror Lines", "1902_A. Count the Vowels"]
    assert len(evaluation) == 3 and not set(train["name"]) & set(evaluation["name"])


@pytest.mark.slow
def test_humaneval_config_trains_a_sequence_adapter_end_to_end(default_model, tmp_path):
    """The code recipe: HumanEval prompts, completions executed in the sandbox, a saved adapter with its card."""
    output = tmp_path / "adapter"
    command = [sys.executable, str(ROOT / "recipes" / "train_seq.py")]
    command += ["--config", str(ROOT / "recipes/configs/train_seq_humaneval.yaml"), "--output_dir", str(output)]
    command += ["--max_steps", "1", "--per_device_train_batch_size", "2", "--num_generations", "2"]
    command += ["--parallel_budgets", "1", "--max_completion_length", "24", "--num_eval_examples", "2"]
    command += ["--per_device_eval_batch_size", "2", "--disable_tqdm", "true", "--sandbox_workers", "2"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((output / "config.json").read_text())["decoding"]["level"] == "sequence"
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/code_reward/mean" in record for record in records)
    assert "static" in json.loads((output / "eval_results.json").read_text())


@pytest.mark.slow
def test_reproduce_script_runs_every_step_resumes_and_ships_loadable_adapters(default_model, tmp_path):
    """recipes/reproduce.sh at smoke size in a copy of the recipes: validation, five trainings, the test and both
    generalisation checks, the shipped folders and summary.json; a second run skips every finished step; a step whose
    marker is gone runs again from its cache without generating (its results are unchanged)."""
    import shutil

    from hf_adaptive_decoding import AutoDecodingAdapter
    from hf_adaptive_decoding.adapters.shipped import shipped_adapters

    shutil.copytree(ROOT / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("results"))
    shutil.copytree(ROOT / "model_cards" / "templates", tmp_path / "model_cards" / "templates")
    env = {**os.environ, "REPRODUCE_SMOKE": "1", "PYTHON": sys.executable}
    script = ["bash", str(tmp_path / "recipes" / "reproduce.sh")]
    run = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "outputs" / "reproduce"
    steps = [line.split("\t")[0] for line in (out / "timings.tsv").read_text().splitlines()]
    assert steps == [
        "validation",
        "train-token_budget",
        "train-token_no_budget",
        "train-token_entropy",
        "train-sequence_budget",
        "train-sequence_no_budget",
        "test",
        "held-out-families",
        "token-budgets",
        "ship",
    ]
    baselines = json.loads((out / "validation" / "baselines.json").read_text())
    assert len(baselines["candidates"]) == 10 and baselines["split"] == "validation"
    results = json.loads((out / "test" / "results.json").read_text())
    assert {entry["decoder"] for entry in results["results"]} >= {"BEST", "BEST@k", "oracle", "seq w/ budget"}
    assert (out / "test" / "plots" / "accuracy_vs_budget.png").exists()
    kept = tmp_path / "recipes" / "results" / "reproduce"
    assert (kept / "test" / "results.md").exists() and (kept / "validation" / "baselines.json").exists()
    summary = json.loads((kept / "summary.json").read_text())
    assert summary["num_test_problems"] == 2 and not summary["baselines_in_sample"]
    adapters = {"seq w/o budget", "seq w/ budget", "token w/o budget", "token w/ budget", "token entropy-only"}
    assert {row["decoder"] for row in summary["comparisons"]} == adapters
    assert {row["reference"] for row in summary["comparisons"]} == {"BEST", "BEST@k", "family-best"}
    held_out = summary["generalisation"]["held_out_families"]
    assert {row["decoder"] for row in held_out["comparisons"]} == adapters
    budgets = summary["generalisation"]["token_budgets"]
    assert {row["token_budget"] for row in budgets["comparisons"]} == {8}
    assert {row["decoder"] for row in budgets["comparisons"]} == adapters - {"seq w/o budget", "seq w/ budget"}

    shipped = shipped_adapters(tmp_path / "model_cards")
    assert len(shipped) == 5
    for name, folder in shipped.items():
        adapter = AutoDecodingAdapter.from_pretrained(folder)
        adapter.check_compatible(default_model[0])
        card = (folder / "README.md").read_text()
        assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "| Pass@1 |" in card, name
    entropy = AutoDecodingAdapter.from_pretrained(shipped["smollm2-135m-arithmetic-token-entropy"])
    assert entropy.context_features == "entropy"

    again = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 10, again.stdout[-2000:]
    # As if the test step had been killed 7 s after it started: the rerun counts that attempt in the timings.
    (out / ".done-test").unlink()
    log_written = int((out / "logs" / "test.log").stat().st_mtime)
    (out / ".started-test").write_text(f"{log_written - 7}\n")
    before = (out / "test" / "results.json").read_text()
    rerun = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert (out / "test" / "results.json").read_text() == before
    timings = (out / "timings.tsv").read_text().splitlines()
    assert timings[-2] == "test (interrupted)\t7" and timings[-1].startswith("test\t"), timings
    assert not (out / ".started-test").exists()


@pytest.mark.slow
def test_train_draft_recipe_runs_with_overrides_of_its_default_config(default_model, tmp_path):
    from hf_adaptive_decoding import AutoDecodingAdapter, DraftAdapterModel
    from hf_adaptive_decoding.default_model import default_model_revision

    output = tmp_path / "draft"
    command = [sys.executable, str(ROOT / "recipes" / "train_draft.py"), "--output_dir", str(output)]
    command += ["--max_steps", "2", "--max_completion_length", "12", "--num_train_arithmetic", "2"]
    command += ["--num_train_code", "1"]
    command += ["--num_eval_arithmetic", "1", "--num_eval_code", "1", "--calibration_prompts", "1"]
    command += ["--calibration_tokens", "12", "--warm_start_steps", "2", "--per_device_train_batch_size", "2"]
    command += ["--disable_tqdm", "true"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Adapter: {output}/" in run.stdout and "best fixed draft length" in run.stdout
    adapter = AutoDecodingAdapter.from_pretrained(output)
    assert isinstance(adapter, DraftAdapterModel) and adapter.config.candidate_source == "prompt_lookup"
    assert adapter.config.base_model_revision == default_model_revision()
    assert json.loads((output / "cost_model.json").read_text())["source"] == "prompt_lookup"
    assert json.loads((output / "script_args.json").read_text())["num_train_code"] == 1


def _fake_draft_run(run: Path, source: str = "early_exit") -> None:
    """What recipes/train_draft.py leaves in its output_dir, on a tiny target."""
    from hf_adaptive_decoding import DraftAdapterModel
    from tests.conftest import make_tiny_model

    DraftAdapterModel.for_model(make_tiny_model("llama"), max_draft_tokens=3, candidate_source=source).save_pretrained(
        run
    )
    cost = {"source": source, "intercept": 0.1, "per_token": 0.01, "plain_step": 0.066}
    cost |= {
        "measurements": [[0, 0.066, 9], [1, 0.107, 4], [3, 0.13, 5]],
        "seconds_by_length": [0.066, 0.107, 0.12, 0.13],
    }
    (run / "cost_model.json").write_text(json.dumps(cost))
    evals = {"step": 4, "eval_speedup": 1.25, "eval_speedup_fixed/1": 0.9, "eval_speedup_fixed/2": 1.1}
    evals |= {"eval_speedup_fixed/3": 1.2, "eval_speedup_best_fixed": 1.2}
    (run / "eval_results.json").write_text(json.dumps(evals))
    (run / "checkpoint-4").mkdir()
    settings = {"max_steps": 4, "source": source, "early_exit_layer": 8, "max_draft_tokens": 3, "output_dir": "x"}
    (run / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"config": settings}))
    (run / "script_args.json").write_text(json.dumps({"num_train_code": 4, "resume_from_checkpoint": None}))
    (run / "traces" / "train-abc").mkdir(parents=True)
    for index in range(5):
        (run / "traces" / "train-abc" / f"{index}.pt").write_bytes(b"")


def _benchmark(source: str = "early_exit", learned: tuple[float, float, float] | None = (1.1, 1.05, 1.2)) -> dict:
    sides = {
        "plain": {"tokens_per_second": 14.0, "ratio": 1.0, "ratio_min": 1.0, "ratio_max": 1.0},
        "hf constant 4": {"tokens_per_second": 12.0, "ratio": 0.857, "ratio_min": 0.8, "ratio_max": 0.9},
    }
    figures = {"adapter": "x", "best_hf": "hf constant 4", "sides": sides}
    if learned:
        sides["learned"] = {"tokens_per_second": 13.2, "ratio": 0.943, "ratio_min": 0.9, "ratio_max": 0.97}
        figures["learned_vs_best_hf"] = dict(zip(("ratio", "ratio_min", "ratio_max"), learned, strict=True))
    settings = {"arithmetic": 2, "code": 2, "num_prompts": 4, "max_new_tokens": 96, "rounds": 2, "torch": "2.13.0"}
    settings |= {"threads": 2, "early_exit_layer": 8, "draft_layers": 8}
    return {"settings": settings, "sources": {source: figures}}


def test_ship_draft_adapter_writes_a_hub_folder_with_a_card_of_measured_figures(tmp_path):
    run = tmp_path / "run"
    _fake_draft_run(run)
    (tmp_path / "bench.json").write_text(json.dumps(_benchmark()))
    command = [sys.executable, str(ROOT / "recipes" / "ship_draft_adapter.py"), "--run_dir", str(run)]
    command += ["--name", "tiny-draft", "--benchmark", str(tmp_path / "bench.json")]
    command += ["--model_cards_dir", str(tmp_path / "cards")]
    shipped = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    folder = tmp_path / "cards" / "tiny-draft"
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "cost_model.json", "README.md"}
    assert json.loads((folder / "validation_results.json").read_text())["eval_speedup"] == 1.25
    card = (folder / "README.md").read_text()
    assert "early exit of the target itself at layer 8 (`assistant_early_exit=8`)" in card
    assert "| ms per cycle | 66 | 107 | 120 | 130 |" in card and "| cycles timed | 9 | 4 | 0 | 5 |" in card
    assert "| this adapter (most likely decisions) | **1.250** |" in card and "| always draft 3 | 1.200 |" in card
    assert "| this adapter | 13.2 | 0.943 (0.900–0.970) |" in card
    assert "(transformers constant 4), the adapter's tokens/s ratio is 1.100 (1.050–1.200 over rounds): faster" in card
    assert "There are 4 steps, on 5 prompts" in card and "tags:" in card and "draft-adapter" in card
    assert "recipes/train_draft.py --max_steps 4 --source early_exit --early_exit_layer 8 --max_draft_tokens 3" in card
    assert "--num_train_code 4 --output_dir" in card
    assert "A cycle that drafts nothing is priced" not in card

    cost = json.loads((run / "cost_model.json").read_text())
    cost["seconds_by_length"][0] = 0.06  # below the plain step: the card must say why the replay overstates
    (run / "cost_model.json").write_text(json.dumps(cost))
    command[command.index("tiny-draft")] = "tiny-draft-2"
    assert subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0
    card = (tmp_path / "cards" / "tiny-draft-2" / "README.md").read_text()
    assert "A cycle that drafts nothing is priced at 60 ms, below the plain step's 66 ms" in card

    from hf_adaptive_decoding import AutoDecodingAdapter, DraftAdapterModel

    assert isinstance(AutoDecodingAdapter.from_pretrained(folder), DraftAdapterModel)


@pytest.mark.parametrize(
    ("bench", "message"),
    [
        (_benchmark("prompt_lookup"), "measured ['prompt_lookup'], not this adapter's source 'early_exit'"),
        (_benchmark(learned=None), "no learned side for early_exit"),
    ],
)
def test_ship_draft_adapter_refuses_a_benchmark_that_does_not_describe_the_adapter(tmp_path, bench, message):
    run = tmp_path / "run"
    _fake_draft_run(run)
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    command = [sys.executable, str(ROOT / "recipes" / "ship_draft_adapter.py"), "--run_dir", str(run)]
    command += ["--name", "tiny-draft", "--benchmark", str(tmp_path / "bench.json")]
    command += ["--model_cards_dir", str(tmp_path / "cards")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and message in refused.stderr
    assert not (tmp_path / "cards").exists()  # nothing half-shipped


@pytest.mark.slow
def test_evaluate_recipe_chooses_baselines_on_validation_and_compares_an_adapter_on_test(default_model, tmp_path):
    common = [sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--token_budgets", "6", "--ks", "1", "2"]
    common += ["--num_samples", "2", "--seeds", "0", "--disable_tqdm", "true", "--cache_dir", str(tmp_path / "c")]
    common += ["--families", "addition", "percent", "--levels", "1", "--num_train_examples", "8"]
    baselines = tmp_path / "baselines.json"
    candidates = ["greedy=static:greedy", "T1=static:T=1"]
    choose = common + ["--split", "validation", "--num_test_examples", "4", "--output_dir", str(tmp_path / "val")]
    choose += ["--decoders", *candidates, "--candidates", *candidates, "--write_baselines", str(baselines)]
    run = subprocess.run(choose, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    chosen = json.loads(baselines.read_text())
    assert chosen["candidates"] == ["greedy", "T1"] and chosen["candidate_specs"] == candidates
    assert set(chosen["token_budgets"]["6"]["family-best"]) == {"addition", "percent"}

    adapter = ROOT / "model_cards" / "smollm2-135m-arithmetic-token-budget"
    compare = common + ["--split", "test", "--num_test_examples", "4", "--output_dir", str(tmp_path / "test")]
    compare += ["--decoders", f"ours=adapter:{adapter}", "--baselines", str(baselines), "--reference", "BEST"]
    run = subprocess.run(compare, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "test" / "summary.json").read_text())
    assert summary["num_test_problems"] == 4
    assert {(row["reference"], row["k"]) for row in summary["comparisons"]} == {
        (reference, k) for reference in ("BEST", "BEST@k", "family-best") for k in (1, 2)
    }
    assert all(row["decoder"] == "ours" and row["level"] == "token" for row in summary["comparisons"])
    results = json.loads((tmp_path / "test" / "results.json").read_text())
    assert {"ours", "greedy", "T1", "BEST", "BEST@k", "family-best", "oracle"} == set(results["decoders"])
    assert results["settings"]["reference"] == "BEST"
    assert "Pass@1 by task family" in (tmp_path / "test" / "results.md").read_text()


def _evaluate_recipe(monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    spec = importlib.util.spec_from_file_location("evaluate_recipe", ROOT / "recipes" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_recipe_refuses_a_candidate_name_given_to_another_decoder(monkeypatch, tmp_path):
    recipe = _evaluate_recipe(monkeypatch)
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"candidate_specs": ["T1=static:T=1"]}))
    args = recipe.EvaluationArguments(decoders=["T1=static:T=0.3"], baselines=str(baselines))
    with pytest.raises(ValueError, match="'T1' is 'static T=0.3' in --decoders but the candidate of that name"):
        recipe._decoders(args)
    args = recipe.EvaluationArguments(decoders=["BEST=static:greedy"], baselines=str(baselines))
    with pytest.raises(ValueError, match=r"\['BEST'\] clash with the baselines"):
        recipe._decoders(args)
    args = recipe.EvaluationArguments(decoders=["greedy=static:greedy"], reference="nope")
    with pytest.raises(ValueError, match="--reference 'nope' is not one of the decoders"):
        recipe._decoders(args)
    args = recipe.EvaluationArguments(decoders=["greedy=static:greedy"], baselines=str(baselines), reference="BEST@k")
    decoders, candidates, _ = recipe._decoders(args)
    assert [d.name for d in decoders] == ["greedy", "T1"] and candidates == ["T1"]
