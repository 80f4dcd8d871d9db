"""Per-row action transform vs transformers' warper chain vs a per-row Python loop, on the default vocabulary.

    python benchmarks/transform.py [--batch-sizes 32 256] [--repeats 20] [--logits real|gaussian] [--threads N]

By default the logits are real next-token logits of the default model (SmolLM2-135M-Instruct) sampling answers
to arithmetic questions at T=1; `--logits gaussian` uses i.i.d. N(0, 3^2) logits, far flatter than a real LM's.

The warper chain applies ONE action to all rows (what generate can do today); the loop applies each row's own
action with transformers' warpers one row at a time (the obvious way to get per-row actions); ours applies each
row's own action in one batched operation. Times are medians, interleaved round by round (the order rotating);
ratios are to ours: above 1, ours is faster.
"""

import argparse
import statistics
import time
from functools import partial

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hf_adaptive_decoding import ACTION_PRESETS, ActionTransform

VOCAB = 49152  # SmolLM2


def warpers(action) -> LogitsProcessorList:
    chain = LogitsProcessorList()
    if not action.do_sample:
        return chain
    if action.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(action.temperature))
    if action.top_k:
        chain.append(TopKLogitsWarper(action.top_k))
    if action.top_p:
        chain.append(TopPLogitsWarper(action.top_p))
    if action.min_p:
        chain.append(MinPLogitsWarper(action.min_p))
    return chain


def per_row_loop(scores, action_ids, chains, actions):
    rows = []
    for row, index in enumerate(action_ids.tolist()):
        row_scores = scores[row : row + 1]
        if not actions[index].do_sample:
            argmax = row_scores.argmax(-1, keepdim=True)
            rows.append(torch.full_like(row_scores, -float("inf")).scatter(1, argmax, row_scores.gather(1, argmax)))
        else:
            rows.append(chains[index](None, row_scores))
    return torch.cat(rows)


def real_logits(rows: int, new_tokens: int = 48) -> torch.Tensor:
    """`rows` next-token logit vectors recorded while the default model samples (32 prompts at a time)."""
    from hf_adaptive_decoding.default_model import load_default_model

    model, tokenizer = load_default_model()
    questions = [f"What is {a} * {b}? Put the final answer in \\boxed{{}}." for a in range(3, 35) for b in (7, 12)]
    collected = []
    for start in range(0, max(rows // new_tokens, 1) * 32, 32):
        conversations = [
            [{"role": "user", "content": questions[i % len(questions)]}] for i in range(start, start + 32)
        ]
        inputs = tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(
            **inputs, do_sample=True, max_new_tokens=new_tokens, output_logits=True, return_dict_in_generate=True
        )
        collected += list(out.logits)
    flat = torch.cat(collected).float()
    return flat[torch.randperm(flat.shape[0])[:rows]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--presets", nargs="+", default=["math-token", "mixed-seq", "math-seq"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--logits", choices=["real", "gaussian"], default="real")
    parser.add_argument("--threads", type=int, help="torch threads (on a busy machine, 1 gives steadier times)")
    args = parser.parse_args()
    torch.manual_seed(0)
    pool = real_logits(max(args.batch_sizes)) if args.logits == "real" else None
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, vocabulary {VOCAB}, {args.logits} logits")
    header = ["preset", "batch", "ours ms", "chain ms", "loop ms", "chain/ours", "loop/ours"]
    print(f"{header[0]:<11} " + " ".join(f"{h:>10}" for h in header[1:]))
    for preset in args.presets:
        actions = ACTION_PRESETS[preset][1]()
        transform = ActionTransform(actions)
        chains = [warpers(a) for a in actions]
        # the heaviest single action for the chain: the one with the most truncation steps
        heaviest = max(range(len(actions)), key=lambda i: len(chains[i]))
        for batch in args.batch_sizes:
            scores = pool[:batch].clone() if pool is not None else torch.randn(batch, VOCAB) * 3
            action_ids = torch.randint(0, len(actions), (batch,))
            variants = {
                "ours": partial(transform, scores, action_ids),
                "chain": partial(chains[heaviest], None, scores),
                "loop": partial(per_row_loop, scores, action_ids, chains, actions),
            }
            times = {name: [] for name in variants}
            names = list(variants)
            for round_ in range(args.repeats):  # rotate who runs first: a call pays for the allocations before it
                first = round_ % len(names)
                for name in names[first:] + names[:first]:
                    start = time.perf_counter()
                    variants[name]()
                    times[name].append(time.perf_counter() - start)
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            row = [batch, ms["ours"], ms["chain"], ms["loop"], ms["chain"] / ms["ours"], ms["loop"] / ms["ours"]]
            print(f"{preset:<11} {row[0]:>10} " + " ".join(f"{value:>10.2f}" for value in row[1:]))


if __name__ == "__main__":
    main()
