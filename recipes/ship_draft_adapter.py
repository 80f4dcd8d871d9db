"""Lay a trained draft adapter out as a Hub repo in model_cards/<name>/: config, weights, cost model, validation
results, training plots and a model card with the benchmark measured by benchmarks/speculative.py.

    python recipes/train_draft.py                                   # -> outputs/smollm2-135m-draft-adapter
    python benchmarks/speculative.py --sources prompt_lookup --output recipes/results/speculative/benchmark.json
    python recipes/ship_draft_adapter.py --run_dir outputs/smollm2-135m-draft-adapter \
        --name smollm2-135m-draft-prompt-lookup --benchmark recipes/results/speculative/benchmark.json

The folder is then published with `huggingface-cli upload <repo> model_cards/<name>` (it is already laid out as the
repo), or `AutoDecodingAdapter.from_pretrained(folder).push_to_hub(repo)` for the weights alone.
"""

import json
import shutil
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData
from transformers import HfArgumentParser

from hf_adaptive_decoding.speculative.modeling import DRAFT_FEATURES
from hf_adaptive_decoding.speculative.trainer import DraftTrainerConfig

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "model_cards" / "templates" / "shipped_draft_adapter.md"
DEFAULT_CONFIG = ROOT / "recipes" / "configs" / "train_draft.yaml"
COPIED = {"config.json": "config.json", "model.safetensors": "model.safetensors", "cost_model.json": "cost_model.json"}
COPIED["eval_results.json"] = "validation_results.json"


@dataclass
class ShipDraftArguments:
    run_dir: str = field(metadata={"help": "Output folder of recipes/train_draft.py."})
    name: str = field(metadata={"help": "Short name: the folder under model_cards/ and the Hub repo's name."})
    benchmark: str = field(metadata={"help": "JSON written by benchmarks/speculative.py --output."})
    model_cards_dir: str = field(default="model_cards", metadata={"help": "Where the adapter folder goes."})


