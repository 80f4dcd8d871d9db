"""Generated tokens/s of the trainer's rollouts (`generate_rollouts`) vs plain `model.generate` on the same prompts.

    HF_HUB_OFFLINE=1 python benchmarks/rollout_throughput.py [--prompts 8] [--samples 4] [--max-new-tokens 48]
        [--rounds 3] [--modes eos fixed] [--threads N]

Default model (SmolLM2-135M-Instruct), `--prompts` validation problems of `arithmetic_dataset` with the trainer's
boxed-answer instruction, rendered by the chat template (`encode_chat`), each sampled `--samples` times with up to
`--max-new-tokens` new tokens. Three sides:

- plain: `model.generate(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=samples)`;
- rollout/token: `generate_rollouts` with a fresh token-level adapter (`--token-preset`): the adapter runs at every
  step and every decision is recorded, as in training;
- rollout/seq: `generate_rollouts` with a fresh sequence-level adapter (`--sequence-preset`): one decision per prompt;
- rollout/seq vllm (when vLLM is installed, e.g. `.venv-vllm/bin/python`): the same adapter's rollouts drawn by a
  vLLM engine in this process (`vllm_generate_rollouts`, what `AdapterTrainerConfig(use_vllm=True)` trains on), in
  eos mode only (vLLM stops at the tokenizer's EOS whatever the generation config says).

Two modes:

- eos: rows stop at EOS. Rollouts drop finished rows from the batch; plain generate keeps computing them until every
  row is done, so this shows what shrinking the batch gains (outputs differ between sides, so do their lengths).
- fixed: EOS is disabled on both sides (the generation config's `eos_token_id` is set to an id outside the vocabulary
  for the duration, then restored), so every row generates exactly `--max-new-tokens` tokens: the like-for-like cost
  of the per-step adapter work and recording.

Tokens/s = generated tokens (up to and including a row's EOS; padding not counted) / wall time. Sides run
interleaved, the order rotating every round (round 0 warms up and is not counted), all under `torch.manual_seed` of
the same seed per round. Prints one line per mode and side: median tokens/s, mean tokens per row, and the ratio to
plain (median of the per-round ratios, with their min-max spread). The goal is rollout/plain >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
from transformers import PreTrainedModel

from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter, arithmetic_dataset, encode_chat
from hf_adaptive_decoding.default_model import load_default_model
from hf_adaptive_decoding.generation.rollout import generate_rollouts

INSTRUCTION = "Provide the final answer within \\boxed{}."
SIDES = ("plain", "rollout/token", "rollout/seq")
VLLM_SIDE = "rollout/seq vllm"


@contextmanager
def eos_disabled(model: PreTrainedModel) -> Iterator[None]:
    """Make EOS unreachable for `generate` and `generate_rollouts` alike: an id no logit can produce."""
    config = model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = model.config.get_text_config(decoder=True).vocab_size
    try:
        yield
    finally:
        config.eos_token_id = saved


def count_generated(tokens: torch.LongTensor, eos_ids: torch.LongTensor) -> int:
    """Tokens of `(rows, new_tokens)` up to and including each row's first EOS (what follows is padding)."""
    is_eos = torch.isin(tokens, eos_ids).int()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0
    return int((~after_eos).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8, help="Distinct prompts per call.")
    parser.add_argument("--samples", type=int, default=4, help="Samples per prompt (rows = prompts x samples).")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="Measured rounds per mode (plus one warm-up).")
    parser.add_argument("--modes", nargs="+", choices=["eos", "fixed"], default=["eos", "fixed"])
    parser.add_argument("--token-preset", default="math-token")
    parser.add_argument("--sequence-preset", default="math-seq")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's); 1 is far steadier on a busy machine."
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_default_model()
    adapters = {
        "rollout/token": AutoDecodingAdapter.for_model(model, AdaptiveDecodingConfig.from_preset(args.token_preset)),
        "rollout/seq": AutoDecodingAdapter.for_model(model, AdaptiveDecodingConfig.from_preset(args.sequence_preset)),
    }
    questions = arithmetic_dataset("validation", args.prompts, conversational=False)["prompt"]
    enc = encode_chat(tokenizer, [f"{question}\n{INSTRUCTION}" for question in questions])
    prompt_length = enc["input_ids"].shape[1]
    rows = args.prompts * args.samples

    def plain() -> torch.LongTensor:
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            num_return_sequences=args.samples,
            max_new_tokens=args.max_new_tokens,
        )
        return out[:, prompt_length:]

    def rollout(side: str) -> torch.LongTensor:
        batch = generate_rollouts(
            model,
            adapters[side].eval(),
            enc["input_ids"],
            enc["attention_mask"],
            num_samples=torch.tensor([args.samples] * args.prompts),
            token_budgets=torch.tensor([args.max_new_tokens] * args.prompts),
        )
        return batch.completion_ids.masked_fill(~batch.completion_mask, tokenizer.pad_token_id)

    runs: dict[str, Callable[[], torch.LongTensor]] = {"plain": plain}
    runs.update({side: partial(rollout, side) for side in adapters})
    try:
        import vllm
    except ImportError:
        vllm = None
    if vllm is not None:
        from hf_adaptive_decoding.vllm.rollout import vllm_generate_rollouts

        engine = vllm.LLM(model=model.weights_folder, dtype="float32", enforce_eager=True, max_model_len=1024)

        def vllm_rollout() -> torch.LongTensor:
            batch = vllm_generate_rollouts(
                engine,
                model,
                adapters["rollout/seq"].eval(),
                enc["input_ids"],
                enc["attention_mask"],
                num_samples=torch.tensor([args.samples] * args.prompts),
                token_budgets=torch.tensor([args.max_new_tokens] * args.prompts),
            )
            return batch.completion_ids.masked_fill(~batch.completion_mask, tokenizer.pad_token_id)

        runs[VLLM_SIDE] = vllm_rollout

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{args.prompts} prompts x {args.samples} samples = {rows} rows, prompt length {prompt_length} (padded), "
        f"max_new_tokens {args.max_new_tokens}, {args.rounds} rounds + 1 warm-up per mode"
    )
    for side, adapter in adapters.items():
        print(f"{side}: fresh {adapter.level}-level adapter, {len(adapter.decoding_config.actions)} actions")
    header = f"{'mode':<6} {'side':<17} {'tok/s':>8} {'tok/row':>8} {'ratio':>6}  {'min-max':<11}"
    print(header)
    print("-" * len(header))

    with torch.inference_mode():
        for mode in args.modes:
            sides = SIDES + ((VLLM_SIDE,) if VLLM_SIDE in runs and mode == "eos" else ())
            with eos_disabled(model) if mode == "fixed" else nullcontext():
                eos_ids = torch.tensor(_ids(model.generation_config.eos_token_id), dtype=torch.long)
                rates: dict[str, list[float]] = {side: [] for side in sides}
                tokens: dict[str, list[int]] = {side: [] for side in sides}
                for round_index in range(args.rounds + 1):
                    # rotate the order every round, so that no side always runs first (or right after another)
                    shift = round_index % len(sides)
                    for side in sides[shift:] + sides[:shift]:
                        torch.manual_seed(args.seed + round_index)
                        start = time.perf_counter()
                        generated = runs[side]()
                        elapsed = time.perf_counter() - start
                        count = count_generated(generated, eos_ids)
                        if mode == "fixed":
                            assert count == rows * args.max_new_tokens, (side, count)
                        if round_index:  # round 0 warms up
                            rates[side].append(count / elapsed)
                            tokens[side].append(count)
            for side in sides:
                ratios = [rate / base for rate, base in zip(rates[side], rates["plain"], strict=True)]
                per_row = statistics.mean(tokens[side]) / rows
                print(
                    f"{mode:<6} {side:<17} {statistics.median(rates[side]):>8.1f} {per_row:>8.1f} "
                    f"{statistics.median(ratios):>6.3f}  {min(ratios):.3f}-{max(ratios):.3f}"
                )


def _ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


if __name__ == "__main__":
    main()
