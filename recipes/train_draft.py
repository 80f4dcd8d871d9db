"""Train a draft adapter: a controller of speculative decoding's draft length, rewarded by throughput.

    accelerate launch recipes/train_draft.py                                  # default model, prompt lookup
    accelerate launch recipes/train_draft.py --source early_exit --early_exit_layer 8
    accelerate launch recipes/train_draft.py --source assistant_model --draft_model_layers 8
    python recipes/train_draft.py --resume_from_checkpoint true               # continue a killed run

Without --config, the settings of configs/train_draft.yaml apply. Every field of `DraftTrainerConfig` and of the
script arguments can be set in the YAML file or on the command line.
"""

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import TrlParser

from hf_adaptive_decoding import load_default_model
from hf_adaptive_decoding.default_model import default_model_revision
from hf_adaptive_decoding.speculative.prompts import builtin_draft_prompts
from hf_adaptive_decoding.speculative.sources import layer_dropped_draft
from hf_adaptive_decoding.speculative.trainer import DraftTrainer, DraftTrainerConfig
from hf_adaptive_decoding.training.checkpointing import parse_resume_argument

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train_draft.yaml"


@dataclass
class DraftScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Target causal LM (Hub id or folder); default: the embedded SmolLM2."}
    )
    draft_model_layers: int | None = field(
        default=None, metadata={"help": "source=assistant_model: the draft is the target's first N layers."}
    )
    num_train_arithmetic: int = field(default=32, metadata={"help": "Training prompts from the arithmetic tasks."})
    num_train_code: int = field(default=32, metadata={"help": "Training prompts from HumanEval."})
    num_eval_arithmetic: int = field(default=8, metadata={"help": "Validation prompts from the arithmetic tasks."})
    num_eval_code: int = field(default=8, metadata={"help": "Validation prompts from HumanEval."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "'true' for the newest checkpoint in output_dir, a checkpoint folder, or 'auto': the newest "
            "checkpoint if there is one, else start over in output_dir."
        },
    )


def main() -> None:
    if not any(arg == "--config" or arg.startswith("--config=") for arg in sys.argv):
        sys.argv[1:1] = ["--config", str(DEFAULT_CONFIG)]
    script_args, args = TrlParser((DraftScriptArguments, DraftTrainerConfig)).parse_args_and_config()
    model, tokenizer = load_default_model(script_args.model_name_or_path)
    draft_model = None
    if args.source == "assistant_model":
        if script_args.draft_model_layers is None:
            raise ValueError("--source assistant_model needs --draft_model_layers (the draft: the target's first N).")
        draft_model = layer_dropped_draft(model, script_args.draft_model_layers)
    train = builtin_draft_prompts(tokenizer, "train", script_args.num_train_arithmetic, script_args.num_train_code)
    evals = builtin_draft_prompts(tokenizer, "validation", script_args.num_eval_arithmetic, script_args.num_eval_code)
    resume, start_over = parse_resume_argument(script_args.resume_from_checkpoint, args.output_dir)
    if start_over is not None:
        args.overwrite_output_dir = start_over
    revision = default_model_revision() if script_args.model_name_or_path is None else None
    trainer = DraftTrainer(model, args, train, evals, draft_model=draft_model, base_model_revision=revision)
    final = trainer.train(resume_from_checkpoint=resume)
    # What DraftTrainerConfig does not hold (prompt counts, the draft), for the card of a shipped adapter.
    (Path(args.output_dir) / "script_args.json").write_text(json.dumps(asdict(script_args), indent=2))
    print(
        f"Replayed speed-up on validation of the saved adapter (step {final['step']}): {final['eval_speedup']:.3f} "
        f"(best fixed draft length: {final['eval_speedup_best_fixed']:.3f}). Adapter: {args.output_dir}/ "
        "(config.json, model.safetensors, cost_model.json, eval_results.json, plots/)"
    )


if __name__ == "__main__":
    main()
