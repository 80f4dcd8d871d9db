"""Evaluate decoders side by side on a held-out split: static actions, BEST, MIXED, EDT and learned adapters.

    python recipes/evaluate.py --config recipes/configs/evaluate.yaml
    python recipes/evaluate.py --decoders "greedy=static:greedy" "ours=adapter:outputs/smollm2-135m-token-adapter" \\
        --num_test_examples 32 --seeds 0

Each decoder is a spec `<name>=<kind>[:<argument>]` (see `Decoder.from_spec`): `static:<action>`,
`best:<selection.json>`, `mixed:<action space>`, `edt[:T0,N,theta]`, `adapter:<folder or Hub id>`. Every decoder gets
the same prompts, seeds and budgets; Pass@k (k <= num_samples) uses the unbiased estimator, with 95% confidence
intervals over problems and paired differences to `--reference`. Written to `output_dir`: `results.json` (the
numbers, with every problem's Pass@k for paired comparisons), `results.md` (the tables, by task family too),
`details.json` (lengths and per-token entropies) and `plots/`. Finished (decoder, budget, seed) runs are cached in
`output_dir/cache/`: an interrupted evaluation resumes.
"""

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _training import ScriptArguments, load_data, reward_function
from transformers import set_seed
from trl import TrlParser

from hf_adaptive_decoding import DecodingAdapterModel, load_default_model
from hf_adaptive_decoding.evaluation.comparison import (
    BASELINE_NAMES,
    add_baselines,
    by_family,
    choose_baselines,
    summary_json,
)
from hf_adaptive_decoding.evaluation.evaluate import Decoder, evaluate_decoders
from hf_adaptive_decoding.evaluation.report import family_table, plot_evaluation, results_table

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "evaluate.yaml"


