"""Step 5 of recipes/reproduce.sh: lay the reproduction's adapters out as Hub repos in model_cards/<name>/ (config,
weights, model card with the test results, training plots) and keep its results in recipes/results/reproduce/
(summary.json: the test comparisons, with the generalisation checks beside them).

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
from hf_adaptive_decoding.evaluation.comparison import BEST, BEST_AT_K, FAMILY_BEST, ORACLE, comparisons
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
# The reproduction's evaluations: folder -> the key of its summary in recipes/results/reproduce/summary.json
EVALUATIONS = {"test": None, "held_out_families": "held_out_families", "token_budgets": "token_budgets"}
EVALUATION_DESCRIPTIONS = {
    "test": "on the test problems of the suite",
    "held_out_families": "on task families never trained or selected on",
    "token_budgets": "outside the training range of token budgets",
}
BASELINE_COLUMNS = [BEST, BEST_AT_K, FAMILY_BEST, ORACLE]


@dataclass
class ShipArguments:
    reproduction_dir: str = field(default="outputs/reproduce", metadata={"help": "Output of recipes/reproduce.sh."})
    adapters_dir: str = field(
        default="recipes/results/reproduce/adapters", metadata={"help": "Where the reproduction trained its adapters."}
    )
    model_cards_dir: str = field(default="model_cards", metadata={"help": "Where the adapter folders go."})
    results_dir: str = field(default="recipes/results/reproduce", metadata={"help": "Where results are kept."})


def _hours(timings: Path) -> str:
    if not timings.exists():
        return "an unrecorded time"
    seconds = sum(int(line.split("\t")[1]) for line in timings.read_text().splitlines() if "\t" in line)
    return f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds / 60:.0f} minutes"


def _verdict(summary: dict, column: str, budget: int, where: str) -> str:
    """The adapter against BEST and BEST@k in words, with the paired intervals, at every k."""
    lines = []
    for reference in (BEST, BEST_AT_K):
        rows = [row for row in comparisons(summary, [column], [reference]) if row["token_budget"] == budget]
        if not rows:
            continue
        notes = []
        for row in rows:
            low, high = row["ci95"]
            if low is None:  # one problem: no interval
                notes.append(f"Pass@{row['k']} {row['delta']:+.1f} points (one problem, no interval)")
                continue
            resolved = "excludes 0" if low > 0 or high < 0 else "includes 0: no resolved difference"
            notes.append(
                f"Pass@{row['k']} {row['delta']:+.1f} points, 95% interval [{low:+.1f}, {high:+.1f}] ({resolved})"
            )
        lines.append(f"- Against {reference} {where}, token budget {budget}: " + "; ".join(notes) + ".")
    return "\n".join(lines)


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
    test = results["test"]
    if level == "token":
        columns = [*BASELINE_COLUMNS, "greedy", column]
        decides = "an action at every generated token (the paper's POMDP)"
        budget = f"remaining tokens b_t ({budget_feature} encoding)" if budget_feature else "none (budget-agnostic)"
    else:
        columns = [*BASELINE_COLUMNS, column]
        decides = "one action per prompt, shared by its parallel samples (the paper's contextual bandit)"
        budget = f"parallel budget B ({budget_feature} encoding)" if budget_feature else "none (budget-agnostic)"
    tables, verdicts = [], []
    for folder, summary in results["evaluations"].items():
        if column not in summary["decoders"]:
            continue
        shown = [name for name in dict.fromkeys(columns) if name in summary["decoders"]]
        description = EVALUATION_DESCRIPTIONS[folder]
        for token_budget in sorted(summary["settings"]["token_budgets"]):
            title = f"{description.capitalize()} ({summary['settings']['num_problems']} problems), token budget"
            tables.append(f"{title} {token_budget}:\n\n{results_table(summary, shown, token_budget=token_budget)}")
            verdicts.append(_verdict(summary, column, token_budget, description))
    context = {
        "entropy": "the next-token entropy (one number)",
        "hidden_state+stats": "the final hidden state, the next-token entropy and max probability at each step",
    }.get(
        decoding.get("context_features"),
        "the final hidden state at each step"
        if level == "token"
        else f"the prompt's final hidden state ({decoding.get('prompt_pooling', 'last')} pooling over its tokens)",
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
        num_validation=results["baselines"]["num_problems"],
        validation_samples=results["baselines"]["num_samples"],
        num_candidates=len(results["baselines"]["candidates"]),
        ks=", ".join(str(k) for k in results["baselines"]["ks"]),
        result_note=f"{test['settings']['num_samples']} samples per problem; greedy counts one sample for all.",
        results="\n\n".join(tables),
        honest_note="\n".join(verdicts),
        hours=results["hours"],
        config_file=run_dir.name.replace("-", "_") + ".yaml",
        num_test=test["settings"]["num_problems"],
    )
    card_data = ModelCardData(
        base_model=config.get("base_model_name_or_path"),
        base_model_relation="adapter",
        library_name="hf-adaptive-decoding",
        license="apache-2.0",
        tags=["hf-adaptive-decoding", "decoding-adapter", f"{level}-level", "reinforce", "arithmetic"],
    )
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{text}").save(target / "README.md")


def keep_results(reproduction: Path, results_dir: Path, evaluations: dict[str, dict]) -> None:
    """The figures the README and cards cite, small enough to commit: each evaluation's tables, summary and plots,
    the baselines chosen on validation, the timings, and `summary.json` (the test comparisons, with the
    generalisation checks' under `generalisation`)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for folder in ("validation", *evaluations):
        source, target = reproduction / folder, results_dir / folder
        target.mkdir(exist_ok=True)
        for filename in ("results.json", "results.md", "summary.json", "baselines.json"):
            if (source / filename).exists():
                shutil.copy2(source / filename, target / filename)
        if (source / "details.json").exists():  # redrawn, so the kept plots follow the current report code
            summary = {
                **json.loads((source / "results.json").read_text()),
                **json.loads((source / "details.json").read_text()),
            }
            plot_evaluation(summary, target / "plots")
    summary = json.loads((reproduction / "test" / "summary.json").read_text())
    summary["generalisation"] = {
        key: json.loads((reproduction / folder / "summary.json").read_text())
        for folder, key in EVALUATIONS.items()
        if key is not None and (reproduction / folder / "summary.json").exists()
    }
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if (reproduction / "timings.tsv").exists():
        shutil.copy2(reproduction / "timings.tsv", results_dir / "timings.tsv")


def main() -> None:
    (args,) = HfArgumentParser(ShipArguments).parse_args_into_dataclasses()
    reproduction = Path(args.reproduction_dir)
    for needed in ("test/results.json", "test/summary.json", "validation/baselines.json"):
        if not (reproduction / needed).exists():
            raise FileNotFoundError(f"{reproduction / needed} does not exist: run reproduce.sh's earlier steps first.")
    evaluations = {
        folder: json.loads((reproduction / folder / "results.json").read_text())
        for folder in EVALUATIONS
        if (reproduction / folder / "results.json").exists()
    }
    baselines = json.loads((reproduction / "validation" / "baselines.json").read_text())
    main_budget = max(evaluations["test"]["settings"]["token_budgets"])
    results = {
        "test": evaluations["test"],
        "evaluations": evaluations,
        "best": baselines["token_budgets"][str(main_budget)][BEST],
        "baselines": baselines,
        "hours": _hours(reproduction / "timings.tsv"),
    }
    for run, (name, column, summary_line) in RUNS.items():
        run_dir = Path(args.adapters_dir) / run
        if not (run_dir / "model.safetensors").exists():
            raise FileNotFoundError(f"{run_dir} holds no trained adapter: run the training steps of reproduce.sh.")
        ship_run(run_dir, Path(args.model_cards_dir) / name, name, column, summary_line, results)
        print(f"Shipped {run_dir} -> {Path(args.model_cards_dir) / name}")
    keep_results(reproduction, Path(args.results_dir), evaluations)
    print(f"Results kept in {args.results_dir}/")


if __name__ == "__main__":
    main()
