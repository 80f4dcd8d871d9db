"""Train a draft adapter with REINFORCE on throughput: replayed speculative decoding, priced by a fitted cost model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..training.base import BaseAdapterTrainer, BaseTrainerConfig, renamed_field
from .calibration import calibrate_cost_model
from .modeling import CANDIDATE_SOURCES as SOURCES
from .modeling import DRAFT_FEATURES, DraftAdapterModel
from .simulation import (
    CycleCostModel,
    DraftTrace,
    collect_trace,
    cycle_advantages,
    decision_log_probs,
    episode_log_probs,
    simulate_drafting,
)

logger = logging.getLogger(__name__)


def _seed_step(seed: int, step: int, rank: int, warm_start: bool = False) -> None:
    """Seed one step's replay from (seed, step, process) alone, so a resumed run draws what an uninterrupted one
    draws; warm-start steps take the negative side, so they never share a seed with an RL step."""
    offset = step * 1_009 + rank
    torch.manual_seed(seed * 1_000_003 + (-offset if warm_start else offset))


@dataclass
class DraftTrainerConfig(BaseTrainerConfig):
    """
    Configuration of [`DraftTrainer`]. Field names follow TRL's `GRPOConfig` (and transformers' `TrainingArguments`)
    where they mean the same. Each field's `help` is what `recipes/train_draft.py --help` shows.

    Parameters:
        output_dir (`str`): checkpoints, traces, the cost model, metrics, plots and the final adapter.
        overwrite_output_dir (`bool`): start over in an `output_dir` that holds a previous run.
        source (`str`): the candidate source the adapter controls: `"early_exit"`, `"assistant_model"` or
            `"prompt_lookup"`.
        early_exit_layer (`int`, *optional*): early exit, the layer the draft exits at.
        max_draft_tokens (`int`): the adapter's cap on tokens drafted per cycle.
        max_completion_length (`int`): tokens generated per traced prompt.
        use_hidden_state (`bool`): whether the policy reads the target's hidden state.
        learning_rate (`float`), max_grad_norm (`float`): Adam and gradient clipping.
        max_steps (`int`): number of updates.
        per_device_train_batch_size (`int`): traced prompts replayed per process and step.
        num_generations (`int`): replays of each of those traces per step (at least 2).
        credit (`str`): how decisions are credited. `"cycle"` (default): by their own cycle's differential reward,
            its tokens minus what they cost at the policy's current speed-up, against the mean over the trace's
            cycles ([`cycle_advantages`]). `"episode"`: by the replay's whole speed-up against the mean of the trace's
            other replays (plain REINFORCE with a leave-one-out baseline; noisier).
        entropy_coef (`float`): bonus on the entropy of the stop decisions, against early collapse.
        warm_start_steps (`int`): before RL, this many steps of imitating the best fixed draft length on the training
            traces (0: start from the fresh adapter). RL then starts from the best schedule a fixed setting gives and
            explores around it, instead of from random stops that rarely hit a cheap length.
        warm_start_smoothing (`float`): label smoothing of that imitation, so that the sampled decisions still explore.
        warm_start_learning_rate (`float`): Adam's step size for the imitation (a sharp cut at one draft length
            needs large weights: faster than RL's).
        calibration_prompts (`int`), calibration_tokens (`int`): how much to time when fitting the cost model.
        load_best_model_at_end (`bool`): the saved adapter is the one with the best replayed validation speed-up
            among the evaluations (the one right after the warm start included), as with transformers' Trainer; the
            latest weights stay in the last checkpoint.
        eval_steps (`int`), save_steps (`int`), seed (`int`); and the run's bookkeeping of [`BaseTrainerConfig`]
            (`save_total_limit`, `logging_steps`, `report_to`, `run_name`, `disable_tqdm`).
        max_new_tokens, traces_per_step, rollouts: renamed `max_completion_length`, `per_device_train_batch_size` and
            `num_generations`; setting them is an error.
    """

    output_dir: str = field(
        default="outputs/draft-adapter",
        metadata={"help": "Where checkpoints, traces, the cost model, metrics, plots and the final adapter go."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds a previous run (its checkpoints, metrics and best-* "
            "copies are deleted; traces and the cost model are kept). Without it, such a folder is refused unless "
            "the run resumes."
        },
    )
    source: str = field(
        default="early_exit",
        metadata={"help": f"The candidate source the adapter controls: one of {', '.join(SOURCES)}."},
    )
    early_exit_layer: int | None = field(
        default=None, metadata={"help": "source=early_exit: the layer the draft exits at (required there)."}
    )
    max_draft_tokens: int = field(default=8, metadata={"help": "The adapter's cap on tokens drafted per cycle."})
    max_completion_length: int = field(default=64, metadata={"help": "Tokens generated (greedily) per traced prompt."})
    use_hidden_state: bool = field(
        default=True, metadata={"help": "Whether the policy reads the target's hidden state besides its features."}
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "Adam's learning rate for the RL steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradients are clipped to this norm."})
    max_steps: int = field(default=150, metadata={"help": "Number of RL updates (after the warm start)."})
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Traced prompts replayed per process and step (drawn with replacement)."}
    )
    num_generations: int = field(
        default=8,
        metadata={
            "help": "Replays of each trace per step, with sampled stop decisions; at least 2 (the episode credit's "
            "leave-one-out baseline)."
        },
    )
    credit: str = field(
        default="cycle",
        metadata={
            "help": "How decisions are credited: 'cycle' (each by its cycle's tokens minus their cost at the "
            "policy's current speed-up, against the mean over the trace's cycles) or 'episode' (by the replay's "
            "speed-up against the mean of the trace's other replays; noisier)."
        },
    )
    entropy_coef: float = field(
        default=0.01,
        metadata={"help": "Coefficient of the bonus on the entropy of the stop decisions, against early collapse."},
    )
    warm_start_steps: int = field(
        default=200,
        metadata={
            "help": "Before RL, this many steps of imitating the best fixed draft length on the training traces, on "
            "the adapter's own states. 0: RL starts from the fresh adapter."
        },
    )
    warm_start_smoothing: float = field(
        default=0.1,
        metadata={"help": "Label smoothing of the warm start's imitation, in [0, 0.5): the decisions still explore."},
    )
    warm_start_learning_rate: float = field(
        default=1e-2, metadata={"help": "Adam's learning rate for the warm start's imitation."}
    )
    calibration_prompts: int = field(
        default=3,
        metadata={"help": "Training prompts timed when fitting the cost model (output_dir/cost_model.json)."},
    )
    calibration_tokens: int = field(
        default=32, metadata={"help": "Tokens generated per calibration prompt and draft length."}
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={
            "help": "Save the adapter with the best replayed validation speed-up among the evaluations (the one "
            "after the warm start included); the latest weights stay in the last checkpoint."
        },
    )
    eval_steps: int = field(
        default=25, metadata={"help": "Replay the validation traces every this many steps and at the end."}
    )
    save_steps: int = field(default=25, metadata={"help": "Save a checkpoint every this many steps and at the end."})
    seed: int = field(
        default=42,
        metadata={"help": "Seeds the adapter's initialisation, the traces drawn and the sampled decisions."},
    )
    max_new_tokens: int | None = renamed_field("max_completion_length", "TRL's name for the generated length")
    traces_per_step: int | None = renamed_field(
        "per_device_train_batch_size", "TRL's name for the prompts per process and step"
    )
    rollouts: int | None = renamed_field("num_generations", "TRL's name for the samples per prompt")

    def __post_init__(self):
        self._check_renamed_and_trackers()
        self._check("source", self.source in SOURCES, f"one of {SOURCES}")
        if self.source == "early_exit" and self.early_exit_layer is None:
            raise ValueError("DraftTrainerConfig.source='early_exit' needs early_exit_layer (e.g. 8).")
        for name in ("max_draft_tokens", "max_completion_length", "max_steps", "per_device_train_batch_size"):
            self._check_int(name, 1)
        for name in ("eval_steps", "save_steps", "logging_steps"):
            self._check_int(name, 1)
        self._check_int("save_total_limit", 1, optional=True)
        self._check("num_generations", _is_int(self.num_generations, 2), "an int >= 2 (a leave-one-out baseline)")
        self._check_int("warm_start_steps", 0)
        self._check("warm_start_smoothing", 0.0 <= self.warm_start_smoothing < 0.5, "in [0, 0.5)")
        self._check("credit", self.credit in ("cycle", "episode"), "'cycle' or 'episode'")
        self._check("learning_rate", self.learning_rate > 0, "> 0")
        self._check("warm_start_learning_rate", self.warm_start_learning_rate > 0, "> 0")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


class DraftTrainer(BaseAdapterTrainer):
    """
    Learns a [`DraftAdapterModel`] for `model` and a candidate source, with REINFORCE on throughput.

    1. Traces: each training and validation prompt is generated greedily once, with the source's proposals along the
       way ([`collect_trace`]); cached in `output_dir/traces/`, so a resumed run does not redo them.
    2. Cost model: real speculative calls of every draft length are timed, giving a cost per draft length
       ([`calibrate_cost_model`], `output_dir/cost_model.json`), so rewards do not depend on the machine's noise.
    3. Warm start: the fixed draft length with the best replayed speed-up on the training traces is imitated for
       `warm_start_steps` steps, on the states the adapter itself reaches (label-smoothed, so it keeps exploring).
    4. Steps: `num_generations` replays of each of `per_device_train_batch_size` traces with sampled stop decisions
       (the output is the same in all of them: only the drafting differs), each decision credited by `credit`, plus
       an entropy bonus.

    Args:
        model ([`~transformers.PreTrainedModel`]): the target, frozen.
        args ([`DraftTrainerConfig`]).
        train_prompts, eval_prompts (`list[torch.LongTensor]`): prompts of shape `(1, length)`.
        adapter ([`DraftAdapterModel`], *optional*): to continue from; a fresh one by default.
        draft_model ([`~transformers.PreTrainedModel`], *optional*): the draft, for `source="assistant_model"`.
        base_model_revision (`str`, *optional*): the target's revision, recorded in a fresh adapter's config.
    """

    tracker_project_name = "hf_adaptive_decoding_draft"
    progress_description = "Training draft adapter"
    metric_for_best_model = "eval_speedup"
    optional_resumed_state = BaseAdapterTrainer.optional_resumed_state + ("best_eval_speedup",)

    def __init__(
        self,
        model: PreTrainedModel,
        args: DraftTrainerConfig,
        train_prompts: list[torch.LongTensor],
        eval_prompts: list[torch.LongTensor],
        adapter: DraftAdapterModel | None = None,
        draft_model: PreTrainedModel | None = None,
        base_model_revision: str | None = None,
    ):
        if not train_prompts or not eval_prompts:
            raise ValueError("DraftTrainer needs at least one training and one validation prompt.")
        if args.source == "assistant_model" and draft_model is None:
            raise ValueError("source='assistant_model' needs draft_model=.")
        super().__init__(args)
        self.model, self.draft_model = model.eval().requires_grad_(False), draft_model
        self.train_prompts, self.eval_prompts = train_prompts, eval_prompts
        set_seed(args.seed)
        adapter = adapter or DraftAdapterModel.for_model(
            model,
            base_model_revision=base_model_revision,
            max_draft_tokens=args.max_draft_tokens,
            use_hidden_state=args.use_hidden_state,
            candidate_source=args.source,
        )
        adapter.check_compatible(model)
        optimizer = torch.optim.Adam(adapter.parameters(), lr=args.learning_rate)
        self.adapter, self.optimizer = self.accelerator.prepare(adapter.train(), optimizer)

    # ------------------------------------------------------------------------------------------------ preparation

    def _traces(self, prompts: list[torch.LongTensor], split: str) -> list[DraftTrace]:
        """Each process traces its share of `prompts`; every trace is saved once and read by all processes."""
        args, accelerator = self.args, self.accelerator
        key = json.dumps([args.source, args.early_exit_layer, args.max_completion_length, args.max_draft_tokens])
        folder = self.output_dir / "traces" / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        folder.mkdir(parents=True, exist_ok=True)
        mine = range(accelerator.process_index, len(prompts), accelerator.num_processes)
        for index in tqdm(mine, desc=f"Tracing {split} prompts", disable=args.disable_tqdm):
            path = folder / f"{index}.pt"
            if path.exists():
                continue
            trace = collect_trace(
                self.model,
                prompts[index].to(self.model.device),
                args.source,
                args.max_completion_length,
                args.max_draft_tokens,
                draft_model=self.draft_model,
                early_exit_layer=args.early_exit_layer,
            )
            torch.save(asdict(trace), folder / f".{index}.pt.partial")
            os.replace(folder / f".{index}.pt.partial", path)  # a kill never leaves a truncated trace
        accelerator.wait_for_everyone()
        return [DraftTrace(**torch.load(folder / f"{index}.pt")) for index in range(len(prompts))]

    def _cost_model(self) -> CycleCostModel:
        path = self.output_dir / "cost_model.json"
        if self.accelerator.is_main_process and not path.exists():
            cost = calibrate_cost_model(
                self.model,
                self.train_prompts[: self.args.calibration_prompts],
                self.args.source,
                self.args.max_draft_tokens,
                draft_model=self.draft_model,
                early_exit_layer=self.args.early_exit_layer,
                max_new_tokens=self.args.calibration_tokens,
                disable_tqdm=self.args.disable_tqdm,
            )
            cost.to_json_file(path)
        self.accelerator.wait_for_everyone()
        return CycleCostModel.from_json_file(path)

    # ----------------------------------------------------------------------------------------------- training

    def _before_loop(self) -> None:
        """Trace the prompts, fit (or read) the cost model and, in a fresh run, warm start and validate at step 0."""
        if "best_eval_speedup" in self.state:  # a checkpoint written before the best-model code moved to the base
            self.state.setdefault("best_metric", self.state.pop("best_eval_speedup"))
        self.train_traces = self._traces(self.train_prompts, "train")
        self.eval_traces = self._traces(self.eval_prompts, "eval")
        self.cost_model = self._cost_model()
        if self.state["global_step"] == 0:
            if self.args.warm_start_steps:
                self._log({"step": 0, **self._warm_start()})
            self._evaluate_during_training(0)

    def _progress_postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"speedup": f"{metrics['speedup']:.3f}", "draft": f"{metrics['draft_length']:.2f}"}

    def _training_step(self, step: int) -> dict[str, float]:
        args, accelerator = self.args, self.accelerator
        start = time.perf_counter()
        draw = random.Random(f"{args.seed}:{step}:{accelerator.process_index}")
        traces = [draw.choice(self.train_traces) for _ in range(args.per_device_train_batch_size)]
        _seed_step(args.seed, step, accelerator.process_index)
        result = simulate_drafting(self.unwrapped_adapter, traces, self.cost_model, rollouts=args.num_generations)
        speedup = result.speedup.view(len(traces), args.num_generations).to(accelerator.device)
        hidden = result.hidden.to(accelerator.device) if args.use_hidden_state else None
        logits = self.adapter(result.features.to(accelerator.device), hidden).stop_logits.float()
        if args.credit == "cycle":
            advantages = cycle_advantages(result, args.num_generations).to(accelerator.device)
            policy_loss = -(advantages * decision_log_probs(logits, result)).sum() / len(result.speedup)
        else:
            others = (speedup.sum(dim=1, keepdim=True) - speedup) / (args.num_generations - 1)
            advantages = (speedup - others).flatten()
            policy_loss = -(advantages * episode_log_probs(logits, result)).mean()
        probs = torch.sigmoid(logits)
        logsigmoid = torch.nn.functional.logsigmoid
        entropy = -(probs * logsigmoid(logits) + (1 - probs) * logsigmoid(-logits))
        entropy = entropy.mean() if len(entropy) else logits.sum() * 0
        loss = policy_loss - args.entropy_coef * entropy
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(self.adapter.parameters(), args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        totals = torch.tensor(
            [
                float(speedup.mean()),
                float(result.drafted.sum()),
                float(result.accepted.sum()),
                float(result.cycles.sum()),
                float(probs.detach().mean()) if len(probs) else 0.0,
                float(loss.detach()),
                float(entropy.detach()),
            ],
            device=accelerator.device,
        )
        totals = accelerator.reduce(totals, "mean")
        return {
            "speedup": float(totals[0]),
            "draft_length": float(totals[1] / totals[3]),
            "acceptance": float(totals[2] / totals[1].clamp(min=1)),
            "stop_probability": float(totals[4]),
            "loss": float(totals[5]),
            "entropy": float(totals[6]),
            "grad_norm": float(grad_norm),
            "seconds": time.perf_counter() - start,
        }

    @torch.no_grad()
    def _fixed_length_speedups(self, traces: list[DraftTrace]) -> dict[int, float]:
        """Replayed speed-up of always drafting `k` tokens (as far as the source proposes), for every `k`."""
        speedups = {}
        for k in range(1, self.args.max_draft_tokens + 1):
            fixed = DraftAdapterModel.for_model(self.model, max_draft_tokens=k, initial_stop_probability=1e-4)
            speedups[k] = float(simulate_drafting(fixed, traces, self.cost_model, deterministic=True).speedup.mean())
        return speedups

    def _warm_start(self) -> dict[str, float]:
        """Imitate the best fixed draft length: draft (not stop) until it, stop there; on the adapter's own states."""
        args, accelerator = self.args, self.accelerator
        speedups = self._fixed_length_speedups(self.train_traces)
        best_length = max(speedups, key=speedups.get)
        optimizer = torch.optim.Adam(self.adapter.parameters(), lr=args.warm_start_learning_rate)
        position = DRAFT_FEATURES.index("position")
        progress = self._progress_bar(range(args.warm_start_steps), desc=f"Warm start (fixed length {best_length})")
        for step in progress:
            draw = random.Random(f"{args.seed}:warm:{step}:{accelerator.process_index}")
            traces = [draw.choice(self.train_traces) for _ in range(args.per_device_train_batch_size)]
            _seed_step(args.seed, step, accelerator.process_index, warm_start=True)
            result = simulate_drafting(self.unwrapped_adapter, traces, self.cost_model)
            features = result.features.to(accelerator.device)
            hidden = result.hidden.to(accelerator.device) if args.use_hidden_state else None
            drafted = (features[:, position] * args.max_draft_tokens).round()
            stop = (drafted >= best_length).float()
            labels = stop * (1 - args.warm_start_smoothing) + (1 - stop) * args.warm_start_smoothing
            logits = self.adapter(features, hidden).stop_logits.float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            agreement = float(((logits.detach() > 0).float() == stop).float().mean())
            progress.set_postfix(loss=f"{float(loss.detach()):.3f}", agreement=f"{agreement:.3f}")
        return {
            "warm_start_length": best_length,
            "warm_start_train_speedup": speedups[best_length],
            "warm_start_loss": float(loss.detach()),
            "warm_start_agreement": agreement,
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Replayed speed-up on the validation traces: the adapter's most likely decisions, and every fixed length."""
        adapter = self.unwrapped_adapter.eval()
        results = {
            "eval_speedup": float(
                simulate_drafting(adapter, self.eval_traces, self.cost_model, deterministic=True).speedup.mean()
            )
        }
        for k, speedup in self._fixed_length_speedups(self.eval_traces).items():
            results[f"eval_speedup_fixed/{k}"] = speedup
        results["eval_speedup_best_fixed"] = max(
            v for key, v in results.items() if key.startswith("eval_speedup_fixed/")
        )
        adapter.train()
        return results

    # ------------------------------------------------------------------------------------------------- output

    def _evaluate_during_training(self, step: int) -> None:
        """Validate, log, and keep a copy of the adapter when it is the best so far (traces and the cost model stay
        when a run is discarded: they do not depend on the policy)."""
        results = self.evaluate()
        self._log({"step": step, **results})
        self._keep_if_best(step, results)

    def _finish(self) -> dict[str, Any]:
        """Save the adapter with its validation results, and plot the run; returns those results."""
        adapter = self.unwrapped_adapter
        evals = [entry for entry in self.state["log_history"] if "eval_speedup" in entry]
        final = evals[-1]
        if self.args.load_best_model_at_end and "best_step" in self.state:
            best_step = self.state["best_step"]
            final = {**next(e for e in evals if e["step"] == best_step), "best_step": best_step}
        if not self.accelerator.is_main_process:
            return final
        adapter = self._best_adapter() or adapter
        adapter.save_pretrained(self.output_dir)
        (self.output_dir / "eval_results.json").write_text(json.dumps(final, indent=2))
        from .reporting import plot_draft_training

        plot_draft_training(self.state["log_history"], self.output_dir / "plots")
        return final
