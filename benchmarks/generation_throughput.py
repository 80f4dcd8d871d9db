"""Generated tokens/s of plain sampling vs the same generate call with a token- and a sequence-level adapter.

    python benchmarks/generation_throughput.py [--batch-sizes 1 32] [--new-tokens 64] [--rounds 5]

Default model (SmolLM2-135M-Instruct), same prompts, same seeds and exactly `--new-tokens` new tokens for every
variant (min_new_tokens = max_new_tokens, so EOS cannot shorten one variant). Variants run interleaved, round by
round, so machine noise hits them alike; the figure is the median over rounds, and the ratio is to plain.
"""

import argparse
import statistics
import time
from functools import partial

import torch

from hf_adaptive_decoding import AutoDecodingAdapter
from hf_adaptive_decoding.default_model import load_default_model

QUESTIONS = [f"What is {a} + {b}? Put the final answer in \\boxed{{}}." for a in range(11, 99, 7) for b in (3, 28, 56)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--token-preset", default="math-token")
    parser.add_argument("--sequence-preset", default="math-seq")
    args = parser.parse_args()

    model, tokenizer = load_default_model()
    adapters = {
        "token": AutoDecodingAdapter.for_model(model, args.token_preset).eval(),
        "sequence": AutoDecodingAdapter.for_model(model, args.sequence_preset).eval(),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.new_tokens} new tokens per row")
    print(
        "plain = generate(do_sample=True) under the model's generation config:", model.generation_config.to_diff_dict()
    )
    print(f"token adapter: {args.token_preset!r}; sequence adapter: {args.sequence_preset!r} (fresh, uniform policy)")
    print(
        f"{'batch':>5} {'plain tok/s':>12} {'token tok/s':>12} {'seq tok/s':>10} {'token/plain':>12} {'seq/plain':>10}"
    )
    for batch in args.batch_sizes:
        conversations = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(batch)]
        inputs = tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        common = {**inputs, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
        variants = {
            "plain": partial(model.generate, **common, do_sample=True),
            "token": partial(model.generate, **common, decoding_adapter=adapters["token"]),
            "sequence": partial(model.generate, **common, decoding_adapter=adapters["sequence"]),
        }
        rates = {name: [] for name in variants}
        names = list(variants)
        for round_index in range(args.rounds + 1):
            # rotate the order every round, so that no variant always runs first (or right after another)
            for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                run = variants[name]
                torch.manual_seed(round_index)
                start = time.perf_counter()
                out = run()
                elapsed = time.perf_counter() - start
                assert out.shape[1] - inputs["input_ids"].shape[1] == args.new_tokens
                if round_index:  # round 0 warms up
                    rates[name].append(batch * args.new_tokens / elapsed)
        med = {name: statistics.median(r) for name, r in rates.items()}
        print(
            f"{batch:>5} {med['plain']:>12.1f} {med['token']:>12.1f} {med['sequence']:>10.1f} "
            f"{med['token'] / med['plain']:>12.3f} {med['sequence'] / med['plain']:>10.3f}"
        )


if __name__ == "__main__":
    main()
