"""Select the action spaces of the adapters from the paper's candidate pool (Section 2.4, Appendix C, Figure 6).

    python recipes/select_actions.py                                    # embedded default model, arithmetic
    python recipes/select_actions.py --config recipes/configs/select_actions.yaml --sequence_k 8

Every candidate (the 180 strategies of Table 10, plus greedy) is sampled once on each validation problem and
rewarded. The sequence-level action space is the `sequence_k` strategies chosen by greedy coverage of
F(S) = sum_x max_{s in S} R(x, s); the token-level one is chosen the same way among the temperature-only candidates
(greedy and pure temperatures, Section 2.4). Written to `output_dir`:

- `sequence_actions.json`, `token_actions.json`: action spaces that `--preset` and `AdaptiveDecodingConfig.coerce`
  load;
- `selection.json`: every candidate's mean reward, the best single strategy (the BEST baseline), both selections and
  their best-of-K curves;
- `best_of_k.png`: Figure 6, greedy coverage against top-K by mean.

Rewards are cached per (problem, strategy) in `output_dir/rewards_cache/`: an interrupted run resumes, and a rerun
with another K generates nothing.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _training import ScriptArguments, load_data, reward_function
from transformers import set_seed
from trl import TrlParser

from hf_adaptive_decoding import AdaptiveDecodingConfig, DecodingAction, candidate_pool, load_default_model
from hf_adaptive_decoding.evaluation.action_selection import (
    best_of_k_curve,
    evaluate_strategies,
    greedy_coverage,
    plot_best_of_k,
    top_k_by_mean,
)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "select_actions.yaml"


@dataclass
class SelectionArguments:
    output_dir: str = field(default="outputs/action_selection", metadata={"help": "Where results are written."})
    sequence_k: int = field(default=6, metadata={"help": "Size of the sequence-level action space (Tables 11-13)."})
    token_k: int = field(default=4, metadata={"help": "Size of the token-level action space (Table 14)."})
    curve_k: int = field(default=12, metadata={"help": "Largest K on the best-of-K plot."})
    include_greedy: bool = field(default=True, metadata={"help": "Add greedy decoding to the 180 candidates."})
    max_new_tokens: int = field(default=48, metadata={"help": "Most tokens generated per sample."})
    instruction: str = field(
        default="Provide the final answer within \\boxed{}.", metadata={"help": "Appended to each question."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "A system turn for the chat template."})
    rows_per_batch: int = field(default=384, metadata={"help": "Rows (problems x strategies) generated at once."})
    seed: int = field(default=0, metadata={"help": "Seeds sampling: every candidate draws the same noise."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


def temperature_only(action: DecodingAction) -> bool:
    return not action.is_truncating


def main() -> None:
    if not any(arg == "--config" or arg.startswith("--config=") for arg in sys.argv):
        sys.argv[1:1] = ["--config", str(DEFAULT_CONFIG)]
    data_args, args = TrlParser((ScriptArguments, SelectionArguments)).parse_args_and_config()
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_default_model(data_args.model_name_or_path)
    _, validation, _ = load_data(data_args)
    candidates = ([DecodingAction(do_sample=False)] if args.include_greedy else []) + candidate_pool()
    rewards = evaluate_strategies(
        model,
        tokenizer,
        candidates,
        validation,
        reward_function(data_args),
        max_new_tokens=args.max_new_tokens,
        instruction=args.instruction,
        system_prompt=args.system_prompt,
        seed=args.seed,
        rows_per_batch=args.rows_per_batch,
        cache_dir=output_dir / "rewards_cache",
        disable_tqdm=args.disable_tqdm,
    )
    names = [candidate.name for candidate in candidates]
    mean = rewards.double().mean(dim=0)
    best = int(mean.argmax())
    summary = {
        "num_problems": rewards.shape[0],
        "candidates": names,
        "mean_reward": dict(zip(names, mean.tolist(), strict=True)),
        "best": {"name": names[best], "action": candidates[best].to_dict(), "mean_reward": float(mean[best])},
        "oracle_best_of_all": float(rewards.amax(dim=1).double().mean()),
    }
    pools = {
        "sequence": (list(range(len(candidates))), args.sequence_k),
        "token": ([i for i, c in enumerate(candidates) if temperature_only(c)], args.token_k),
    }
    for level, (pool, k) in pools.items():
        sub = rewards[:, pool]
        curve_k = min(max(args.curve_k, k), len(pool))
        greedy = [pool[i] for i in greedy_coverage(sub, curve_k)]
        by_mean = [pool[i] for i in top_k_by_mean(sub, curve_k)]
        selected = sorted(greedy[:k])  # the pool's order: greedy first, then by temperature
        config = AdaptiveDecodingConfig(actions=[candidates[i] for i in selected], level=level)
        config.to_json_file(output_dir / f"{level}_actions.json")
        summary[level] = {
            "k": k,
            "pool_size": len(pool),
            "selected": [names[i] for i in selected],
            "greedy_coverage_order": [names[i] for i in greedy],
            "top_k_by_mean_order": [names[i] for i in by_mean],
            "best_of_k": {
                "greedy coverage": best_of_k_curve(rewards, greedy),
                "top-K by mean": best_of_k_curve(rewards, by_mean),
            },
        }
        title = f"{level.capitalize()}-level pool ({len(pool)} candidates, {rewards.shape[0]} problems)"
        plot_best_of_k(summary[level]["best_of_k"], output_dir / f"best_of_k_{level}.png", title)
    (output_dir / "selection.json").write_text(json.dumps(summary, indent=2))

    print(f"{rewards.shape[0]} validation problems, {len(candidates)} candidates.")
    print(f"BEST single strategy: {names[best]} (mean reward {mean[best]:.3f}).")
    for level in pools:
        curves = summary[level]["best_of_k"]
        k = summary[level]["k"]
        print(
            f"{level}-level, K={k}: {summary[level]['selected']}  best-of-K: greedy coverage "
            f"{curves['greedy coverage'][k - 1]:.3f}, top-K by mean {curves['top-K by mean'][k - 1]:.3f}"
        )
    print(f"Written: {output_dir}/sequence_actions.json, token_actions.json, selection.json, best_of_k_*.png")


if __name__ == "__main__":
    main()
