"""Generated tokens/s of vLLM plain sampling, vLLM with a sequence and a token adapter, and transformers `generate`
with the token adapter, as ratios to vLLM plain.

    .venv-vllm/bin/python benchmarks/vllm_throughput.py [--prompts 1 32 256] [--new-tokens 64] [--rounds 3]

Default model (SmolLM2-135M-Instruct, float32), the same chat prompts for every variant, exactly `--new-tokens` new
tokens per completion (`min_tokens = max_tokens`, so EOS shortens no variant). The three vLLM engines live side by
side in this process and the variants run interleaved, round by round, so machine noise hits them alike; the figure
is the median over rounds. The adapters are fresh (uniform policies: every action is drawn, so truncating actions
cost what they cost). Transformers runs at most `--hf-max-prompts` prompts at once (its padded batch), and is skipped
above that.
"""

import argparse
import gc
import os
import statistics
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
# Every engine in this process, as AdaptiveLLM runs its own: otherwise plain vLLM alone would pay for a separate
# engine-core process (and, on 2 cores, compete with it).
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hf-max-prompts", type=int, default=32)
    parser.add_argument("--token-preset", default="math-token")
    parser.add_argument("--sequence-preset", default="math-seq")
    args = parser.parse_args()

    import tempfile

    import torch
    import vllm
    from vllm import SamplingParams

    from hf_adaptive_decoding import AutoDecodingAdapter
    from hf_adaptive_decoding.default_model import build_default_model_cache, load_default_model
    from hf_adaptive_decoding.vllm import AdaptiveLLM

    model, tokenizer = load_default_model()
    folder = tempfile.mkdtemp(prefix="vllm-bench-")
    adapters = {}
    for level, preset in (("token", args.token_preset), ("sequence", args.sequence_preset)):
        adapters[level] = AutoDecodingAdapter.for_model(model, preset).eval()
        adapters[level].save_pretrained(f"{folder}/{level}")
    engine = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "seed": 0}
    engines = {
        "vLLM plain": vllm.LLM(model=str(build_default_model_cache()), generation_config="vllm", **engine),
        "vLLM + sequence adapter": AdaptiveLLM(decoding_adapter=f"{folder}/sequence", **engine),
        "vLLM + token adapter": AdaptiveLLM(decoding_adapter=f"{folder}/token", **engine),
    }
    questions = [f"What is {a} + {b}? Put the answer in \\boxed{{}}." for a in range(11, 99) for b in (3, 28, 56)]
    # No per-request seed: vLLM-CPU 0.32 crashes on seeded requests whose prefill is chunked (256 prompts here):
    # `RuntimeError: CPU Generator does not use offset` in the model runner's bookkeeping.
    params = SamplingParams(max_tokens=args.new_tokens, min_tokens=args.new_tokens)

    def run_vllm(name, conversations):
        outputs = engines[name].chat(conversations, params, use_tqdm=False)
        return sum(len(output.outputs[0].token_ids) for output in outputs)

    def run_transformers(conversations):
        inputs = tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(
            **inputs,
            decoding_adapter=adapters["token"],
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            return_dict_in_generate=True,
        )
        return (out.sequences.shape[1] - inputs["input_ids"].shape[1]) * len(conversations)

    print(f"torch {torch.__version__}, vLLM {vllm.__version__}, {os.cpu_count()} CPUs; {args.new_tokens} tokens each")
    names = [*engines, "transformers + token adapter"]
    header = f"{'prompts':>7} " + " ".join(f"{name + ' tok/s':>30}" for name in names)
    ratio_labels = ["vLLM seq / plain", "vLLM token / plain", "HF token / plain"]
    print(header + "  " + " ".join(f"{label:>22}" for label in ratio_labels))
    for count in args.prompts:
        conversations = [[{"role": "user", "content": questions[i % len(questions)]}] for i in range(count)]
        rates = {name: [] for name in names}
        for _ in range(args.rounds + 1):  # the first round warms up and is not counted
            measured = {}
            for name in names:
                if name.startswith("transformers") and count > args.hf_max_prompts:
                    continue
                gc.collect()
                start = time.perf_counter()
                hf = name.startswith("transformers")
                tokens = run_transformers(conversations) if hf else run_vllm(name, conversations)
                measured[name] = tokens / (time.perf_counter() - start)
            for name, rate in measured.items():
                rates[name].append(rate)
        medians = {name: statistics.median(values[1:]) if len(values) > 1 else None for name, values in rates.items()}
        plain = medians["vLLM plain"]
        cells = " ".join(f"{'-' if medians[n] is None else f'{medians[n]:.1f}':>30}" for n in names)
        ratios = " ".join(f"{'-' if medians[n] is None else f'{medians[n] / plain:.2f}x':>22}" for n in names[1:])
        print(f"{count:>7} {cells}  {ratios}", flush=True)


if __name__ == "__main__":
    main()
