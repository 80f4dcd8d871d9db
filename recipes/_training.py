"""What `train_tok.py` and `train_seq.py` share: their script arguments, data and model set-up."""

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from transformers import set_seed
from trl import TrlParser

from hf_adaptive_decoding import (
    AdapterTrainer,
    AdapterTrainerConfig,
    AdaptiveDecodingConfig,
    AutoDecodingAdapter,
    SandboxConfig,
    arithmetic_dataset,
    load_code_contests_dataset,
    load_default_model,
    load_gsm8k_dataset,
    load_humaneval_dataset,
    load_math_dataset,
    make_code_reward,
    math_reward,
)
from hf_adaptive_decoding.default_model import default_model_revision
from hf_adaptive_decoding.evaluation.verdict import adapter_verdict, render_verdict
from hf_adaptive_decoding.training.checkpointing import parse_resume_argument

logger = logging.getLogger(__name__)
REPOSITORY = Path(__file__).resolve().parents[1]
DATASETS = ("arithmetic", "math", "gsm8k", "humaneval", "code_contests")
CODE_DATASETS = ("humaneval", "code_contests")
# (train split, validation split) when none is given. MATH-500, the default MATH source, and HumanEval have one set.
DEFAULT_SPLITS = {"math": ("test", "test"), "gsm8k": ("train", "test"), "code_contests": ("train", "valid")}


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Causal LM (Hub id or folder); default: the embedded SmolLM2-135M-Instruct."}
    )
    preset: str = field(default="math-token", metadata={"help": "Action space: a preset name or a JSON file."})
    budget_feature: str | None = field(default="log", metadata={"help": "none, linear or log."})
    context_features: str = field(
        default="hidden_state",
        metadata={"help": "hidden_state; token level also entropy (the Section 4 ablation) or hidden_state+stats."},
    )
    prompt_pooling: str = field(
        default="last",
        metadata={"help": "Sequence level: the prompt's final hidden state at its last token (last) or mean over it."},
    )
    adapter: str | None = field(default=None, metadata={"help": "Start from this adapter (folder or Hub id)."})
    adapter_hidden_size: int = field(default=256, metadata={"help": "Hidden size of a fresh adapter's MLP."})
    budget_logits: bool = field(
        default=False,
        metadata={
            "help": "A fresh adapter also maps the budget straight to its action logits (DecodingAdapterConfig."
            "budget_logits), so that it can prefer different actions at different budgets."
        },
    )
    dataset: str = field(default="arithmetic", metadata={"help": f"One of {DATASETS}."})
    dataset_path: str | None = field(
        default=None, metadata={"help": "math/gsm8k/code_contests: Hub id, file or folder."}
    )
    train_split: str | None = field(default=None, metadata={"help": "Default: train (math: test, see below)."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Default: validation (arithmetic; test for recipes/evaluate.py), test (gsm8k, math), valid "
            "(code_contests). When it is the "
            "train split, or the source is one file (or HumanEval's 164 problems), the validation prompts are "
            "carved out of it, disjoint from the training prompts."
        },
    )
    num_train_examples: int = field(default=2000, metadata={"help": "Training prompts (at most)."})
    num_eval_examples: int = field(default=64, metadata={"help": "Validation prompts."})
    num_comparison_examples: int = field(
        default=0,
        metadata={
            "help": "Validation problems, disjoint from the validation prompts (which choose the kept checkpoint), "
            "on which the trained adapter is compared at the end with every static action of its action space, "
            "paired, with 95% intervals (0: no comparison)."
        },
    )
    comparison_samples: int | None = field(
        default=None,
        metadata={"help": "Samples per comparison problem; default: the largest parallel budget, or 1 (token level)."},
    )
    comparison_cache_from: str | None = field(
        default=None,
        metadata={
            "help": "A folder of finished comparison outcomes (e.g. the committed static actions' on the same "
            "problems) copied into output_dir/verdict_cache before the comparison; each is used only when its "
            "recorded context (model id, problems, decoder, seed, samples, instruction) matches this run's, else "
            "re-run. The context does not record hardware, dtype or library versions: on other ones, pass ''."
        },
    )
    families: list[str] | None = field(
        default=None, metadata={"help": "arithmetic: task families (default: DEFAULT_FAMILIES, the original five)."}
    )
    levels: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "arithmetic: difficulty levels."})
    sandbox_workers: int | None = field(
        default=None, metadata={"help": "Code datasets: programs executed in parallel (default: number of CPUs)."}
    )
    sandbox_timeout: float = field(default=10.0, metadata={"help": "Code datasets: seconds per execution."})
    max_tests: int | None = field(default=None, metadata={"help": "code_contests: tests per problem (all)."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "'true' for the newest checkpoint in output_dir, a checkpoint folder, or 'auto': the newest "
            "checkpoint if there is one, else start over in output_dir."
        },
    )


