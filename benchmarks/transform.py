"""Per-row action transform vs transformers' warper chain vs a per-row Python loop, on the default vocabulary.

    python benchmarks/transform.py [--batch-sizes 32 256] [--repeats 20]

The warper chain applies ONE action to all rows (what generate can do today); the loop applies each row's own
action with transformers' warpers one row at a time (the obvious way to get per-row actions); ours applies each
row's own action in one batched operation. Times are medians, interleaved round by round; ratios are to ours.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--presets", nargs="+", default=["math-token", "mixed-seq", "math-seq"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, vocabulary {VOCAB}")
    header = ["preset", "batch", "ours ms", "chain ms", "loop ms", "chain/ours", "loop/ours"]
    print(f"{header[0]:<11} " + " ".join(f"{h:>10}" for h in header[1:]))
    for preset in args.presets:
        actions = ACTION_PRESETS[preset][1]()
        transform = ActionTransform(actions)
        chains = [warpers(a) for a in actions]
        # the heaviest single action for the chain: the one with the most truncation steps
        heaviest = max(range(len(actions)), key=lambda i: len(chains[i]))
        for batch in args.batch_sizes:
            scores = torch.randn(batch, VOCAB) * 3
            action_ids = torch.randint(0, len(actions), (batch,))
            variants = {
                "ours": partial(transform, scores, action_ids),
                "chain": partial(chains[heaviest], None, scores),
                "loop": partial(per_row_loop, scores, action_ids, chains, actions),
            }
            times = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            row = [batch, ms["ours"], ms["chain"], ms["loop"], ms["chain"] / ms["ours"], ms["loop"] / ms["ours"]]
            print(f"{preset:<11} {row[0]:>10} " + " ".join(f"{value:>10.2f}" for value in row[1:]))


if __name__ == "__main__":
    main()
