"""Greedy tokens/s of speculative decoding on the default model: transformers' schedules vs a learned draft adapter.

    HF_HUB_OFFLINE=1 python benchmarks/speculative.py [--sources prompt_lookup early_exit assistant_model]
        [--adapter prompt_lookup=<folder>] [--arithmetic 4] [--code 4] [--max-new-tokens 96] [--rounds 2]
        [--early-exit-layer 8] [--draft-layers 8] [--threads N] [--output results.json]

Default model (SmolLM2-135M-Instruct), prompts of the built-in tasks' test split (`builtin_draft_prompts`: arithmetic
with a chain-of-thought instruction, and HumanEval), one at a time (assisted generation takes batch 1), greedy,
`--max-new-tokens` each. For every candidate source, side by side and interleaved (the order rotates every round;
round 0 warms up and is not counted):

- plain: `model.generate(do_sample=False)`;
- transformers' schedules for that source. Draft model and early exit: `num_assistant_tokens_schedule="constant"`
  with 2, 4 and 8 tokens, and `"heuristic"` and `"heuristic_transient"` (from 20 tokens), all with transformers'
  default `assistant_confidence_threshold` (0.4); prompt lookup: `prompt_lookup_num_tokens` 2, 4, 8 and 10 (its
  default). Settings are put on the generation config transformers reads them from (the draft model's, or for early
  exit the target's own) and restored after every call;
- learned: `decoding_adapter=<the draft adapter for that source>` (`--adapter source=folder`; default: the shipped
  one in `model_cards/`, else `outputs/smollm2-135m-draft-adapter` for prompt lookup), its most likely decisions.

Every side's output is checked to be token-for-token plain greedy's. Tokens/s = new tokens / wall time, summed over
the prompts of a round. Prints, per source and side: median tokens/s over rounds and the ratio to plain (median of
the per-round ratios, with their min-max). The draft model is the target's first `--draft-layers` layers
(`layer_dropped_draft`): SmolLM2 has no smaller sibling. `--output` also writes the figures as JSON (what
`recipes/ship_draft_adapter.py` puts in the shipped adapter's card).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from hf_adaptive_decoding import AutoDecodingAdapter, DraftAdapterModel
from hf_adaptive_decoding.adapters.shipped import shipped_adapters
from hf_adaptive_decoding.default_model import load_default_model
from hf_adaptive_decoding.speculative.prompts import builtin_draft_prompts
from hf_adaptive_decoding.speculative.sources import layer_dropped_draft

SOURCES = ("prompt_lookup", "early_exit", "assistant_model")
SHIPPED = {"prompt_lookup": "smollm2-135m-draft-prompt-lookup", "early_exit": "smollm2-135m-draft-early-exit"}
SHIPPED["assistant_model"] = "smollm2-135m-draft-assistant"
FALLBACK = {"prompt_lookup": "outputs/smollm2-135m-draft-adapter"}


@contextmanager
def assistant_settings(config: GenerationConfig, **settings) -> Iterator[None]:
    """Set `num_assistant_tokens`-style fields on the config transformers reads them from, and restore them."""
    saved = {key: getattr(config, key) for key in settings}
    for key, value in settings.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


def _adapter_path(source: str, given: dict[str, str]) -> Path | None:
    if source in given:
        return Path(given[source])
    shipped = shipped_adapters()
    if SHIPPED[source] in shipped:
        return shipped[SHIPPED[source]]
    fallback = FALLBACK.get(source)
    return Path(fallback) if fallback and (Path(fallback) / "config.json").exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--adapter", action="append", default=[], help="source=folder of a draft adapter.")
    parser.add_argument("--arithmetic", type=int, default=4, help="Arithmetic test prompts.")
    parser.add_argument("--code", type=int, default=4, help="HumanEval test prompts.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2, help="Measured rounds (plus one warm-up).")
    parser.add_argument("--early-exit-layer", type=int, default=8)
    parser.add_argument("--draft-layers", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--output", help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(item.split("=", 1) for item in args.adapter)
    unknown = set(given) - set(SOURCES)
    if unknown:
        raise SystemExit(f"--adapter takes source=folder with source in {SOURCES}; got {sorted(unknown)}.")

    model, tokenizer = load_default_model()
    prompts = builtin_draft_prompts(tokenizer, "test", args.arithmetic, args.code)
    draft = layer_dropped_draft(model, args.draft_layers) if "assistant_model" in args.sources else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(prompts)} prompts (batch 1), greedy,")
    print(
        f"max_new_tokens {args.max_new_tokens}, {args.rounds} rounds + 1 warm-up; early exit at layer "
        f"{args.early_exit_layer}, draft model = first {args.draft_layers} of {model.config.num_hidden_layers} layers"
    )

    report = {"settings": {**vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()}}
    report["settings"]["num_prompts"] = len(prompts)
    report["sources"] = {}

    def run(input_ids: torch.LongTensor, **kwargs) -> torch.LongTensor:
        return model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=args.max_new_tokens,
            **kwargs,
        )

    for source in args.sources:
        sides: dict[str, Callable[[torch.LongTensor], torch.LongTensor]] = {"plain": run}
        if source == "prompt_lookup":
            for k in (2, 4, 8, 10):
                sides[f"hf constant {k}"] = lambda x, k=k: run(x, prompt_lookup_num_tokens=k)
            learned_kwargs = {"prompt_lookup_num_tokens": 10}
        else:
            config = draft.generation_config if source == "assistant_model" else model.generation_config
            extra = {"assistant_model": draft} if source == "assistant_model" else {}
            extra |= {"assistant_early_exit": args.early_exit_layer} if source == "early_exit" else {}
            schedules = [("constant", k) for k in (2, 4, 8)] + [("heuristic", 20), ("heuristic_transient", 20)]
            for schedule, k in schedules:
                name = f"hf {schedule} {k}" if schedule == "constant" else f"hf {schedule}"

                def side(x, schedule=schedule, k=k, config=config, extra=extra):
                    settings = {"num_assistant_tokens": k, "num_assistant_tokens_schedule": schedule}
                    with assistant_settings(config, **settings):
                        return run(x, **extra)

                sides[name] = side
            learned_kwargs = extra
        path = _adapter_path(source, given)
        if path is not None:
            adapter = AutoDecodingAdapter.from_pretrained(path)
            if not isinstance(adapter, DraftAdapterModel):
                raise SystemExit(f"{path} holds a {type(adapter).__name__}, not a draft adapter.")
            sides["learned"] = lambda x, a=adapter, kw=learned_kwargs: run(
                x, decoding_adapter=a, deterministic=True, **kw
            )
        names = list(sides)
        reference = [run(p) for p in prompts]
        rates: dict[str, list[float]] = {name: [] for name in names}
        progress = tqdm(total=(args.rounds + 1) * len(names), desc=f"{source} (round 0 warms up)", unit="side")
        with torch.inference_mode():
            for round_index in range(args.rounds + 1):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    progress.set_postfix_str(f"round {round_index}: {name}")
                    tokens, seconds = 0, 0.0
                    for prompt, expected in zip(prompts, reference, strict=True):
                        start = time.perf_counter()
                        out = sides[name](prompt)
                        seconds += time.perf_counter() - start
                        if not torch.equal(out, expected):
                            raise AssertionError(f"{source} / {name}: output differs from plain greedy")
                        tokens += out.shape[1] - prompt.shape[1]
                    if round_index:
                        rates[name].append(tokens / seconds)
                    progress.update(1)
        progress.close()
        print(f"\n{source}" + (f" (learned: {path})" if path else " (no draft adapter found: no learned side)"))
        header = f"  {'side':<26} {'tok/s':>7} {'ratio':>6}  {'min-max':<11}"
        print(header + "\n  " + "-" * (len(header) - 2))
        best_hf = max((n for n in names if n.startswith("hf")), key=lambda n: statistics.median(rates[n]))
        figures = {"adapter": str(path) if path else None, "best_hf": best_hf, "sides": {}}
        for name in names:
            ratios = [rate / base for rate, base in zip(rates[name], rates["plain"], strict=True)]
            mark = "  <- best hf" if name == best_hf else ""
            print(
                f"  {name:<26} {statistics.median(rates[name]):>7.1f} {statistics.median(ratios):>6.3f}  "
                f"{min(ratios):.3f}-{max(ratios):.3f}{mark}"
            )
            figures["sides"][name] = {
                "tokens_per_second": statistics.median(rates[name]),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        if "learned" in rates:
            versus = [a / b for a, b in zip(rates["learned"], rates[best_hf], strict=True)]
            print(
                f"  learned / best hf ({best_hf}): {statistics.median(versus):.3f} "
                f"({min(versus):.3f}-{max(versus):.3f})"
            )
            figures["learned_vs_best_hf"] = {
                "ratio": statistics.median(versus),
                "ratio_min": min(versus),
                "ratio_max": max(versus),
            }
        report["sources"][source] = figures
        if args.output:  # after every source, so a long run keeps what it measured
            Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
