"""How much of the headroom over BEST@k a prompt-level choice can reach from the model's hidden state (issue 17).

    python recipes/probe_headroom.py --config recipes/configs/survey_tasks.yaml \\
        --results outputs/survey_tasks/results.json --probe_candidates greedy T0.5 T1

Reads an evaluation's per-problem Pass@k of the candidate decoders (`recipes/evaluate.py` wrote it; the same `--config`
rebuilds its problems), computes each prompt's final hidden state at its last token or its mean over the prompt
(`--prompt_pooling`; what a sequence-level adapter sees), and compares, out of fold (k-fold cross-validation over
problems), for each k: BEST@k (the best candidate on the other folds; pessimistic among near-ties, so also BEST@k
in-sample, chosen and scored on all problems, which is optimistic), family-best (the best candidate of the problem's
task family on the other folds), a probe (a linear softmax policy on the hidden states' top principal directions,
trained on the other folds' measured rewards of every candidate) and the oracle (the best candidate on the problem
itself). Differences are paired by problem with 95% intervals. Written to `output_dir/probe.json` and `probe.md`.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _training import ScriptArguments, load_data
from evaluate import EvaluationArguments
from trl import TrlParser

from hf_adaptive_decoding import load_default_model
from hf_adaptive_decoding.evaluation.comparison import half_width
from hf_adaptive_decoding.evaluation.evaluate import dataset_fingerprint
from hf_adaptive_decoding.evaluation.probe import (
    cross_validated_choices,
    cross_validated_static_choices,
    prompt_features,
)


@dataclass
class ProbeArguments:
    results: str = field(default="outputs/survey_tasks/results.json", metadata={"help": "evaluate.py's results.json."})
    probe_candidates: list[str] = field(
        default_factory=lambda: ["greedy", "T0.5", "T1"], metadata={"help": "Decoders (names) to choose among."}
    )
    num_folds: int = field(default=5, metadata={"help": "Folds of the cross-validation over problems."})
    probe_seed: int = field(default=0, metadata={"help": "Seeds the folds and the probes."})
    probe_weight_decay: float = field(default=0.1, metadata={"help": "The probe's AdamW weight decay."})
    probe_components: int | None = field(
        default=16, metadata={"help": "Principal directions of the hidden states the probe sees (None: all)."}
    )


def main() -> None:
    data_args, eval_args, args = TrlParser(
        (ScriptArguments, EvaluationArguments, ProbeArguments)
    ).parse_args_and_config()
    results = json.loads(Path(args.results).read_text())
    data_args = dataclasses.replace(
        data_args, eval_split=eval_args.split, num_eval_examples=eval_args.num_test_examples
    )
    _, dataset, _ = load_data(data_args)
    if dataset_fingerprint(dataset.to_list()) != results["settings"]["dataset_fingerprint"]:
        raise ValueError(
            f"The config rebuilds other problems ({len(dataset)}) than {args.results} evaluated "
            f"({results['settings']['num_problems']}): pass the --config (and overrides) of that evaluation."
        )
    prompting = {"instruction": eval_args.instruction, "system_prompt": eval_args.system_prompt}
    evaluated = {key: results["settings"].get(key) for key in prompting}
    if prompting != evaluated:
        raise ValueError(f"The prompts were evaluated with {evaluated}, not {prompting}.")
    model, tokenizer = load_default_model(data_args.model_name_or_path)
    features = prompt_features(
        model,
        tokenizer,
        dataset["prompt"],
        eval_args.instruction,
        eval_args.system_prompt,
        64,
        data_args.prompt_pooling,
    )
    families = dataset["family"] if "family" in dataset.column_names else None
    budget = str(max(results["settings"]["token_budgets"]))
    references = ("BEST@k", "BEST@k in-sample", "family-best")
    header = [*references, "probe", "oracle", *(f"probe - {reference}" for reference in references)]
    rows, lines = [], ["| k | " + " | ".join(header) + " |"]
    lines.append("|---:" * (3 + 2 * len(references)) + "|")
    for k in results["settings"]["ks"]:
        per_problem = results["per_problem"]
        rewards = torch.tensor([per_problem[name][budget][str(k)] for name in args.probe_candidates]).T.double()
        picked = {
            "BEST@k": cross_validated_static_choices(rewards, None, args.num_folds, args.probe_seed),
            "family-best": cross_validated_static_choices(rewards, families, args.num_folds, args.probe_seed),
            "probe": cross_validated_choices(
                features, rewards, args.num_folds, args.probe_seed, args.probe_weight_decay, 300, args.probe_components
            ),
        }
        scores = {name: rewards.gather(1, choice[:, None])[:, 0] for name, choice in picked.items()}
        # Out of fold, the best of near-tied candidates on the other folds tends to be the worst on the held-out
        # one (the folds share one total), so BEST@k out of fold is pessimistic; chosen and scored on all problems
        # it is optimistic. A probe that beats both has headroom the static choice cannot explain.
        scores["BEST@k in-sample"] = rewards[:, rewards.mean(dim=0).argmax()]
        scores["oracle"] = rewards.max(dim=1).values
        row = {"k": k, **{name: 100 * float(values.mean()) for name, values in scores.items()}}
        for reference in references:
            difference = 100 * (scores["probe"] - scores[reference])
            delta, width = float(difference.mean()), half_width(difference)
            row[f"probe - {reference}"] = {"delta": delta, "ci95": [delta - width, delta + width]}
        row["probe_choices"] = torch.bincount(picked["probe"], minlength=len(args.probe_candidates)).tolist()
        rows.append(row)
        deltas = [row[f"probe - {reference}"] for reference in references]
        lines.append(
            f"| {k} | "
            + " | ".join(f"{row[name]:.1f}" for name in (*references, "probe", "oracle"))
            + " | "
            + " | ".join(f"{d['delta']:+.1f} ± {(d['ci95'][1] - d['ci95'][0]) / 2:.1f}" for d in deltas)
            + " |"
        )
    output_dir = Path(eval_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"{len(dataset)} {eval_args.split} problems, candidates {args.probe_candidates}, {args.num_folds}-fold "
        f"cross-validation; Pass@k in %, differences paired by problem with 95% intervals."
    )
    (output_dir / "probe.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    (output_dir / "probe.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")
    print(header + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