@dataclass
class EvaluationArguments:
    decoders: list[str] = field(
        default_factory=lambda: ["greedy=static:greedy", "min-p=static:T=1 min_p=0.1", "EDT=edt"],
        metadata={"help": "Decoder specs '<name>=<kind>[:<argument>]'."},
    )
    output_dir: str = field(
        default="outputs/evaluation", metadata={"help": "Where results.json, results.md and plots/ are written."}
    )
    split: str = field(default="test", metadata={"help": "Held-out split to evaluate on (arithmetic: test)."})
    num_test_examples: int = field(default=64, metadata={"help": "Held-out problems evaluated (at most)."})
    token_budgets: list[int] = field(default_factory=lambda: [48], metadata={"help": "Max new tokens, each."})
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={"help": "Pass@k for these k."})
    num_samples: int = field(default=8, metadata={"help": "Samples per problem (>= max k)."})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "Every decoder runs once per seed; Pass@k is averaged over them."},
    )
    reference: str | None = field(default=None, metadata={"help": "Decoder the differences are measured against."})
    tables: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra tables, each 'Title: decoder, decoder, ...' (a table of all decoders comes first)."},
    )
    instruction: str = field(
        default="Provide the final answer within \\boxed{}.", metadata={"help": "Appended to each question."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "A system turn for the chat template."})
    rows_per_batch: int = field(default=256, metadata={"help": "Rows (problems x samples) generated at once."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Finished runs, shared by evaluations (default: output_dir/cache)."}
    )
    candidates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Static decoder specs to choose the baselines among (evaluated with --decoders); with "
            "--write_baselines, on validation."
        },
    )
    write_baselines: str | None = field(
        default=None,
        metadata={"help": "Write BEST, BEST@k and the best candidate of each task family, chosen here, to this file."},
    )
    baselines: str | None = field(
        default=None,
        metadata={
            "help": "A file --write_baselines wrote (on validation): its candidates are run here too, and BEST, "
            "BEST@k, family-best and the oracle are scored on these problems and compared against."
        },
    )
    baselines_token_budget: int | None = field(
        default=None,
        metadata={
            "help": "With --baselines: score the baselines chosen at this validated token budget at every evaluated "
            "budget (for budgets validation did not cover, e.g. adapters outside their training range)."
        },
    )
    summary_file: str | None = field(
        default=None,
        metadata={"help": "With --baselines: where summary.json goes (default: output_dir/summary.json)."},
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


def _decoders(args: EvaluationArguments) -> tuple[list[Decoder], list[str], dict | None]:
    """The decoders to run (theirs, then any candidate not among them), the candidates' names, the baselines read."""
    if args.baselines and (args.candidates or args.write_baselines):
        raise ValueError("--baselines scores baselines chosen before; it takes no --candidates or --write_baselines.")
    if args.baselines_token_budget is not None and not args.baselines:
        raise ValueError("--baselines_token_budget says which budget's baselines to score: give --baselines too.")
    if args.write_baselines and not args.candidates:
        raise ValueError("--write_baselines chooses among --candidates: give the static decoder specs to compare.")
    baselines = json.loads(Path(args.baselines).read_text()) if args.baselines else None
    candidate_specs = baselines["candidate_specs"] if baselines else args.candidates
    decoders = [Decoder.from_spec(spec) for spec in args.decoders]
    described = {decoder.name: decoder.description for decoder in decoders}
    candidates = [Decoder.from_spec(spec) for spec in candidate_specs]
    for candidate in candidates:
        if described.get(candidate.name, candidate.description) != candidate.description:
            raise ValueError(
                f"Decoder {candidate.name!r} is {described[candidate.name]!r} in --decoders but the candidate of that "
                f"name is {candidate.description!r}: one name, one decoder."
            )
    decoders += [candidate for candidate in candidates if candidate.name not in described]
    names = [decoder.name for decoder in decoders]
    if baselines:
        clash = [name for name in names if name in BASELINE_NAMES]
        if clash:
            raise ValueError(f"Decoders named {clash} clash with the baselines --baselines adds: {BASELINE_NAMES}.")
    allowed = names + (list(BASELINE_NAMES) if baselines else [])
    if args.reference is not None and args.reference not in allowed:
        raise ValueError(f"--reference {args.reference!r} is not one of the decoders {allowed}.")
    return decoders, [candidate.name for candidate in candidates], baselines


def main() -> None:
    if not any(arg == "--config" or arg.startswith("--config=") for arg in sys.argv):
        sys.argv[1:1] = ["--config", str(DEFAULT_CONFIG)]
    data_args, args = TrlParser((ScriptArguments, EvaluationArguments)).parse_args_and_config()
    set_seed(args.seeds[0])
    decoders, candidates, baselines = _decoders(args)
    reference = "BEST" if baselines and args.reference is None else args.reference
    data_args = dataclasses.replace(data_args, eval_split=args.split, num_eval_examples=args.num_test_examples)
    _, test, _ = load_data(data_args)
    model, tokenizer = load_default_model(data_args.model_name_or_path)
    output_dir = Path(args.output_dir)
    summary = evaluate_decoders(
        model,
        tokenizer,
        decoders,
        test,
        reward_function(data_args),
        token_budgets=args.token_budgets,
        ks=args.ks,
        num_samples=args.num_samples,
        seeds=args.seeds,
        instruction=args.instruction,
        system_prompt=args.system_prompt,
        rows_per_batch=args.rows_per_batch,
        reference=None if baselines else reference,
        cache_dir=args.cache_dir or output_dir / "cache",
        disable_tqdm=args.disable_tqdm,
    )
    families = test["family"] if "family" in test.column_names else None
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.write_baselines:
        chosen = choose_baselines(summary, candidates, families)
        chosen["candidate_specs"], chosen["split"] = args.candidates, args.split
        Path(args.write_baselines).write_text(json.dumps(chosen, indent=2))
        print(f"Baselines chosen on {len(test)} {args.split} problems: {args.write_baselines}")
    if baselines:
        adapters = [decoder.name for decoder in decoders if isinstance(decoder.policy, DecodingAdapterModel)]
        summary = add_baselines(summary, baselines, families, reference, args.baselines_token_budget)
        summary_path = Path(args.summary_file or output_dir / "summary.json")
        summary_path.write_text(json.dumps(summary_json(summary, adapters), indent=2))
    if families is not None:
        summary["by_family"] = by_family(summary, families)
        if "level" in test.column_names:
            labels = [f"{family} L{level}" for family, level in zip(families, test["level"], strict=True)]
            summary["by_family_and_level"] = by_family(summary, labels)
    details = {key: summary.pop(key) for key in ("lengths", "token_entropy")}
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "details.json").write_text(json.dumps(details))
    settings = summary["settings"]
    header = (
        f"{settings['num_problems']} {data_args.dataset} {args.split} problems, {settings['num_samples']} samples "
        f"each, seeds {settings['seeds']}; Pass@k in %, mean ± 95% CI over problems"
        + (f"; Δ: paired difference to {reference}." if reference else ".")
    )
    sections = [f"## All decoders (token budget {max(args.token_budgets)})\n\n{header}\n\n{results_table(summary)}"]
    for spec in args.tables:
        title, _, columns = spec.partition(":")
        names = [name.strip() for name in columns.split(",") if name.strip()]
        sections.append(f"## {title.strip()}\n\n{results_table(summary, names)}")
    for budget in sorted(args.token_budgets)[:-1]:
        sections.append(f"## All decoders, token budget {budget}\n\n{results_table(summary, token_budget=budget)}")
    for key, what in (("by_family", "task family"), ("by_family_and_level", "task family and level")):
        for k in sorted({min(args.ks), max(args.ks)}) if key in summary else []:
            title = f"## Pass@{k} by {what} (token budget {max(args.token_budgets)})"
            sections.append(f"{title}\n\n{family_table(summary[key], max(args.token_budgets), k)}")
    descriptions = "\n".join(f"- **{name}**: {d['description']}" for name, d in summary["decoders"].items())
    sections.append(f"## Decoders\n\n{descriptions}")
    (output_dir / "results.md").write_text("\n\n".join(sections) + "\n")
    plot_evaluation({**summary, **details}, output_dir / "plots")
    print("\n\n".join(sections))
    print(f"\nWritten: {output_dir}/results.json, results.md, details.json, plots/")


if __name__ == "__main__":
    main()
