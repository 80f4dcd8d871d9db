import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    command += ["--per_device_train_batch_size", "2", "--num_generations", "2", "--max_new_tokens", "8"]
    command += ["--token_budgets", "8", "--parallel_budgets", "1", "2", "--num_train_examples", "20"]
    command += ["--num_eval_examples", "2", "--disable_tqdm", "true"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Adapter and model card: {output}/" in run.stdout
    level = "token" if recipe == "train_tok.py" else "sequence"
    assert json.loads((output / "config.json").read_text())["decoding"]["level"] == level
    assert (output / "README.md").is_file() and (output / "metrics.jsonl").is_file()
    assert (output / "checkpoint-1" / "checkpoint_complete.json").is_file()


def test_training_recipes_keep_validation_prompts_out_of_training(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    from _training import ScriptArguments, load_data

    for dataset, path in [("gsm8k", "tests/data/gsm8k/test.jsonl"), ("math", "tests/data/math")]:
        args = ScriptArguments(
            dataset=dataset, dataset_path=str(ROOT / path), num_eval_examples=2, num_train_examples=9
        )
        train, evaluation = load_data(args)
        assert len(evaluation) == 2 and len(train) >= 1
        assert not set(train["prompt"]) & set(evaluation["prompt"])
    train, evaluation = load_data(ScriptArguments(num_train_examples=50, num_eval_examples=10))
    assert not set(train["key"]) & set(evaluation["key"])
    train, evaluation = load_data(ScriptArguments(dataset="humaneval", num_train_examples=200, num_eval_examples=16))
    assert (len(train), len(evaluation)) == (148, 16)
    assert not set(train["task_id"]) & set(evaluation["task_id"])
    folder = str(ROOT / "tests/data/code_contests")
    args = ScriptArguments(
        dataset="code_contests", dataset_path=folder, eval_split="test", num_train_examples=3, num_eval_examples=3
    )
    train, evaluation = load_data(args)
    assert train["name"] == ["1900_A. Sum of Two Numbers", "1901_B. Mirror Lines", "1902_A. Count the Vowels"]
    assert len(evaluation) == 3 and not set(train["name"]) & set(evaluation["name"])


@pytest.mark.slow
def test_humaneval_config_trains_a_sequence_adapter_end_to_end(default_model, tmp_path):
    """The code recipe: HumanEval prompts, completions executed in the sandbox, a saved adapter with its card."""
    output = tmp_path / "adapter"
    command = [sys.executable, str(ROOT / "recipes" / "train_seq.py")]
    command += ["--config", str(ROOT / "recipes/configs/train_seq_humaneval.yaml"), "--output_dir", str(output)]
    command += ["--max_steps", "1", "--per_device_train_batch_size", "2", "--num_generations", "2"]
    command += ["--parallel_budgets", "1", "--max_new_tokens", "24", "--num_eval_examples", "2"]
    command += ["--per_device_eval_batch_size", "2", "--disable_tqdm", "true", "--sandbox_workers", "2"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((output / "config.json").read_text())["decoding"]["level"] == "sequence"
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/code_reward/mean" in record for record in records)
    assert "static" in json.loads((output / "eval_results.json").read_text())


@pytest.mark.slow
def test_reproduce_script_runs_every_step_resumes_and_ships_loadable_adapters(default_model, tmp_path):
    """recipes/reproduce.sh at smoke size in a copy of the recipes: selection, five trainings, both evaluations and
    the shipped folders; a second run skips every finished step; a step whose marker is gone runs again from its
    cache without generating (its results are unchanged)."""
    import shutil

    from hf_adaptive_decoding import AutoDecodingAdapter
    from hf_adaptive_decoding.shipped import shipped_adapters

    shutil.copytree(ROOT / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("results"))
    shutil.copytree(ROOT / "model_cards" / "templates", tmp_path / "model_cards" / "templates")
    env = {**os.environ, "REPRODUCE_SMOKE": "1", "PYTHON": sys.executable}
    script = ["bash", str(tmp_path / "recipes" / "reproduce.sh")]
    run = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "outputs" / "reproduce"
    steps = [line.split("\t")[0] for line in (out / "timings.tsv").read_text().splitlines()]
    assert steps == [
        "select-actions",
        "train-token_budget",
        "train-token_no_budget",
        "train-token_entropy",
        "train-sequence_budget",
        "train-sequence_no_budget",
        "evaluate",
        "evaluate-token-budgets",
        "ship",
    ]
    selection = json.loads((out / "action_selection" / "selection.json").read_text())
    assert len(selection["candidates"]) == 181 and len(selection["sequence"]["selected"]) == 6
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert {entry["decoder"] for entry in results["results"]} >= {"BEST", "seq w/ budget", "token w/ budget"}
    assert (out / "evaluation" / "plots" / "accuracy_vs_budget.png").exists()
    assert (tmp_path / "recipes" / "results" / "reproduce" / "evaluation" / "results.md").exists()

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
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 9, again.stdout[-2000:]
    # As if the evaluation step had been killed 7 s after it started: the rerun counts that attempt in the timings.
    (out / ".done-evaluate").unlink()
    log_written = int((out / "logs" / "evaluate.log").stat().st_mtime)
    (out / ".started-evaluate").write_text(f"{log_written - 7}\n")
    before = (out / "evaluation" / "results.json").read_text()
    rerun = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert (out / "evaluation" / "results.json").read_text() == before
    timings = (out / "timings.tsv").read_text().splitlines()
    assert timings[-2] == "evaluate (interrupted)\t7" and timings[-1].startswith("evaluate\t"), timings
    assert not (out / ".started-evaluate").exists()