def load_data(args: ScriptArguments):
    """The training prompts, the validation prompts and the comparison problems (`None` when none are asked for):
    validation and comparison come from one draw of the validation split, disjoint."""
    if args.num_comparison_examples < 0:
        raise ValueError(
            f"num_comparison_examples must be >= 0 (0: no comparison), got {args.num_comparison_examples}."
        )
    train, evaluation = _load_splits(args, args.num_eval_examples + args.num_comparison_examples)
    if args.num_comparison_examples == 0:
        return train, evaluation, None
    if len(evaluation) <= args.num_eval_examples:
        raise ValueError(
            f"The validation split has {len(evaluation)} problems: none is left for num_comparison_examples="
            f"{args.num_comparison_examples} after num_eval_examples={args.num_eval_examples}."
        )
    comparison = evaluation.select(range(args.num_eval_examples, len(evaluation)))
    return train, evaluation.select(range(args.num_eval_examples)), comparison


def _load_splits(args: ScriptArguments, num_eval: int):
    if args.dataset == "arithmetic":
        train = arithmetic_dataset("train", args.num_train_examples, args.families, args.levels)
        split = args.eval_split or "validation"
        evaluation = arithmetic_dataset(split, num_eval, args.families, args.levels)
        return train, evaluation
    if args.dataset == "humaneval":
        return _carve(load_humaneval_dataset(), args, num_eval)
    loaders = {"math": load_math_dataset, "gsm8k": load_gsm8k_dataset}
    loaders["code_contests"] = partial(load_code_contests_dataset, max_tests=args.max_tests)
    if args.dataset not in loaders:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {args.dataset!r}.")
    load = loaders[args.dataset]
    source = {"path_or_id": args.dataset_path} if args.dataset_path else {}
    default_train, default_eval = DEFAULT_SPLITS[args.dataset]
    train_split = args.train_split or default_train
    eval_split = args.eval_split or default_eval
    if train_split == eval_split or (args.dataset_path and os.path.isfile(args.dataset_path)):
        return _carve(load(split=train_split, **source), args, num_eval)
    train = load(split=train_split, num_examples=args.num_train_examples, **source)
    evaluation = load(split=eval_split, num_examples=num_eval, **source)
    return train, evaluation


def _carve(full, args: ScriptArguments, num_eval: int):
    """Validation prompts carved out of one set, disjoint from the training prompts."""
    if len(full) <= num_eval:
        raise ValueError(f"{len(full)} examples cannot give {num_eval} validation problems and training prompts.")
    parts = full.train_test_split(test_size=num_eval, seed=0)
    train = parts["train"].select(range(min(args.num_train_examples, len(parts["train"]))))
    return train, parts["test"]


def reward_function(args: ScriptArguments):
    """math-verify for the math datasets; sandboxed execution against the tests for the code datasets."""
    if args.dataset in CODE_DATASETS:
        config = SandboxConfig(timeout=args.sandbox_timeout, num_workers=args.sandbox_workers)
        return make_code_reward(config)
    return math_reward


