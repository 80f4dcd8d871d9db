"""Generate completions for a dataset of prompts with a decoding adapter, and record the action behind each token.

    python recipes/generate.py --config recipes/configs/generate.yaml
    python recipes/generate.py --prompts_file questions.jsonl --adapter me/my-adapter --output_file out.jsonl

Prompts come from a local JSON/JSONL/CSV/Parquet file or a Hub dataset (column `--prompt_column`); each output line
holds the prompt, the completion, the actions (one per token, or one per sequence) and the action names. Without
`--adapter`, a fresh (untrained, uniform) adapter with the `--preset` action space is used.
"""

import json
import os
from dataclasses import dataclass, field

import torch
from datasets import load_dataset
from tqdm.auto import tqdm
from transformers import set_seed
from trl import TrlParser

from hf_adaptive_decoding import AutoDecodingAdapter, encode_chat, load_default_model
from hf_adaptive_decoding.default_model import default_model_revision


@dataclass
class GenerateArguments:
    prompts_file: str | None = field(default=None, metadata={"help": "Local json/jsonl/csv/parquet file of prompts."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id (instead of prompts_file)."})
    dataset_split: str = field(default="test", metadata={"help": "Split of dataset_name."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the user message."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "LM; default: embedded SmolLM2-135M."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter folder or Hub id; default: a fresh one."})
    preset: str = field(default="math-token", metadata={"help": "Action space of a fresh adapter."})
    system_prompt: str | None = field(default=None, metadata={"help": "A system turn for the chat template."})
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per completion."})
    num_return_sequences: int = field(default=1, metadata={"help": "Completions per prompt."})
    batch_size: int = field(default=16, metadata={"help": "Prompts generated at once."})
    deterministic: bool = field(default=False, metadata={"help": "Take the policy's most likely action."})
    seed: int = field(default=0, metadata={"help": "Seeds sampling."})
    output_file: str = field(
        default="generations.jsonl",
        metadata={"help": "JSONL file written: one record per completion, with its actions and their names."},
    )


def load_prompts(args: GenerateArguments) -> list[str]:
    if (args.prompts_file is None) == (args.dataset_name is None):
        raise ValueError("Give exactly one of --prompts_file and --dataset_name.")
    if args.prompts_file is not None:
        if not os.path.isfile(args.prompts_file):
            raise FileNotFoundError(f"--prompts_file {args.prompts_file!r} does not exist.")
        if os.path.getsize(args.prompts_file) == 0:  # datasets raises a bare StopIteration on an empty file
            raise ValueError(f"--prompts_file {args.prompts_file!r} is empty: there are no prompts to generate for.")
        extension = os.path.splitext(args.prompts_file)[1].lstrip(".").replace("jsonl", "json")
        dataset = load_dataset(extension, data_files=args.prompts_file, split="train")
    else:
        dataset = load_dataset(args.dataset_name, split=args.dataset_split)
    if args.prompt_column not in dataset.column_names:
        raise ValueError(f"Column {args.prompt_column!r} is not in the dataset; columns: {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("The prompt dataset is empty.")
    prompts = dataset[args.prompt_column]
    return prompts[: args.max_prompts] if args.max_prompts else prompts


@torch.inference_mode()
def main(args: GenerateArguments) -> None:
    set_seed(args.seed)
    prompts = load_prompts(args)
    model, tokenizer = load_default_model(args.model_name_or_path)
    if args.adapter:
        adapter = AutoDecodingAdapter.from_pretrained(args.adapter).to(model.device)
    else:
        revision = default_model_revision() if args.model_name_or_path is None else None
        adapter = AutoDecodingAdapter.for_model(model, args.preset, base_model_revision=revision)
    adapter.eval()
    action_names = adapter.decoding_config.action_names

    with open(args.output_file, "w") as output:
        for start in tqdm(range(0, len(prompts), args.batch_size), desc="generating", unit="batch"):
            batch = prompts[start : start + args.batch_size]
            inputs = encode_chat(tokenizer, batch, args.system_prompt, device=model.device)
            out = model.generate(
                **inputs,
                decoding_adapter=adapter,
                deterministic=args.deterministic,
                max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.num_return_sequences,
                return_dict_in_generate=True,
            )
            completions = out.sequences[:, inputs["input_ids"].shape[1] :]
            for row, (completion, actions) in enumerate(zip(completions, out.decoding_actions, strict=True)):
                record = {
                    "prompt": batch[row // args.num_return_sequences],
                    "completion": tokenizer.decode(completion, skip_special_tokens=True),
                    "actions": actions.tolist() if actions.dim() else int(actions),
                    "action_names": action_names,
                }
                output.write(json.dumps(record) + "\n")
    print(f"Wrote {len(prompts) * args.num_return_sequences} generations to {args.output_file}")


if __name__ == "__main__":
    (arguments,) = TrlParser((GenerateArguments,)).parse_args_and_config()
    main(arguments)