def _source_text(source: str, settings: dict, bench: dict) -> tuple[str, str, str, str]:
    """Title, description, generate() argument and CLI flags of a candidate source."""
    if source == "prompt_lookup":
        return (
            "prompt lookup",
            "prompt lookup (`prompt_lookup_num_tokens=`): the continuation of the latest earlier occurrence of the "
            "last n-gram of the prompt and output. It needs no draft model.",
            "prompt_lookup_num_tokens=10",
            "",
        )
    if source == "early_exit":
        layer = settings["early_exit_layer"]
        return (
            f"early exit at layer {layer}",
            f"early exit of the target itself at layer {layer} (`assistant_early_exit={layer}`): self-speculation, "
            "with no second model.",
            f"assistant_early_exit={layer}",
            f"--early-exit-layer {layer} ",
        )
    layers = bench["settings"]["draft_layers"]
    return (
        f"a {layers}-layer draft model",
        f"a separate draft model, the target's first {layers} layers (`layer_dropped_draft(model, {layers})`, "
        "passed as `assistant_model=`).",
        f"assistant_model=layer_dropped_draft(model, {layers})",
        f"--draft-layers {layers} ",
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _training_settings(run_dir: Path, source: str, bench: dict) -> dict:
    """The run's `DraftTrainerConfig` as its last checkpoint recorded it, under the current field names."""
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint with the training settings (trainer_state.json).")
    settings = DraftTrainerConfig.with_current_names(json.loads(states[-1].read_text())["config"])
    if source == "early_exit" and settings["early_exit_layer"] != bench["settings"]["early_exit_layer"]:
        raise ValueError(
            f"The adapter was trained for early exit at layer {settings['early_exit_layer']}, the benchmark used "
            f"{bench['settings']['early_exit_layer']}."
        )
    return settings


def _train_overrides(run_dir: Path, settings: dict, source: str, bench_settings: dict) -> dict:
    """What the run set apart from train_draft.py's defaults (the YAML over the dataclass): the command line that
    reproduces it, with the script's own arguments (prompt counts, the draft or model)."""
    renamed = DraftTrainerConfig.renamed_fields()
    defaults = {f.name: f.default for f in fields(DraftTrainerConfig) if f.default is not MISSING}
    defaults = {name: value for name, value in defaults.items() if name not in renamed}
    defaults |= yaml.safe_load(DEFAULT_CONFIG.read_text())
    skipped = {"output_dir", "overwrite_output_dir", "disable_tqdm"}
    overrides = {k: v for k, v in settings.items() if k in defaults and defaults[k] != v and k not in skipped}
    script_path = run_dir / "script_args.json"
    script_args = json.loads(script_path.read_text()) if script_path.exists() else {}
    for key, value in script_args.items():
        if key != "resume_from_checkpoint" and value is not None and defaults.get(key) != value:
            overrides[key] = value
    if (
        source == "assistant_model"
        and overrides.get("draft_model_layers", bench_settings["draft_layers"]) != (bench_settings["draft_layers"])
    ):
        raise ValueError(
            f"The adapter was trained with a {overrides['draft_model_layers']}-layer draft, the benchmark used "
            f"{bench_settings['draft_layers']} layers."
        )
    return overrides


def _cost_section(cost: dict) -> str:
    """The fitted cost per draft length, with a caveat when a cycle that drafts nothing is priced below the plain
    step."""
    counts = {k: count for k, _, count in cost["measurements"]}
    cost_table = _table(
        ["drafted tokens k", *(str(k) for k in range(len(cost["seconds_by_length"])))],
        [
            ["ms per cycle", *(f"{1000 * s:.0f}" for s in cost["seconds_by_length"])],
            ["cycles timed", *(str(counts.get(k, 0)) for k in range(len(cost["seconds_by_length"])))],
        ],
    )
    if cost["seconds_by_length"][0] >= cost["plain_step"]:
        return cost_table
    return cost_table + (
        f"\n\nA cycle that drafts nothing is priced at {1000 * cost['seconds_by_length'][0]:.0f} ms, below the "
        f"plain step's {1000 * cost['plain_step']:.0f} ms, although it runs the same forward pass: the few such "
        "cycles the calibration times come at the ends of its calls, and the plain step is timed through "
        "`generate`. So the replay flatters a policy that mostly skips drafting; the benchmark below measures "
        "what it really does."
    )


def _replay_table(evals: dict) -> str:
    fixed = sorted((int(key.split("/")[1]), v) for key, v in evals.items() if key.startswith("eval_speedup_fixed/"))
    return _table(
        ["policy", "replayed speed-up"],
        [["this adapter (most likely decisions)", f"**{evals['eval_speedup']:.3f}**"]]
        + [[f"always draft {k}", f"{v:.3f}"] for k, v in fixed],
    )


def _benchmark_section(measured: dict, source: str) -> tuple[str, str]:
    """The benchmark's table of sides, and the verdict against the best transformers schedule."""
    rows = []
    for side, figures in measured["sides"].items():
        label = "this adapter" if side == "learned" else side.replace("hf ", "transformers ")
        ratio = f"{figures['ratio']:.3f} ({figures['ratio_min']:.3f}–{figures['ratio_max']:.3f})"
        rows.append([label, f"{figures['tokens_per_second']:.1f}", ratio])
    best_hf = measured["best_hf"].replace("hf ", "transformers ")
    versus = measured.get("learned_vs_best_hf")
    if versus is None:
        raise ValueError(f"The benchmark has no learned side for {source}: run it with this adapter.")
    if versus["ratio_min"] > 1:
        outcome = "faster than"
    elif versus["ratio_max"] < 1:
        outcome = "slower than"
    else:
        outcome = "not clearly different from"
    verdict = (
        f"Against the best transformers schedule for this source ({best_hf}), the adapter's tokens/s ratio is "
        f"{versus['ratio']:.3f} ({versus['ratio_min']:.3f}–{versus['ratio_max']:.3f} over rounds): {outcome} it."
    )
    return _table(["side", "tokens/s", "ratio to plain"], rows), verdict


def render_card(run_dir: Path, name: str, bench: dict) -> str:
    config = json.loads((run_dir / "config.json").read_text())
    source = config["candidate_source"]
    if source not in bench["sources"]:
        raise ValueError(f"The benchmark measured {sorted(bench['sources'])}, not this adapter's source {source!r}.")
    settings = _training_settings(run_dir, source, bench)
    bench_settings = bench["settings"]
    overrides = _train_overrides(run_dir, settings, source, bench_settings)
    cost = json.loads((run_dir / "cost_model.json").read_text())
    benchmark_table, verdict = _benchmark_section(bench["sources"][source], source)
    title, description, generate_source, cli_source = _source_text(source, settings, bench)
    benchmark_setup = (
        f"{bench_settings['num_prompts']} test prompts ({bench_settings['arithmetic']} arithmetic, "
        f"{bench_settings['code']} HumanEval), batch 1, {bench_settings['max_new_tokens']} new tokens each, "
        f"{bench_settings['rounds']} measured rounds after a warm-up, all sides interleaved, torch "
        f"{bench_settings['torch']} on {bench_settings['threads']} CPU threads"
    )
    train_args = " ".join(f"--{k} {v}" for k, v in overrides.items())
    if source == "assistant_model" and "draft_model_layers" not in overrides:
        train_args += f" --draft_model_layers {bench_settings['draft_layers']}"
    train_args += f" --output_dir {run_dir}"
    benchmark_args = f"--sources {source} --arithmetic {bench_settings['arithmetic']} --code {bench_settings['code']}"
    benchmark_args += f" --max-new-tokens {bench_settings['max_new_tokens']} --rounds {bench_settings['rounds']}"
    benchmark_args += f" --adapter {source}=model_cards/{name}"
    train_folders = list((run_dir / "traces").glob("train-*"))
    eval_folders = list((run_dir / "traces").glob("eval-*"))
    text = TEMPLATE.read_text().format(
        name=name,
        imports="AutoDecodingAdapter, layer_dropped_draft, load_default_model"
        if source == "assistant_model"
        else "AutoDecodingAdapter, load_default_model",
        base_model=config["base_model_name_or_path"],
        base_revision=config.get("base_model_revision"),
        source_title=title,
        source_description=description,
        generate_source=generate_source,
        cli_source=cli_source,
        max_draft_tokens=config["max_draft_tokens"],
        features=", ".join(DRAFT_FEATURES),
        steps=settings["max_steps"],
        num_train=len(list(train_folders[0].glob("*.pt"))) if train_folders else "?",
        num_eval=len(list(eval_folders[0].glob("*.pt"))) if eval_folders else "?",
        overrides=json.dumps(overrides) if overrides else "none",
        plain_ms=f"{1000 * cost['plain_step']:.0f}",
        cost_table=_cost_section(cost),
        replay_table=_replay_table(json.loads((run_dir / "eval_results.json").read_text())),
        settings=json.dumps(settings, indent=2),
        benchmark_setup=benchmark_setup,
        benchmark_table=benchmark_table,
        verdict=verdict,
        train_args=train_args.strip(),
        benchmark_args=benchmark_args,
    )
    card_data = ModelCardData(
        base_model=config["base_model_name_or_path"],
        base_model_relation="adapter",
        library_name="hf-adaptive-decoding",
        license="apache-2.0",
        tags=["hf-adaptive-decoding", "draft-adapter", "speculative-decoding", source.replace("_", "-"), "reinforce"],
    )
    return f"---\n{card_data.to_yaml()}\n---\n\n{text}"


def ship(run_dir: Path, target: Path, name: str, bench: dict) -> None:
    card = render_card(run_dir, name, bench)  # first: a run that cannot be described is not shipped
    target.mkdir(parents=True, exist_ok=True)
    for source, destination in COPIED.items():
        shutil.copy2(run_dir / source, target / destination)
    if (run_dir / "plots").is_dir():
        shutil.copytree(run_dir / "plots", target / "plots", dirs_exist_ok=True)
    (target / "benchmark.json").write_text(json.dumps(bench, indent=2))
    ModelCard(card).save(target / "README.md")


def main() -> None:
    (args,) = HfArgumentParser(ShipDraftArguments).parse_args_into_dataclasses()
    run_dir = Path(args.run_dir)
    for filename in COPIED:
        if not (run_dir / filename).exists():
            raise FileNotFoundError(f"{run_dir / filename} does not exist: train the adapter with train_draft.py.")
    bench = json.loads(Path(args.benchmark).read_text())
    target = Path(args.model_cards_dir) / args.name
    ship(run_dir, target, args.name, bench)
    print(f"Shipped {run_dir} -> {target}")


if __name__ == "__main__":
    main()
