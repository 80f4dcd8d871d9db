"""`hf-adaptive-decoding generate`: generate with a decoding adapter and show which action produced each token;
`adapters`: list the shipped adapters; `serve`: vLLM's OpenAI-compatible server with an adapter inside."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.text import Text
from transformers import TextStreamer, set_seed

from .adapters import shipped
from .adapters.configuration import ACTION_PRESETS, DecodingAction
from .adapters.modeling import AutoDecodingAdapter, DecodingAdapterModel
from .adapters.shipped import resolve_adapter
from .data.prompting import encode_chat
from .default_model import default_model_revision, load_default_model
from .speculative.calibration import source_kwargs
from .speculative.modeling import CANDIDATE_SOURCES, DraftAdapterModel
from .speculative.sources import layer_dropped_draft

ACTION_COLORS = [
    "bright_blue",
    "green",
    "yellow",
    "red",
    "magenta",
    "cyan",
    "bright_green",
    "orange3",
    "purple",
    "blue",
]
CONFIDENT = 0.95  # the paper's mask threshold: above it, the action rarely changes the sampled token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-adaptive-decoding", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="Generate with a decoding adapter and show its per-token actions.")
    gen.add_argument("--prompt", action="append", required=True, help="A user message (repeat for a batch).")
    gen.add_argument(
        "--adapter",
        help="A shipped adapter's short name (see `hf-adaptive-decoding adapters`), a folder or a Hub id. Default: a "
        "fresh, untrained adapter (--preset).",
    )
    gen.add_argument("--preset", default="math-token", choices=sorted(ACTION_PRESETS), help="For a fresh adapter.")
    gen.add_argument("--model", help="Hub id or folder of the LM. Default: the embedded SmolLM2-135M-Instruct.")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--num-return-sequences", type=int, default=1)
    gen.add_argument("--deterministic", action="store_true", help="Take the policy's most likely action.")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--system", help="Optional system message.")
    gen.add_argument("--no-actions", action="store_true", help="Stream plain text instead of coloured actions.")
    gen.add_argument("--device", default=None)
    draft = gen.add_argument_group("draft adapters (speculative decoding, greedy, one prompt at a time)")
    draft.add_argument(
        "--source",
        choices=CANDIDATE_SOURCES,
        help="Candidate source. Default: the one the adapter was trained for (else prompt_lookup).",
    )
    draft.add_argument("--early-exit-layer", type=int, help="source=early_exit: the layer the draft exits at.")
    draft.add_argument(
        "--draft-model", help="source=assistant_model: Hub id or folder of the draft (default: --draft-layers)."
    )
    draft.add_argument(
        "--draft-layers", type=int, help="source=assistant_model: draft with the target's first N layers."
    )
    commands.add_parser("adapters", help="List the shipped adapters (short names for --adapter).")
    serve = commands.add_parser(
        "serve",
        help="vLLM's OpenAI-compatible server with a decoding adapter inside (needs vLLM; docs/vllm.md). Options it "
        "does not know are vLLM's (e.g. --max-model-len 1024 --dtype float32).",
    )
    serve.add_argument("--adapter", required=True, help="A shipped adapter's short name, a folder or a Hub id.")
    serve.add_argument("--model", help="Hub id or folder of the LM. Default: the embedded SmolLM2-135M-Instruct.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--deterministic", action="store_true", help="Take the policy's most likely action.")
    return parser


def adapters_command(console: Console) -> int:
    adapters = shipped.shipped_adapters()
    if not adapters:
        where = shipped.SHIPPED_ADAPTERS_DIR
        console.print(
            f"No shipped adapters found in {where} (they come with the package, or with a checkout of the repo)."
        )
        return 0
    for name, folder in adapters.items():
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") == "draft_adapter":
            source = config.get("candidate_source") or "any source"
            console.print(f"[bold]{name}[/]  draft adapter for {source}, up to {config['max_draft_tokens']} tokens")
            console.print(f"    {folder}", style="dim")
            continue
        decoding = config.get("decoding", {})
        names = [DecodingAction.from_dict(action).name for action in decoding.get("actions", [])]
        budget = decoding.get("budget_feature") or "none"
        console.print(f"[bold]{name}[/]  {decoding.get('level')} level, budget feature {budget}, actions {names}")
        console.print(f"    {folder}", style="dim")
    return 0


def _render(tokenizer, token_ids, actions, max_probs) -> Text:
    text = Text()
    for token_id, action, max_prob in zip(token_ids, actions, max_probs, strict=False):
        if action < 0:
            break
        piece = tokenizer.decode([token_id], skip_special_tokens=True)
        style = "dim" if max_prob > CONFIDENT else ACTION_COLORS[action % len(ACTION_COLORS)]
        text.append(piece, style=style)
    return text


def _legend(action_names: Sequence[str]) -> Text:
    legend = Text("actions: ")
    for index, name in enumerate(action_names):
        legend.append(f"[{index}] {name}", style=ACTION_COLORS[index % len(ACTION_COLORS)])
        legend.append("  ")
    legend.append(f"dim = next-token max probability > {CONFIDENT}", style="dim")
    return legend


def generate_command(args: argparse.Namespace, console: Console) -> int:
    set_seed(args.seed)
    model, tokenizer = load_default_model(args.model, device=args.device)
    if args.adapter:
        adapter = AutoDecodingAdapter.from_pretrained(resolve_adapter(args.adapter))
        adapter.to(model.device)
    else:
        revision = default_model_revision() if args.model is None else None
        adapter = AutoDecodingAdapter.for_model(model, args.preset, base_model_revision=revision)
        console.print(f"[bold]No --adapter given: using a fresh, untrained {args.preset!r} adapter (uniform policy).")
    if isinstance(adapter, DraftAdapterModel):
        return draft_generate_command(args, model, tokenizer, adapter.eval(), console)
    if not isinstance(adapter, DecodingAdapterModel):
        raise ValueError(f"{args.adapter!r} is a {type(adapter).__name__}, not a sampling decoding adapter.")
    adapter.eval()
    action_names = adapter.decoding_config.action_names

    inputs = encode_chat(tokenizer, args.prompt, args.system, device=model.device)
    prompt_length = inputs["input_ids"].shape[1]
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if args.no_actions else None
    out = model.generate(
        **inputs,
        decoding_adapter=adapter,
        deterministic=args.deterministic,
        max_new_tokens=args.max_new_tokens,
        num_return_sequences=args.num_return_sequences,
        return_dict_in_generate=True,
        output_logits=True,
        streamer=streamer if len(args.prompt) * args.num_return_sequences == 1 else None,
    )
    if args.no_actions:
        if streamer is None:
            for text in tokenizer.batch_decode(out.sequences[:, prompt_length:], skip_special_tokens=True):
                console.print(text, markup=False, highlight=False)
        return 0

    max_probs = torch.stack([logits.float().softmax(-1).amax(-1) for logits in out.logits], dim=1)
    actions = out.decoding_actions
    if actions.dim() == 1:  # sequence level: one action for the whole sequence
        actions = actions[:, None].expand(-1, max_probs.shape[1])
        actions = actions.masked_fill(out.sequences[:, prompt_length:] == tokenizer.pad_token_id, -1)
    console.print(_legend(action_names))
    for row in range(out.sequences.shape[0]):
        prompt_index = row // args.num_return_sequences
        console.rule(f"prompt {prompt_index}: {args.prompt[prompt_index][:60]}")
        chosen = actions[row].tolist()
        console.print(_render(tokenizer, out.sequences[row, prompt_length:].tolist(), chosen, max_probs[row].tolist()))
        used = [a for a in chosen if a >= 0]
        counts = ", ".join(f"[{i}] {used.count(i)}" for i in range(len(action_names)) if used.count(i))
        console.print(Text(f"{len(used)} tokens; actions used: {counts}", style="italic"))
    return 0


def draft_generate_command(args: argparse.Namespace, model, tokenizer, adapter: DraftAdapterModel, console) -> int:
    """Greedy speculative decoding under a draft adapter; drafted tokens the target accepted are shown in colour."""
    source = args.source or adapter.config.candidate_source or "prompt_lookup"
    draft_model = None
    if source == "assistant_model":
        if args.draft_model:
            draft_model, _ = load_default_model(args.draft_model, device=args.device)
        elif args.draft_layers:
            draft_model = layer_dropped_draft(model, args.draft_layers)
        else:
            raise ValueError("--source assistant_model needs --draft-model or --draft-layers.")
    kwargs = source_kwargs(source, adapter.max_draft_tokens, draft_model, args.early_exit_layer)
    console.print(
        Text(f"{source}, up to {adapter.max_draft_tokens} drafted tokens per cycle; ", style="italic")
        + Text("drafted and accepted", style="green")
        + Text(" / the target's own token", style="italic")
    )
    for index, prompt in enumerate(args.prompt):  # transformers drafts for one sequence at a time
        inputs = encode_chat(tokenizer, [prompt], args.system, device=model.device)
        start = time.perf_counter()
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=args.max_new_tokens,
            decoding_adapter=adapter,
            deterministic=args.deterministic,
            return_dict_in_generate=True,
            **kwargs,
        )
        seconds = time.perf_counter() - start
        new_tokens = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        from_draft = []
        for accepted in out.accepted_lengths.tolist():
            from_draft += [True] * accepted + [False]
        console.rule(f"prompt {index}: {prompt[:60]}")
        text = Text()
        for token_id, drafted in zip(new_tokens, from_draft, strict=False):
            text.append(tokenizer.decode([token_id], skip_special_tokens=True), style="green" if drafted else "")
        console.print(text)
        drafted, accepted = int(out.draft_lengths.sum()), int(out.accepted_lengths.sum())
        console.print(
            Text(
                f"{len(new_tokens)} tokens in {len(out.draft_lengths)} cycles, {seconds:.2f} s "
                f"({len(new_tokens) / seconds:.1f} tok/s); drafted {drafted}, accepted {accepted}"
                + (f" ({accepted / drafted:.0%})" if drafted else ""),
                style="italic",
            )
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, passed_on = parser.parse_known_args(argv)
    if passed_on and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    console = Console(highlight=False)
    try:
        if args.command == "generate":
            return generate_command(args, console)
        if args.command == "adapters":
            return adapters_command(console)
        if args.command == "serve":
            from .vllm import require_vllm

            require_vllm("hf-adaptive-decoding serve")
            from .vllm.serve import serve, vllm_serve_argv

            serve(vllm_serve_argv(args.adapter, args.model, args.host, args.port, args.deterministic, passed_on))
            return 0
    except (ValueError, ImportError, OSError) as error:
        console.print(f"[bold red]error:[/] {error}", markup=True)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
