"""Step 4 of recipes/reproduce.sh: lay the reproduction's adapters out as Hub repos in model_cards/<name>/ (config,
weights, model card with the test results, training plots) and keep its results in recipes/results/reproduce/.

    python recipes/ship_adapters.py --reproduction_dir outputs/reproduce --model_cards_dir model_cards

Each folder is then published with `AutoDecodingAdapter.from_pretrained(folder).push_to_hub(repo)` plus
`huggingface_hub.upload_folder` (or `huggingface-cli upload <repo> <folder>`): it is already laid out as the repo.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from transformers import HfArgumentParser

from hf_adaptive_decoding import DecodingAction
from hf_adaptive_decoding.evaluation.report import plot_evaluation, results_table

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "templates" / "shipped_adapter.md"
# run folder -> (short name, decoder name in the evaluation, one-line summary)
RUNS = {
    "token-budget": (
        "smollm2-135m-arithmetic-token-budget",
        "token w/ budget",
        "It picks a temperature at every generated token from the model's last hidden state and the remaining token "
        "budget.",
    ),
    "token-no-budget": (
        "smollm2-135m-arithmetic-token",
        "token w/o budget",
        "It picks a temperature at every generated token from the model's last hidden state (budget-agnostic).",
    ),
    "token-entropy": (
        "smollm2-135m-arithmetic-token-entropy",
        "token entropy-only",
        "The entropy-only ablation of the paper's Section 4: it picks a temperature at every token from the "
        "next-token entropy and the remaining token budget, without the hidden state.",
    ),
    "sequence-budget": (
        "smollm2-135m-arithmetic-seq-budget",
        "seq w/ budget",
        "It picks one sampling strategy per prompt from the prompt's hidden state and the parallel budget B.",
    ),
    "sequence-no-budget": (
        "smollm2-135m-arithmetic-seq",
        "seq w/o budget",
        "It picks one sampling strategy per prompt from the prompt's hidden state (budget-agnostic).",
    ),
}
ADAPTER_FILES = ("config.json", "model.safetensors")


@dataclass
class ShipArguments:
    reproduction_dir: str = field(default="outputs/reproduce", metadata={"help": "Output of recipes/reproduce.sh."})
    model_cards_dir: str = field(default="model_cards", metadata={"help": "Where the adapter folders go."})
    results_dir: str = field(default="recipes/results/reproduce", metadata={"help": "Where results are kept."})


def _hours(timings: Path) -> str:
    if not timings.exists():
        return "an unrecorded time"
    seconds = sum(int(line.split("\t")[1]) for line in timings.read_text().splitlines() if "\t" in line)
    return f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds / 60:.0f} minutes"


def _verdict(summary: dict, column: str, budget: int) -> str:
    notes = []
    for k in summary["settings"]["ks"]:
        entry = next(e for e in summary["results"] if (e["decoder"], e["token_budget"], e["k"]) == (column, budget, k))
        low, high = 100 * (entry["delta"] - entry["delta_ci95"]), 100 * (entry["delta"] + entry["delta_ci95"])
        significant = "excludes 0" if low > 0 or high < 0 else "includes 0: no significant difference"
        delta = f"{100 * entry['delta']:+.1f} points, 95% interval [{low:+.1f}, {high:+.1f}]"
        notes.append(f"Pass@{k}: {delta} ({significant})")
    return "Against BEST at token budget " + str(budget) + ": " + "; ".join(notes) + "."


def ship_run(run_dir: Path, target: Path, name: str, column: str, summary_line: str, results: dict) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for filename in ADAPTER_FILES:
        shutil.copy2(run_dir / filename, target / filename)
    if (run_dir / "eval_results.json").exists():
        shutil.copy2(run_dir / "eval_results.json", target / "validation_results.json")
    if (run_dir / "plots").is_dir():
        shutil.copytree(run_dir / "plots", target / "plots", dirs_exist_ok=True)
    config = json.loads((run_dir / "config.json").read_text())
    decoding = config["decoding"]
    level, budget_feature = decoding["level"], decoding.get("budget_feature")
    actions = [DecodingAction.from_dict(action) for action in decoding["actions"]]
    state = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    settings = json.loads(state[-1].read_text())["config"] if state else {}
    main, sweep = results["main"], results.get("sweep")
    main_budget = max(main["settings"]["token_budgets"])
    if level == "token":
        columns = ["BEST", "greedy", "MIXED-token", column]
        decides = "an action at every generated token (the paper's POMDP)"
        budget = f"remaining tokens b_t ({budget_feature} encoding)" if budget_feature else "none (budget-agnostic)"
    else:
        columns = ["BEST", "MIXED-seq", column]
        decides = "one action per prompt, shared by its parallel samples (the paper's contextual bandit)"
        budget = f"parallel budget B ({budget_feature} encoding)" if budget_feature else "none (budget-agnostic)"
    columns = list(dict.fromkeys(c for c in columns if c in main["decoders"]))
    tables = [f"Token budget {main_budget}, {len(main['settings']['seeds'])} seeds:\n\n{results_table(main, columns)}"]
    if level == "token" and sweep is not None and column in sweep["decoders"]:
        for sweep_budget in sorted(sweep["settings"]["token_budgets"])[:-1]:
            sweep_columns = [c for c in columns if c in sweep["decoders"]]
            table = results_table(sweep, sweep_columns, token_budget=sweep_budget)
            seeds = ", ".join(str(seed) for seed in sweep["settings"]["seeds"])
            tables.append(f"Token budget {sweep_budget}, seed {seeds}:\n\n{table}")
    context = {
        "entropy": "the next-token entropy (one number)",
        "hidden_state+stats": "the final hidden state, the next-token entropy and max probability at each step",
    }.get(
        decoding.get("context_features"),
        "the final hidden state at each step" if level == "token" else "the prompt's last hidden state",
    )
    text = TEMPLATE.read_text().format(
        name=name,
        level=level,
        base_model=config.get("base_model_name_or_path"),
        base_revision=config.get("base_model_revision"),
        summary=summary_line,
        generate_extra=", sampling_budget=1" if level == "sequence" else "",
        decides=decides,
        context=context,
        budget=budget,
        actions="\n".join(f"| {i} | `{a.name}` | {a.to_dict()} |" for i, a in enumerate(actions)),
        steps=settings.get("max_steps", "?"),
        settings=json.dumps(settings, indent=2),
        best=results["best"],
        result_note=f"{main['settings']['num_samples']} samples per problem; greedy counts one sample for all.",
        results="\n\n".join(tables),
        honest_note=_verdict(main, column, main_budget),
        hours=results["hours"],
        config_file=run_dir.name.replace("-", "_") + ".yaml",
        num_test=main["settings"]["num_problems"],
    )
    card_data = ModelCardData(
        base_model=config.get("base_model_name_or_path"),
        base_model_relation="adapter",
        library_name="hf-adaptive-decoding",
        license="apache-2.0",
        tags=["hf-adaptive-decoding", "decoding-adapter", f"{level}-level", "reinforce", "arithmetic"],
    )
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{text}").save(target / "README.md")


def keep_results(reproduction: Path, results_dir: Path) -> None:
    """The figures the README and cards cite, small enough to commit."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for folder in ("evaluation", "evaluation_token_budgets"):
        source = reproduction / folder
        for filename in ("results.json", "results.md"):
            if (source / filename).exists():
                (results_dir / folder).mkdir(exist_ok=True)
                shutil.copy2(source / filename, results_dir / folder / filename)
        if (source / "details.json").exists():  # redrawn, so the kept plots follow the current report code
            summary = {
                **json.loads((source / "results.json").read_text()),
                **json.loads((source / "details.json").read_text()),
            }
            plot_evaluation(summary, results_dir / folder / "plots")
        elif (source / "plots").is_dir():
            shutil.copytree(source / "plots", results_dir / folder / "plots", dirs_exist_ok=True)
    selection = reproduction / "action_selection"
    (results_dir / "action_selection").mkdir(exist_ok=True)
    for path in [*selection.glob("*.json"), *selection.glob("*.png")]:
        shutil.copy2(path, results_dir / "action_selection" / path.name)
    if (reproduction / "timings.tsv").exists():
        shutil.copy2(reproduction / "timings.tsv", results_dir / "timings.tsv")


