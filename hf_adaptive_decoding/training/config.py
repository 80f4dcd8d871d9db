"""`AdapterTrainerConfig`: every setting of an adapter training run, named like TRL's where TRL has a name."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

BASELINES = ("batch_mean", "leave_one_out", "moving_average")
REPORT_TO = ("none", "all", "tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive")


@dataclass
class AdapterTrainerConfig:
    """
    Configuration of [`AdapterTrainer`]. Field names follow TRL's `GRPOConfig` where one exists; the paper's own
    settings (Section 2, Appendix D) come after.

    A *step* is one optimizer update on `per_device_train_batch_size` prompts per process. Token level: each prompt
    gets `num_generations` trajectories, each with per-token actions, rewarded one by one. Sequence level: each prompt
    gets `num_generations` actions, each used for `B` parallel samples whose rewards are aggregated into the action's
    reward (`reward_aggregation`).

    Parameters:
        output_dir (`str`): where checkpoints, metrics (`metrics.jsonl`), plots and the final adapter are written.
        overwrite_output_dir (`bool`): start over in an `output_dir` that holds a previous run (its checkpoints and
            metrics are deleted); without it, such a folder is refused unless the run resumes.
        learning_rate (`float`): Adam's learning rate.
        lr_decay (`float`): the exponential scheduler's factor per step (Table 15: exponential; 1.0 = constant).
        weight_decay (`float`), adam_beta1 (`float`), adam_beta2 (`float`), max_grad_norm (`float`): the optimizer.
        disable_dropout (`bool`): run the adapter's update without dropout, so that the policy differentiated is
            exactly the one that chose the actions (rollouts always run without dropout).
        max_steps (`int`): number of updates.
        per_device_train_batch_size (`int`): prompts per process and step.
        num_generations (`int`): trajectories (token level) or actions (sequence level) per prompt.
        max_new_tokens (`int`): the largest token budget.
        token_budgets (`list[int]`, *optional*): token level, the budgets `b` drawn per prompt (each trajectory stops
            after `b` tokens and sees `b_t = b - t`); default `[max_new_tokens]`.
        parallel_budgets (`list[int]`): sequence level, the parallel budgets `B` drawn per prompt.
        reward_aggregation (`str`): sequence level, how the `B` rewards of one action make its reward: `"mean"`,
            `"best_of_b"` (the maximum) or `"pass@k"` (the unbiased estimate from `B` samples, `k <= B`).
        beta (`float`): entropy bonus coefficient of Eq. (1).
        baseline (`str`): `"batch_mean"` (the mean reward of the whole step, over all processes), `"leave_one_out"`
            (the mean of the other `num_generations - 1` rollouts of the same prompt) or `"moving_average"`.
        baseline_momentum (`float`): the moving average's momentum.
        scale_advantages (`bool`): divide advantages by the step's reward standard deviation.
        max_prob_threshold (`float`, *optional*): token level, steps whose next-token max probability exceeds it are
            left out of the loss (Section 2.3: 0.95). `None` keeps every step.
        filter_prompts (`bool`): leave out of the update the prompts whose `num_generations` rewards are all equal
            (none solved: too sparse; all solved: nothing to learn); see [`AdapterTrainer`].
        cot_ratio (`float`): fraction of prompts that get the chain-of-thought instruction (Appendix D.2, "CoT mix").
        instruction (`str`), cot_instruction (`str`): appended to each question (the direct and the CoT prompt).
        system_prompt (`str`, *optional*): a system turn for the chat template.
        reward_weights (`list[float]`, *optional*): one weight per reward function (default: all 1).
        reward_timeout (`float`, *optional*): seconds a reward function may take per call before its samples get
            `failure_reward`.
        failure_reward (`float`): the reward of samples whose reward function timed out.
        eval_steps (`int`, *optional*): validate the deterministic policy every this many steps (and at the end).
        eval_num_examples (`int`, *optional*): how many validation prompts (default all).
        per_device_eval_batch_size (`int`): prompts per process and evaluation batch.
        save_steps (`int`): checkpoint every this many steps (and at the end).
        save_total_limit (`int`, *optional*): keep at most this many checkpoints.
        logging_steps (`int`): log metrics every this many steps.
        report_to (`list[str]`): trackers (`"tensorboard"`, `"wandb"`, `"trackio"`, ...); `["none"]` by default.
        run_name (`str`, *optional*): the trackers' run name.
        seed (`int`): seeds data order, CoT assignment, budgets and sampling.
        mixed_precision (`str`): `"no"`, `"bf16"` or `"fp16"` (for the adapter's update, through Accelerate).
        push_to_hub (`bool`), hub_model_id (`str`, *optional*), hub_private_repo (`bool`, *optional*): publish the
            final adapter with its model card.
        plot (`bool`): write PNG plots of action probabilities and validation reward (needs matplotlib).
        disable_tqdm (`bool`): no progress bar.
    """

    output_dir: str = "outputs/adapter"
    overwrite_output_dir: bool = False
    learning_rate: float = 1e-3
    lr_decay: float = 0.999
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    disable_dropout: bool = True
    max_steps: int = 100
    per_device_train_batch_size: int = 8
    num_generations: int = 4
    max_new_tokens: int = 64
    token_budgets: list[int] | None = None
    parallel_budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    reward_aggregation: str = "best_of_b"
    beta: float = 0.01
    baseline: str = "leave_one_out"
    baseline_momentum: float = 0.9
    scale_advantages: bool = False
    max_prob_threshold: float | None = 0.95
    filter_prompts: bool = True
    cot_ratio: float = 0.0
    instruction: str = "Provide the final answer within \\boxed{}."
    cot_instruction: str = "Think step by step, then provide the final answer within \\boxed{}."
    system_prompt: str | None = None
    reward_weights: list[float] | None = None
    reward_timeout: float | None = 300.0
    failure_reward: float = 0.0
    eval_steps: int | None = 50
    eval_num_examples: int | None = None
    per_device_eval_batch_size: int = 32
    save_steps: int = 50
    save_total_limit: int | None = 2
    logging_steps: int = 1
    report_to: list[str] = field(default_factory=lambda: ["none"])
    run_name: str | None = None
    seed: int = 42
    mixed_precision: str = "no"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool | None = None
    plot: bool = True
    disable_tqdm: bool = False

    def __post_init__(self):
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if self.token_budgets is None:
            self.token_budgets = [self.max_new_tokens]
        positive_ints = ("max_steps", "per_device_train_batch_size", "num_generations", "max_new_tokens")
        for name in positive_ints + ("save_steps", "logging_steps", "per_device_eval_batch_size"):
            _check(
                name, getattr(self, name), isinstance(getattr(self, name), int) and getattr(self, name) >= 1, ">= 1"
            )
        for name in ("eval_steps", "eval_num_examples", "save_total_limit"):
            value = getattr(self, name)
            _check(name, value, value is None or (isinstance(value, int) and value >= 1), "None or an int >= 1")
        _check("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        _check("lr_decay", self.lr_decay, 0 < self.lr_decay <= 1, "in (0, 1]")
        _check("beta", self.beta, self.beta >= 0, ">= 0")
        _check("baseline", self.baseline, self.baseline in BASELINES, f"one of {BASELINES}")
        _check("baseline_momentum", self.baseline_momentum, 0 <= self.baseline_momentum < 1, "in [0, 1)")
        _check("cot_ratio", self.cot_ratio, 0 <= self.cot_ratio <= 1, "in [0, 1]")
        threshold = self.max_prob_threshold
        _check("max_prob_threshold", threshold, threshold is None or 0 < threshold <= 1, "None or in (0, 1]")
        for name in ("token_budgets", "parallel_budgets"):
            budgets = getattr(self, name)
            _check(
                name,
                budgets,
                isinstance(budgets, list) and budgets and all(isinstance(b, int) and b >= 1 for b in budgets),
                "a non-empty list of ints >= 1",
            )
        _check(
            "token_budgets",
            self.token_budgets,
            max(self.token_budgets) <= self.max_new_tokens,
            f"at most max_new_tokens={self.max_new_tokens}",
        )
        _ = self.pass_k  # validates reward_aggregation
        _check("mixed_precision", self.mixed_precision, self.mixed_precision in ("no", "bf16", "fp16"), "no|bf16|fp16")
        unknown = [name for name in self.report_to if name not in REPORT_TO]
        _check("report_to", self.report_to, not unknown, f"a list of {REPORT_TO}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub=True needs hub_model_id (e.g. 'user/smollm2-token-adapter').")

    @property
    def pass_k(self) -> int | None:
        """`k` of `reward_aggregation="pass@k"`, else `None`."""
        if self.reward_aggregation in ("mean", "best_of_b"):
            return None
        match = re.fullmatch(r"pass@([1-9]\d*)", str(self.reward_aggregation))
        _check("reward_aggregation", self.reward_aggregation, match, "'mean', 'best_of_b' or 'pass@k' (k >= 1)")
        k = int(match.group(1))
        _check("reward_aggregation", self.reward_aggregation, k <= min(self.parallel_budgets), "k <= min(B)")
        return k

    @property
    def trackers(self) -> list[str]:
        return [name for name in self.report_to if name != "none"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(name: str, value: Any, ok: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"AdapterTrainerConfig.{name} must be {allowed}, got {value!r}.")
