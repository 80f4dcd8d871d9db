"""Train a draft adapter with REINFORCE on throughput: replayed speculative decoding, priced by a fitted cost model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..training import checkpointing
from ..training.config import REPORT_TO
from ..training.reporting import MetricsWriter
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


@dataclass
class DraftTrainerConfig:
    """
    Configuration of [`DraftTrainer`].

    Parameters:
        output_dir (`str`): checkpoints, traces, the cost model, metrics, plots and the final adapter.
        overwrite_output_dir (`bool`): start over in an `output_dir` that holds a previous run.
        source (`str`): the candidate source the adapter controls: `"early_exit"`, `"assistant_model"` or
            `"prompt_lookup"`.
        early_exit_layer (`int`, *optional*): early exit, the layer the draft exits at.
        max_draft_tokens (`int`): the adapter's cap on tokens drafted per cycle.
        max_new_tokens (`int`): tokens generated per traced prompt.
        use_hidden_state (`bool`): whether the policy reads the target's hidden state.
        learning_rate (`float`), max_grad_norm (`float`): Adam and gradient clipping.
        max_steps (`int`): number of updates.
        traces_per_step (`int`): traced prompts replayed per process and step.
        rollouts (`int`): replays per trace and step.
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
        eval_steps (`int`), save_steps (`int`), save_total_limit (`int`, *optional*), logging_steps (`int`).
        report_to (`list[str]`): trackers for `accelerator.log` ("none", "tensorboard", "wandb", ...).
        run_name (`str`, *optional*), seed (`int`), disable_tqdm (`bool`).
    """

    output_dir: str = "outputs/draft-adapter"
    overwrite_output_dir: bool = False
    source: str = "early_exit"
    early_exit_layer: int | None = None
    max_draft_tokens: int = 8
    max_new_tokens: int = 64
    use_hidden_state: bool = True
    learning_rate: float = 3e-3
    max_grad_norm: float = 1.0
    max_steps: int = 150
    traces_per_step: int = 16
    rollouts: int = 8
    credit: str = "cycle"
    entropy_coef: float = 0.01
    warm_start_steps: int = 200
    warm_start_smoothing: float = 0.1
    warm_start_learning_rate: float = 1e-2
    calibration_prompts: int = 3
    calibration_tokens: int = 32
    load_best_model_at_end: bool = True
    eval_steps: int = 25
    save_steps: int = 25
    save_total_limit: int | None = 2
    logging_steps: int = 1
    report_to: list[str] = field(default_factory=lambda: ["none"])
    run_name: str | None = None
    seed: int = 42
    disable_tqdm: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"DraftTrainerConfig.source must be one of {SOURCES}, got {self.source!r}.")
        if self.source == "early_exit" and self.early_exit_layer is None:
            raise ValueError("DraftTrainerConfig.source='early_exit' needs early_exit_layer (e.g. 8).")
        for name in ("max_draft_tokens", "max_new_tokens", "max_steps", "traces_per_step", "eval_steps", "save_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DraftTrainerConfig.{name} must be an int >= 1, got {value!r}.")
        if isinstance(self.rollouts, bool) or not isinstance(self.rollouts, int) or self.rollouts < 2:
            raise ValueError(
                f"DraftTrainerConfig.rollouts must be an int >= 2 (a leave-one-out baseline), got {self.rollouts!r}."
            )
        if (
            isinstance(self.warm_start_steps, bool)
            or not isinstance(self.warm_start_steps, int)
            or self.warm_start_steps < 0
        ):
            raise ValueError(
                f"DraftTrainerConfig.warm_start_steps must be an int >= 0, got {self.warm_start_steps!r}."
            )
        if not 0.0 <= self.warm_start_smoothing < 0.5:
            raise ValueError(
                f"DraftTrainerConfig.warm_start_smoothing must be in [0, 0.5), got {self.warm_start_smoothing}."
            )
        if self.credit not in ("cycle", "episode"):
            raise ValueError(f"DraftTrainerConfig.credit must be 'cycle' or 'episode', got {self.credit!r}.")
        if not self.learning_rate > 0 or not self.warm_start_learning_rate > 0:
            raise ValueError(
                f"DraftTrainerConfig.learning_rate and warm_start_learning_rate must be > 0, got {self.learning_rate} "
                f"and {self.warm_start_learning_rate}."
            )
        unknown = set(self.report_to) - set(REPORT_TO)
        if unknown:
            raise ValueError(f"DraftTrainerConfig.report_to has {sorted(unknown)}; allowed: {list(REPORT_TO)}.")

    @property
    def trackers(self) -> list[str]:
        return [name for name in self.report_to if name != "none"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DraftTrainer:
    """
    Learns a [`DraftAdapterModel`] for `model` and a candidate source, with REINFORCE on throughput.

    1. Traces: each training and validation prompt is generated greedily once, with the source's proposals along the
       way ([`collect_trace`]); cached in `output_dir/traces/`, so a resumed run does not redo them.
    2. Cost model: real speculative calls of every draft length are timed, giving a cost per draft length
       ([`calibrate_cost_model`], `output_dir/cost_model.json`), so rewards do not depend on the machine's noise.
    3. Warm start: the fixed draft length with the best replayed speed-up on the training traces is imitated for
       `warm_start_steps` steps, on the states the adapter itself reaches (label-smoothed, so it keeps exploring).
    4. Steps: `rollouts` replays of each of `traces_per_step` traces with sampled stop decisions (the output is the
       same in all of them: only the drafting differs), each decision credited by `credit`, plus an entropy bonus.

    Args:
        model ([`~transformers.PreTrainedModel`]): the target, frozen.
        args ([`DraftTrainerConfig`]).
        train_prompts, eval_prompts (`list[torch.LongTensor]`): prompts of shape `(1, length)`.
        adapter ([`DraftAdapterModel`], *optional*): to continue from; a fresh one by default.
        draft_model ([`~transformers.PreTrainedModel`], *optional*): the draft, for `source="assistant_model"`.
        base_model_revision (`str`, *optional*): the target's revision, recorded in a fresh adapter's config.
    """

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
        self.args, self.model, self.draft_model = args, model.eval().requires_grad_(False), draft_model
        self.train_prompts, self.eval_prompts = train_prompts, eval_prompts
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(log_with=args.trackers or None, project_dir=str(self.output_dir))
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
        self.state: dict[str, Any] = {"global_step": 0, "log_history": []}

    @property
    def unwrapped_adapter(self) -> DraftAdapterModel:
        return self.accelerator.unwrap_model(self.adapter)

    # ------------------------------------------------------------------------------------------------ preparation

    def _traces(self, prompts: list[torch.LongTensor], split: str) -> list[DraftTrace]:
        """Each process traces its share of `prompts`; every trace is saved once and read by all processes."""
        args, accelerator = self.args, self.accelerator
        key = json.dumps([args.source, args.early_exit_layer, args.max_new_tokens, args.max_draft_tokens])
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
                args.max_new_tokens,
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

    def train(self, resume_from_checkpoint: bool | str | os.PathLike | None = None) -> dict[str, Any]:
        """
        Train for `max_steps`; `resume_from_checkpoint=True` continues from the newest complete checkpoint. Returns
        the validation results of the saved adapter (`eval_results.json`).
        """
        args, accelerator = self.args, self.accelerator
        self._prepare_output_dir(resume_from_checkpoint)
        self.train_traces = self._traces(self.train_prompts, "train")
        self.eval_traces = self._traces(self.eval_prompts, "eval")
        self.cost_model = self._cost_model()
        if args.trackers:
            config = {
                k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in args.to_dict().items()
            }
            accelerator.init_trackers(args.run_name or "hf_adaptive_decoding_draft", config=config)
        if self.state["global_step"] == 0:
            if args.warm_start_steps:
                self._log({"step": 0, **self._warm_start()})
            self._evaluate_and_keep_best(0)
        progress = tqdm(
            total=args.max_steps,
            initial=self.state["global_step"],
            desc="Training draft adapter",
            disable=args.disable_tqdm or not accelerator.is_local_main_process,
        )
        while self.state["global_step"] < args.max_steps:
            step = self.state["global_step"] + 1
            metrics = self._step(step)
            self.state["global_step"] = step
            progress.update(1)
            progress.set_postfix(speedup=f"{metrics['speedup']:.3f}", draft=f"{metrics['draft_length']:.2f}")
            if step % args.logging_steps == 0 or step == args.max_steps:
                self._log({"step": step, **metrics})
            if step % args.eval_steps == 0 or step == args.max_steps:
                self._evaluate_and_keep_best(step)
            if step % args.save_steps == 0 or step == args.max_steps:
                checkpointing.save_and_rotate(accelerator, self.output_dir, step, self.state, args.save_total_limit)
        progress.close()
        final = self._finish()
        accelerator.end_training()
        return final

    def _step(self, step: int) -> dict[str, float]:
        args, accelerator = self.args, self.accelerator
        start = time.perf_counter()
        draw = random.Random(f"{args.seed}:{step}:{accelerator.process_index}")
        traces = [draw.choice(self.train_traces) for _ in range(args.traces_per_step)]
        torch.manual_seed(args.seed * 1_000_003 + step * 1_009 + accelerator.process_index)
        result = simulate_drafting(self.unwrapped_adapter, traces, self.cost_model, rollouts=args.rollouts)
        speedup = result.speedup.view(len(traces), args.rollouts).to(accelerator.device)
        hidden = result.hidden.to(accelerator.device) if args.use_hidden_state else None
        logits = self.adapter(result.features.to(accelerator.device), hidden).stop_logits.float()
        if args.credit == "cycle":
            advantages = cycle_advantages(result, args.rollouts).to(accelerator.device)
            policy_loss = -(advantages * decision_log_probs(logits, result)).sum() / len(result.speedup)
        else:
            others = (speedup.sum(dim=1, keepdim=True) - speedup) / (args.rollouts - 1)
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
        progress = tqdm(
            range(args.warm_start_steps),
            desc=f"Warm start (fixed length {best_length})",
            disable=args.disable_tqdm or not accelerator.is_local_main_process,
        )
        for step in progress:
            draw = random.Random(f"{args.seed}:warm:{step}:{accelerator.process_index}")
            traces = [draw.choice(self.train_traces) for _ in range(args.traces_per_step)]
            torch.manual_seed(args.seed * 1_000_003 - step * 1_009 - accelerator.process_index)
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

    def _prepare_output_dir(self, resume_from_checkpoint: bool | str | os.PathLike | None) -> None:
        args, accelerator = self.args, self.accelerator
        self.state["config"] = args.to_dict()
        if resume_from_checkpoint:
            checkpoint = checkpointing.resolve_checkpoint(self.output_dir, resume_from_checkpoint)
            saved = checkpointing.load_checkpoint(accelerator, checkpoint)
            self.state.update({key: saved[key] for key in ("global_step", "log_history")})
            self.state.update({key: saved[key] for key in ("best_eval_speedup", "best_step") if key in saved})
            if accelerator.is_main_process:
                checkpointing.discard_checkpoints_after(self.output_dir, self.state["global_step"])
                MetricsWriter(self.output_dir).truncate(self.state["global_step"])
            logger.info("Resumed from %s at step %d.", checkpoint, self.state["global_step"])
        elif checkpointing.complete_checkpoints(self.output_dir) or (self.output_dir / "metrics.jsonl").exists():
            if not args.overwrite_output_dir:
                raise ValueError(
                    f"output_dir {str(self.output_dir)!r} already holds a training run. Pass "
                    "resume_from_checkpoint=True to continue it, overwrite_output_dir=True to start over there, or "
                    "another output_dir."
                )
            if accelerator.is_main_process:  # traces and the cost model stay: they do not depend on the policy
                checkpointing.discard_checkpoints_after(self.output_dir, -1)
                (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
                for folder in self.output_dir.glob("best-*"):
                    shutil.rmtree(folder)
        accelerator.wait_for_everyone()

    def _evaluate_and_keep_best(self, step: int) -> None:
        results = self.evaluate()
        self._log({"step": step, **results})
        if results["eval_speedup"] > self.state.get("best_eval_speedup", float("-inf")):
            self.state.update(best_eval_speedup=results["eval_speedup"], best_step=step)
            if self.accelerator.is_main_process:
                # Before the checkpoint that records it, and kept after the run: a resumed or extended run may
                # still end on it. (A few copies of a small adapter.)
                self.unwrapped_adapter.save_pretrained(self.output_dir / f"best-{step}")

    def _log(self, entry: dict[str, Any]) -> None:
        self.state["log_history"].append(entry)
        MetricsWriter(self.output_dir, enabled=self.accelerator.is_main_process).write(entry)
        if self.args.trackers:
            self.accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=entry["step"])

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
        if "best_step" in final:
            adapter = type(adapter).from_pretrained(self.output_dir / f"best-{final['best_step']}")
        adapter.save_pretrained(self.output_dir)
        (self.output_dir / "eval_results.json").write_text(json.dumps(final, indent=2))
        from .reporting import plot_draft_training

        plot_draft_training(self.state["log_history"], self.output_dir / "plots")
        return final