def main() -> None:
    (args,) = HfArgumentParser(ShipArguments).parse_args_into_dataclasses()
    reproduction = Path(args.reproduction_dir)
    main_results = reproduction / "evaluation" / "results.json"
    if not main_results.exists():
        raise FileNotFoundError(f"{main_results} does not exist: run the evaluation step of reproduce.sh first.")
    sweep = reproduction / "evaluation_token_budgets" / "results.json"
    results = {
        "main": json.loads(main_results.read_text()),
        "sweep": json.loads(sweep.read_text()) if sweep.exists() else None,
        "best": json.loads((reproduction / "action_selection" / "selection.json").read_text())["best"]["name"],
        "hours": _hours(reproduction / "timings.tsv"),
    }
    for run, (name, column, summary_line) in RUNS.items():
        run_dir = reproduction / "adapters" / run
        if not (run_dir / "model.safetensors").exists():
            raise FileNotFoundError(f"{run_dir} holds no trained adapter: run the training steps of reproduce.sh.")
        ship_run(run_dir, Path(args.model_cards_dir) / name, name, column, summary_line, results)
        print(f"Shipped {run_dir} -> {Path(args.model_cards_dir) / name}")
    keep_results(reproduction, Path(args.results_dir))
    print(f"Results kept in {args.results_dir}/")


if __name__ == "__main__":
    main()