def main(level: str, default_config: Path) -> None:
    """Parse `--config file.yaml` (default: `default_config`) and command-line overrides, then train."""
    if not any(arg == "--config" or arg.startswith("--config=") for arg in sys.argv):
        sys.argv[1:1] = ["--config", str(default_config)]
    script_args, training_args = TrlParser((ScriptArguments, AdapterTrainerConfig)).parse_args_and_config()
    set_seed(training_args.seed)
    model, tokenizer = load_default_model(script_args.model_name_or_path)
    if script_args.adapter:
        adapter = AutoDecodingAdapter.from_pretrained(script_args.adapter)
        if adapter.config.budget_logits != script_args.budget_logits:
            logger.warning(
                "--budget_logits %s applies to fresh adapters; the adapter from --adapter keeps budget_logits=%s.",
                script_args.budget_logits,
                adapter.config.budget_logits,
            )
    else:
        budget_feature = None if script_args.budget_feature in (None, "none") else script_args.budget_feature
        decoding = AdaptiveDecodingConfig.coerce(script_args.preset)
        decoding = AdaptiveDecodingConfig.from_dict(
            {
                **decoding.to_dict(),
                "level": level,
                "budget_feature": budget_feature,
                "context_features": script_args.context_features,
                "prompt_pooling": script_args.prompt_pooling,
            }
        )
        revision = default_model_revision() if script_args.model_name_or_path is None else None
        adapter = AutoDecodingAdapter.for_model(
            model,
            decoding,
            base_model_revision=revision,
            adapter_hidden_size=script_args.adapter_hidden_size,
            budget_logits=script_args.budget_logits,
        )
    if adapter.level != level:
        raise ValueError(f"This recipe trains {level}-level adapters; the adapter is {adapter.level}-level.")
    train_dataset, eval_dataset, comparison_dataset = load_data(script_args)
    if comparison_dataset is not None and script_args.comparison_cache_from:
        _comparison_cache_source(script_args)  # refused now rather than after training
    trainer = AdapterTrainer(
        model=model,
        adapter=adapter,
        reward_funcs=reward_function(script_args),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    resume, start_over = parse_resume_argument(script_args.resume_from_checkpoint, training_args.output_dir)
    if start_over is not None:
        training_args.overwrite_output_dir = start_over
    trainer.train(resume_from_checkpoint=resume)
    if trainer.accelerator.is_main_process:
        out = trainer.output_dir
        print(f"Adapter and model card: {out}/ (config.json, model.safetensors, README.md)")
        print(f"Metrics: {out}/metrics.jsonl   Plots: {out}/plots/   Checkpoints: {out}/checkpoint-*")
        if comparison_dataset is not None:
            compare(model, tokenizer, trainer, comparison_dataset, script_args, training_args)


def _comparison_cache_source(script_args: ScriptArguments) -> Path:
    """The folder of `comparison_cache_from`; a relative path is looked up in the current directory, then in the
    checkout these recipes belong to (where the default config's committed cache is)."""
    source = Path(script_args.comparison_cache_from)
    if not source.is_dir() and not source.is_absolute() and (REPOSITORY / source).is_dir():
        source = REPOSITORY / source
    if not source.is_dir():
        raise ValueError(
            f"comparison_cache_from={script_args.comparison_cache_from!r} is not a folder under {os.getcwd()} or "
            f"{REPOSITORY}; pass --comparison_cache_from '' to run every decoder of the comparison."
        )
    return source


def compare(model, tokenizer, trainer, dataset, script_args: ScriptArguments, training_args) -> None:
    """The closing comparison: the saved adapter against every static action of its action space, paired; written
    to `verdict.json` and `verdict.md`, added to the model card and printed last."""
    adapter = AutoDecodingAdapter.from_pretrained(trainer.output_dir)
    ks = sorted(set(training_args.parallel_budgets)) if adapter.level == "sequence" else [1]
    cache_dir = trainer.output_dir / "verdict_cache"
    if script_args.comparison_cache_from:  # None or "": nothing to reuse
        source = _comparison_cache_source(script_args)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for unit in source.glob("*.json"):  # finished units only; what this run already holds is kept
            if not (cache_dir / unit.name).exists():
                shutil.copy2(unit, cache_dir / unit.name)
    verdict = adapter_verdict(
        model,
        tokenizer,
        adapter,
        dataset,
        trainer.reward_funcs,
        token_budget=training_args.max_completion_length,
        ks=ks,
        num_samples=script_args.comparison_samples,
        seed=training_args.seed,
        instruction=training_args.instruction,
        system_prompt=training_args.system_prompt,
        cache_dir=cache_dir,
        disable_tqdm=training_args.disable_tqdm,
    )
    text = render_verdict(verdict)
    (trainer.output_dir / "verdict.json").write_text(json.dumps(verdict, indent=2))
    (trainer.output_dir / "verdict.md").write_text(text + "\n")
    card = trainer.output_dir / "README.md"
    if card.is_file():  # the local model card carries the verdict too (one pushed to the Hub was sent before it)
        card.write_text(f"{card.read_text().rstrip()}\n\n## Did it help?\n\n{text}\n")
    print(f"\n{text}")
