"""`AdapterTrainer`: REINFORCE training of a decoding adapter on a frozen language model, through Accelerate."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate.utils import set_seed
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..adapters.modeling import DecodingAdapterModel
from ..evaluation.runner import rollout_and_score
from ..generation.policies import ConstantPolicy
from ..generation.rollout import RolloutBatch
from . import reporting
from .all_actions import AllActionsMixin
from .base import BaseAdapterTrainer
from .config import AdapterTrainerConfig
from .objectives import advantages, aggregate_rewards, decision_weights_and_advantages, policy_loss

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list]
# Settings that may differ when a run is resumed without changing what it computes until its old end.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "output_dir",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "report_to",
        "run_name",
        "disable_tqdm",
        "plot",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "overwrite_output_dir",
        "load_best_model_at_end",
    }
)


class AdapterTrainer(AllActionsMixin, BaseAdapterTrainer):
    """
    Trains a decoding adapter with REINFORCE on verifiable rewards; the language model stays frozen.

    Each step, every process takes its share of `per_device_train_batch_size` prompts and rolls them out with the
    adapter choosing the decoding actions (token level: one per generated token, from `[h_t; b_t]`; sequence level:
    one per prompt and draw, from `[e; B]`, shared by its `B` samples). Rewards come from `reward_funcs`; the
    advantages `reward - baseline` are computed over the whole step (all processes), and the adapter is updated on
    the gradient of `-(A log pi(a | x) + entropy_coef H(pi(. | x)))` averaged over its decisions, gradients
    synchronised by Accelerate.

    The paper's two stabilisations (Section 2.3) are `max_prob_threshold`, which leaves out of the loss the token
    steps where the language model's next-token max probability exceeds it (the action barely matters there), and
    `filter_prompts`: a prompt whose `num_generations` rollouts all get the same reward (all wrong: too sparse to
    learn from; all right: nothing to improve) is left out of the update. Such prompts carry no signal with a
    per-prompt baseline and only add noise with a batch baseline. `filter_fraction` in the metrics says how many were
    left out.

    Args:
        model ([`~transformers.PreTrainedModel`]): the causal LM; put in eval mode, its weights are never touched.
        adapter ([`DecodingAdapterModel`]): the policy to train (e.g. `AutoDecodingAdapter.for_model(model, ...)`).
        reward_funcs (`Callable` or `list[Callable]`): TRL-style reward functions,
            `f(prompts, completions, **dataset_columns) -> list[float | None]`.
        args ([`AdapterTrainerConfig`], *optional*): the settings.
        train_dataset (`datasets.Dataset`): rows with a `prompt` column (a question, or a list of chat messages);
            other columns reach the reward functions as keyword arguments.
        eval_dataset (`datasets.Dataset`, *optional*): held-out rows to validate the deterministic policy on.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*): the tokenizer (with a chat
            template); loaded from the model's name when not given.
    """

    progress_description = "Training adapter"
    resumed_state = ("global_step", "moving_average", "log_history")
    resumable_changes = RESUMABLE_CHANGES

    def __init__(
        self,
        model: PreTrainedModel,
        adapter: DecodingAdapterModel,
        reward_funcs: RewardFunc | Sequence[RewardFunc],
        args: AdapterTrainerConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
    ):
        args = args if args is not None else AdapterTrainerConfig()
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"`model` must be a transformers PreTrainedModel, got {type(model).__name__}.")
        if not isinstance(adapter, DecodingAdapterModel):
            raise ValueError(f"`adapter` must be a DecodingAdapterModel, got {type(adapter).__name__}.")
        adapter.check_compatible(model)
        self.reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not self.reward_funcs or not all(callable(func) for func in self.reward_funcs):
            raise ValueError(
                f"reward_funcs must be a callable or a non-empty list of callables, got {reward_funcs!r}."
            )
        if args.reward_weights is not None and len(args.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(args.reward_weights)} values for {len(self.reward_funcs)} reward functions."
            )
        self.train_dataset = _check_dataset(train_dataset, "train_dataset")
        self.eval_dataset = _check_dataset(eval_dataset, "eval_dataset") if eval_dataset is not None else None
        self.tokenizer = processing_class or AutoTokenizer.from_pretrained(model.name_or_path, padding_side="left")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if args.action_sampling == "all" and adapter.level != "sequence":
            raise ValueError(
                "action_sampling='all' tries every action once per prompt: it needs a sequence-level adapter, got a "
                f"{adapter.level}-level one."
            )
        if args.use_vllm and adapter.level != "sequence":
            raise ValueError(
                "use_vllm draws whole completions under one action: it trains sequence-level adapters, got a "
                f"{adapter.level}-level one."
            )
        self._vllm_llm = None
        if args.filter_prompts and args.num_generations < 2 and args.action_sampling == "policy":
            logger.warning("filter_prompts needs num_generations >= 2 to compare a prompt's rollouts; it is off.")

        super().__init__(args, mixed_precision=args.mixed_precision)
        set_seed(args.seed, device_specific=True)
        self.model = model.to(self.accelerator.device).eval().requires_grad_(False)
        optimizer = torch.optim.Adam(
            adapter.parameters(),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.weight_decay,
        )
        # The scheduler is not passed to `prepare`: Accelerate would step it once per process, and the exponential
        # decay is per update. It is checkpointed with the rest.
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
        self.adapter, self.optimizer = self.accelerator.prepare(adapter.to(self.accelerator.device), optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.state["moving_average"] = None
        self._epoch_order: tuple[int, list[int]] = (-1, [])
        self._last_eval: dict[str, Any] | None = None
        if max(args.token_budgets) < args.max_completion_length and adapter.level == "token":
            logger.warning(
                "token_budgets=%s: token-level training never uses more than %d new tokens, although "
                "max_completion_length=%d (validation uses max_completion_length).",
                args.token_budgets,
                max(args.token_budgets),
                args.max_completion_length,
            )

    # ----------------------------------------------------------------------------------------------- data

    def _train_indices(self, step: int) -> list[int]:
        """This process's prompts for `step`: a fresh seeded permutation of the dataset per epoch, split by rank."""
        size, per_device = len(self.train_dataset), self.args.per_device_train_batch_size
        start = (step * self.accelerator.num_processes + self.accelerator.process_index) * per_device
        indices = []
        for position in range(start, start + per_device):
            epoch, offset = divmod(position, size)
            if self._epoch_order[0] != epoch:
                generator = torch.Generator().manual_seed(self.args.seed + epoch)
                self._epoch_order = (epoch, torch.randperm(size, generator=generator).tolist())
            indices.append(self._epoch_order[1][offset])
        return indices

    def _uses_cot(self, index: int) -> bool:
        return random.Random(f"{self.args.seed}:cot:{index}").random() < self.args.cot_ratio

    # ----------------------------------------------------------------------------------------------- rollouts

    def _rollout(
        self,
        rows: list[dict],
        cot: list[bool],
        num_samples: list[int],
        budgets: list[int],
        deterministic: bool,
        policy=None,
        problem_ids: list[int] | None = None,
        **rollout_kwargs,
    ) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor]:
        """Generate for `rows` (one decision source each) and score every sample. With `problem_ids`, every
        problem's random numbers are keyed by `(seed, id)` (validation); without, drawn from the training RNG
        (training rollouts, which `use_vllm` hands to vLLM)."""
        args = self.args
        if args.use_vllm and problem_ids is None:
            rollout_kwargs["rollout_engine"] = self._vllm_rollout_engine()
        scored = rollout_and_score(
            self.model,
            self.tokenizer,
            self.unwrapped_adapter.eval() if policy is None else policy,
            rows,
            self.reward_funcs,
            num_samples=num_samples,
            token_budgets=budgets,
            instructions=[args.cot_instruction if use_cot else args.instruction for use_cot in cot],
            system_prompt=args.system_prompt,
            seed=args.seed if problem_ids is not None else None,
            problem_ids=problem_ids,
            deterministic=deterministic,
            reward_weights=args.reward_weights,
            reward_timeout=args.reward_timeout,
            failure_reward=args.failure_reward,
            **rollout_kwargs,
        )
        return scored.batch, scored.rewards, scored.rewards_per_func

    def _training_rollout(self, step: int):
        """Roll out this process's prompts for `step`. Returns the batch, per-sample rewards, and per rollout unit
        (token level: a trajectory; sequence level: a draw of an action) its reward and its prompt."""
        args, adapter = self.args, self.unwrapped_adapter
        indices = self._train_indices(step)
        rows = self.train_dataset.select(indices).to_list()
        cot = [self._uses_cot(index) for index in indices]
        draw = random.Random(f"{args.seed}:budget:{step}:{self.accelerator.process_index}")
        generations = args.num_generations
        if args.action_sampling == "all":
            return self._all_actions_rollout(rows, cot)
        if adapter.level == "token":
            budgets = [draw.choice(args.token_budgets) for _ in rows]
            batch, rewards, per_func = self._rollout(rows, cot, [generations] * len(rows), budgets, False)
            unit_rewards = rewards
        else:
            parallel = [draw.choice(args.parallel_budgets) for _ in rows]
            repeat = lambda values: [value for value in values for _ in range(generations)]  # noqa: E731
            budgets = [args.max_completion_length] * len(rows) * generations
            batch, rewards, per_func = self._rollout(repeat(rows), repeat(cot), repeat(parallel), budgets, False)
            unit_rewards = aggregate_rewards(
                rewards, batch.input_index, len(rows) * generations, args.reward_aggregation, args.pass_k
            )
        unit_prompt = torch.arange(len(rows), device=rewards.device).repeat_interleave(generations)
        return batch, rewards, per_func, unit_rewards, unit_prompt, cot

    def _vllm_rollout_engine(self):
        """`vllm_generate_rollouts` bound to this process's vLLM engine, started on first use."""
        if self._vllm_llm is None:
            from ..vllm import require_vllm

            require_vllm("AdapterTrainerConfig(use_vllm=True)")
            import vllm

            path = getattr(self.model, "weights_folder", None) or self.model.name_or_path  # the default model's folder
            engine = {"dtype": str(self.model.dtype).removeprefix("torch."), "enforce_eager": True}
            engine |= {"seed": self.args.seed + self.accelerator.process_index}
            engine |= self.args.vllm_engine_kwargs or {}
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: the engine in this process
            self._vllm_llm = vllm.LLM(model=path, **engine)
        from ..vllm.rollout import vllm_generate_rollouts

        return functools.partial(vllm_generate_rollouts, self._vllm_llm)

    # ----------------------------------------------------------------------------------------------- update

    def _advantages(self, unit_rewards: torch.Tensor, unit_prompt: torch.Tensor):
        """Advantages and kept-mask of this process's units, computed over the whole step (all processes)."""
        args, accelerator = self.args, self.accelerator
        offset = accelerator.process_index * args.per_device_train_batch_size
        all_rewards = accelerator.gather(unit_rewards)
        all_prompts = accelerator.gather(unit_prompt + offset)
        all_advantages = advantages(all_rewards, all_prompts, args.baseline, self.state["moving_average"])
        grouped = all_rewards.view(-1, args.num_generations)
        if args.scale_rewards == "batch":
            all_advantages = all_advantages / (all_rewards.std(unbiased=False) + 1e-4)
        elif args.scale_rewards == "group":
            group_std = grouped.std(dim=-1, unbiased=False).repeat_interleave(args.num_generations)
            all_advantages = all_advantages / (group_std + 1e-4)
        keep = torch.ones_like(all_rewards, dtype=torch.bool)
        if args.filter_prompts and args.num_generations >= 2:
            keep = (grouped.amax(-1) > grouped.amin(-1)).repeat_interleave(args.num_generations)
        mean = float(all_rewards.mean())
        previous = self.state["moving_average"]
        momentum = args.baseline_momentum
        self.state["moving_average"] = mean if previous is None else momentum * previous + (1 - momentum) * mean
        mine = slice(
            accelerator.process_index * len(unit_rewards), (accelerator.process_index + 1) * len(unit_rewards)
        )
        return all_advantages[mine], keep[mine], all_rewards, keep

    def _update(self, batch: RolloutBatch, unit_advantages: torch.Tensor, unit_keep: torch.Tensor):
        args = self.args
        advantage, weight = decision_weights_and_advantages(
            self.unwrapped_adapter, batch, unit_advantages, unit_keep, args.max_prob_threshold
        )
        # With disable_dropout, the policy that is differentiated is the one that acted in the rollout.
        self.adapter.train(not args.disable_dropout)
        normalizer = self.accelerator.reduce(weight.sum(), "sum") / self.accelerator.num_processes
        with self.accelerator.autocast():
            loss, parts = policy_loss(self.adapter, batch, advantage, weight, args.entropy_coef, normalizer)
        return loss.detach(), parts, weight, self._optimizer_step(loss)

    def _optimizer_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backpropagate `loss`, clip, step the optimizer and the scheduler; returns the gradient norm."""
        self.accelerator.backward(loss)
        grad_norm = self.accelerator.clip_grad_norm_(self.adapter.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return torch.as_tensor(grad_norm).detach()

    # ----------------------------------------------------------------------------------------------- loop

    def _training_step(self, step: int) -> dict[str, float]:
        """Roll out this process's prompts of step `step` (counted from 1), update the adapter, and return the
        step's metrics over all processes."""
        args, accelerator = self.args, self.accelerator
        start = time.perf_counter()
        batch, rewards, per_func, unit_rewards, unit_prompt, cot = self._training_rollout(step - 1)
        rollout_time = time.perf_counter() - start
        if args.action_sampling == "all":
            unit_advantages, unit_keep, all_unit_rewards, all_keep = self._all_actions_advantages(unit_rewards)
            loss, parts, weight, grad_norm = self._all_actions_update(batch, unit_advantages, unit_keep)
        else:
            unit_advantages, unit_keep, all_unit_rewards, all_keep = self._advantages(unit_rewards, unit_prompt)
            loss, parts, weight, grad_norm = self._update(batch, unit_advantages, unit_keep)
        update_time = time.perf_counter() - start - rollout_time
        metrics = reporting.step_metrics(
            accelerator,
            self.unwrapped_adapter,
            batch,
            rewards,
            per_func,
            weight,
            self.reward_funcs,
            cot,
            rollout_time=rollout_time,
            update_time=update_time,
            max_prob_threshold=args.max_prob_threshold,
            parallel_budgets=sorted(set(args.parallel_budgets)),
        )
        metrics.update(
            loss=float(accelerator.reduce(loss, "mean")),
            entropy=float(accelerator.reduce(parts["entropy"], "mean")),
            grad_norm=float(grad_norm),
            learning_rate=self.scheduler.get_last_lr()[0],
            reward_aggregated=float(all_unit_rewards.mean()),
            reward_std=float(all_unit_rewards.std()) if len(all_unit_rewards) > 1 else 0.0,
            filter_fraction=float(1 - all_keep.float().mean()),
            epoch=step * args.per_device_train_batch_size * accelerator.num_processes / len(self.train_dataset),
        )
        if args.action_sampling == "all":
            metrics.update(self._all_actions_metrics(batch, all_unit_rewards))
        return metrics

    def _progress_postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{metrics['reward']:.3f}", "tok_s": f"{metrics['tokens_per_second']:.0f}"}

    def _evaluate_during_training(self, step: int) -> None:
        if self.eval_dataset is not None:
            self._last_eval = {"step": step, **self.evaluate()}
            self._log(self._last_eval)
            self._keep_if_best(step, self._last_eval)

    def _log(self, entry: dict[str, Any]) -> None:
        """Log `entry`; redraw the plots after a validation and at the last step."""
        super()._log(entry)
        redraw = "eval_reward" in entry or entry["step"] == self.args.max_steps
        if self.args.plot and redraw and self.accelerator.is_main_process:
            reporting.plot_training(self.state["log_history"], self.output_dir / "plots")

    # ----------------------------------------------------------------------------------------------- evaluation

    def _eval_rows(self) -> list[tuple[int, dict]]:
        """This process's validation rows, with their index in the validation set (which keys their noise)."""
        dataset = self.eval_dataset
        if self.args.eval_num_examples is not None:
            dataset = dataset.select(range(min(self.args.eval_num_examples, len(dataset))))
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        indices = list(range(rank, len(dataset), world))
        return list(zip(indices, dataset.select(indices).to_list(), strict=True))

    def _validate(self, policy, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Total reward and count over the validation rows of all processes, one sample each with the direct
        instruction and budget `max_completion_length` (sequence level: `B = 1`), through the training rollout loop.
        Each problem's noise is keyed by `(seed, index)`, so every policy validated draws the same random numbers,
        and the training RNG is left alone. Also the count of each action among the decisions."""
        rows, size = self._eval_rows(), self.args.per_device_eval_batch_size
        num_actions = len(policy.decoding_config.actions)
        totals = torch.zeros(2 + num_actions, device=self.accelerator.device)
        for start in range(0, len(rows), size):
            ids, chunk = zip(*rows[start : start + size], strict=True)
            n, budget = len(chunk), self.args.max_completion_length
            batch, rewards, _ = self._rollout(
                list(chunk), [False] * n, [1] * n, [budget] * n, deterministic, policy, list(ids)
            )
            totals[0] += rewards.sum()
            totals[1] += len(rewards)
            if batch.actions is not None:
                totals[2:] += torch.bincount(batch.actions, minlength=num_actions).float()
        return self.accelerator.reduce(totals, "sum")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """
        Validation reward of the deterministic policy (its most likely action at every decision; the action itself
        may still sample), one sample per prompt with the direct instruction: token level with budget
        `max_new_tokens`, sequence level with `B = 1`. Also the share of each action among its decisions.
        """
        adapter = self.unwrapped_adapter.eval()
        totals = self._validate(adapter, deterministic=True)
        shares = totals[2:] / totals[2:].sum().clamp(min=1)
        result = {"eval_reward": float(totals[0] / totals[1].clamp(min=1)), "eval_num_prompts": int(totals[1])}
        names = adapter.decoding_config.action_names
        result.update({f"eval_action_share/{name}": float(share) for name, share in zip(names, shares, strict=True)})
        return result

    @torch.no_grad()
    def evaluate_static_actions(self) -> dict[str, float]:
        """
        Validation reward of each action of the action space used alone, on the same prompts, instruction, token
        budget and random numbers as [`evaluate`], through the same decoding path: the baselines the adapter must
        beat. A policy that always picks one action scores exactly that action's reward.
        """
        results = {}
        for action in self.unwrapped_adapter.decoding_config.actions:
            totals = self._validate(ConstantPolicy.static(action, level=self.unwrapped_adapter.level), False)
            results[action.name] = float(totals[0] / totals[1].clamp(min=1))
        return results

    def _finish(self) -> dict[str, Any]:
        """Save the final adapter with its model card next to the checkpoints and push it when asked; returns the
        final metrics (the last logged value of each)."""
        # Only the main process saves: it alone reads the best copy (which it wrote).
        evaluation, best = None, self._best_adapter() if self.accelerator.is_main_process else None
        use_best = self.args.load_best_model_at_end and "best_step" in self.state
        if self.eval_dataset is not None:
            last = self._last_eval
            if use_best:  # the same decision on every process, so evaluate() below stays collective
                adapter_reward = {"eval_reward": self.state["best_metric"]}
            else:
                adapter_reward = last if last and last["step"] == self.state["global_step"] else self.evaluate()
            evaluation = {"adapter": adapter_reward["eval_reward"], "static": self.evaluate_static_actions()}
            if use_best:
                evaluation["best_step"] = self.state["best_step"]
        if self.accelerator.is_main_process:
            self._save_final_adapter(evaluation, best)
        return {key: value for entry in self.state["log_history"] for key, value in entry.items()}

    def _save_final_adapter(self, evaluation: dict[str, Any] | None, best: PreTrainedModel | None = None) -> None:
        args, adapter = self.args, best if best is not None else self.unwrapped_adapter
        adapter.save_pretrained(self.output_dir)
        card = reporting.adapter_model_card(
            adapter, args, self.train_dataset, self.reward_funcs, evaluation, self.state["log_history"]
        )
        card.save(self.output_dir / "README.md")
        if evaluation is not None:
            (self.output_dir / "eval_results.json").write_text(json.dumps(evaluation, indent=2))
        if args.push_to_hub:
            adapter.push_to_hub(args.hub_model_id, private=args.hub_private_repo)
            card.push_to_hub(args.hub_model_id)


def _check_dataset(dataset: Any, name: str) -> Dataset:
    if not isinstance(dataset, Dataset):
        raise ValueError(f"{name} must be a datasets.Dataset with a 'prompt' column, got {type(dataset).__name__}.")
    if "prompt" not in dataset.column_names:
        raise ValueError(f"{name} needs a 'prompt' column; its columns are {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: there is nothing to train or validate on.")
    return dataset
