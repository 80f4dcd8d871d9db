"""`AdapterTrainerConfig`: every setting of an adapter training run, named like TRL's where TRL has a name."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .base import REPORT_TO, BaseTrainerConfig, renamed_field

__all__ = ["ACTION_SAMPLING", "BASELINES", "REPORT_TO", "SCALE_REWARDS", "AdapterTrainerConfig"]

BASELINES = ("batch_mean", "leave_one_out", "moving_average")
SCALE_REWARDS = ("none", "batch", "group")
ACTION_SAMPLING = ("policy", "all")


@dataclass
class AdapterTrainerConfig(BaseTrainerConfig):
    """
    Configuration of [`AdapterTrainer`]. Field names follow TRL's `GRPOConfig` (and transformers' `TrainingArguments`)
    where they mean the same; the paper's own settings (Section 2, Appendix D) come after. Each field's `help` is
    what a recipe's `--help` shows.

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
        num_generations (`int`): trajectories (token level) or actions (sequence level) per prompt; with
            `action_sampling="all"`, samples per action.
        action_sampling (`str`): sequence level, `"policy"` (the paper's REINFORCE: actions drawn from the adapter,
            each prompt at one drawn parallel budget) or `"all"`: every action on every prompt, its `num_generations`
            samples on the same random numbers as the other actions', each parallel budget's reward estimated from
            them (`reward_aggregation`), and the exact expected policy gradient over actions at every budget. It
            costs `num_actions x num_generations` samples per prompt, and no budget or action goes unseen: suited to
            small action spaces such as `mixed-seq`. `baseline` is then the mean over actions.
        use_vllm (`bool`): sequence level, draw the training rollouts with a vLLM engine in this process (as TRL's
            GRPO colocate mode; needs vLLM, docs/vllm.md); the adapter's features still come from one prefill of the
            transformers model, and validation stays on the transformers path.
        vllm_engine_kwargs (`dict`, *optional*): passed to `vllm.LLM` (e.g. `gpu_memory_utilization`); its
            defaults here: the model's dtype, `enforce_eager=True`, `seed`.
        max_completion_length (`int`): the largest token budget: the most tokens a sample generates (validation
            always uses it).
        token_budgets (`list[int]`, *optional*): token level, the budgets `b` drawn per prompt (each trajectory stops
            after `b` tokens and sees `b_t = b - t`); default `[max_completion_length]`.
        parallel_budgets (`list[int]`): sequence level, the parallel budgets `B` drawn per prompt.
        reward_aggregation (`str`): sequence level, how the `B` rewards of one action make its reward: `"mean"`,
            `"best_of_b"` (the maximum) or `"pass@k"` (the unbiased estimate from `B` samples, `k <= B`).
        entropy_coef (`float`): entropy bonus coefficient of Eq. (1) (TRL's `entropy_coef`; TRL's `beta` is a KL
            coefficient, which this objective does not have).
        baseline (`str`): `"batch_mean"` (the mean reward of the whole step, over all processes), `"leave_one_out"`
            (the mean of the other `num_generations - 1` rollouts of the same prompt) or `"moving_average"`.
        baseline_momentum (`float`): the moving average's momentum.
        scale_rewards (`str`): as TRL's: divide the advantages by the standard deviation of the rewards of the whole
            step (`"batch"`) or of each prompt's `num_generations` rollouts (`"group"`), or not (`"none"`).
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
        load_best_model_at_end (`bool`): save, card and compare the adapter of the validation with the best
            `eval_reward` (ties: the earlier) rather than the last step's; the last weights stay in the checkpoints.
        per_device_eval_batch_size (`int`): prompts per process and evaluation batch.
        save_steps (`int`): checkpoint every this many steps (and at the end).
        save_total_limit, logging_steps, report_to, run_name, disable_tqdm: the run's bookkeeping, see
            [`BaseTrainerConfig`].
        seed (`int`): seeds data order, CoT assignment, budgets and sampling.
        mixed_precision (`str`): `"no"`, `"bf16"` or `"fp16"` (for the adapter's update, through Accelerate).
        push_to_hub (`bool`), hub_model_id (`str`, *optional*), hub_private_repo (`bool`, *optional*): publish the
            final adapter with its model card.
        plot (`bool`): write PNG plots of action probabilities and validation reward (needs matplotlib).
        beta, max_new_tokens, scale_advantages: renamed `entropy_coef`, `max_completion_length` and `scale_rewards`
            (`scale_advantages=True` is `scale_rewards="batch"`); setting them is an error.
    """

    output_dir: str = field(
        default="outputs/adapter",
        metadata={"help": "Where checkpoints, metrics (metrics.jsonl), plots and the final adapter are written."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds a previous run (its checkpoints and metrics are deleted). "
            "Without it, such a folder is refused unless the run resumes."
        },
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam's learning rate."})
    lr_decay: float = field(
        default=0.999,
        metadata={"help": "Factor of the exponential learning-rate schedule per step, in (0, 1]; 1.0 is constant."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Adam's weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam's beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam's beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradients are clipped to this norm."})
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Update the adapter without dropout, so that the policy differentiated is exactly the one that "
            "chose the actions (rollouts always run without dropout)."
        },
    )
    max_steps: int = field(default=100, metadata={"help": "Number of optimizer updates."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Prompts per process and step."})
    num_generations: int = field(
        default=4,
        metadata={
            "help": "Trajectories (token level) or actions (sequence level) sampled per prompt and step; with "
            "action_sampling='all', samples per action."
        },
    )
    action_sampling: str = field(
        default="policy",
        metadata={
            "help": "Sequence level: 'policy' (the paper: num_generations actions drawn from the adapter per prompt, "
            "each prompt at one parallel budget drawn from parallel_budgets) or 'all' (every action of the space on "
            "every prompt, num_generations samples each on the same random numbers, every parallel budget's reward "
            "estimated from them; the update is the exact expected policy gradient over actions, at every budget; "
            "needs num_generations >= max(parallel_budgets))."
        },
    )
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Sequence level: draw the training rollouts with a vLLM engine in this process (TRL's colocate "
            "mode); features from one transformers prefill, validation on the transformers path. Needs vLLM."
        },
    )
    vllm_engine_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Passed to vllm.LLM (e.g. gpu_memory_utilization, max_model_len); JSON on the CLI."},
    )
    max_completion_length: int = field(
        default=64,
        metadata={
            "help": "The largest token budget: the most tokens a sample generates. Validation always uses it; at "
            "sequence level, so does training."
        },
    )
    token_budgets: list[int] | None = field(
        default=None,
        metadata={
            "help": "Token level: the budgets b drawn per prompt; a trajectory stops after b tokens and its adapter "
            "sees the remaining b_t = b - t. Each at most max_completion_length (the default: only that)."
        },
    )
    parallel_budgets: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8],
        metadata={"help": "Sequence level: the parallel budgets B (samples per action) drawn per prompt."},
    )
    reward_aggregation: str = field(
        default="best_of_b",
        metadata={
            "help": "Sequence level: how the B rewards of one action make its reward: 'mean', 'best_of_b' (the "
            "maximum) or 'pass@k' (the unbiased estimate from B samples, or from num_generations with "
            "action_sampling='all'; k <= min(parallel_budgets))."
        },
    )
    entropy_coef: float = field(
        default=0.01,
        metadata={
            "help": "Coefficient of the entropy bonus of Eq. (1), >= 0: the loss subtracts it times the mean entropy "
            "of the adapter's decisions in the loss."
        },
    )
    baseline: str = field(
        default="leave_one_out",
        metadata={
            "help": "What the advantage subtracts from a reward: 'leave_one_out' (the mean of the prompt's other "
            "num_generations - 1 rollouts), 'batch_mean' (the mean reward of the whole step, all processes) or "
            "'moving_average' (of the steps' mean rewards)."
        },
    )
    baseline_momentum: float = field(
        default=0.9, metadata={"help": "Momentum of the 'moving_average' baseline, in [0, 1)."}
    )
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "Divide the advantages by the standard deviation of the rewards of the whole step ('batch'), of "
            "each prompt's num_generations rollouts ('group'; needs num_generations >= 2), or not ('none'). As in "
            "TRL, true means 'group' and false 'none'."
        },
    )
    max_prob_threshold: float | None = field(
        default=0.95,
        metadata={
            "help": "Token level: steps whose next-token max probability exceeds it are left out of the loss (the "
            "action barely matters there; Section 2.3). None keeps every step."
        },
    )
    filter_prompts: bool = field(
        default=True,
        metadata={
            "help": "Leave out of the update the prompts whose num_generations rewards are all equal (none solved: "
            "too sparse; all solved: nothing to learn). Needs num_generations >= 2."
        },
    )
    cot_ratio: float = field(
        default=0.0,
        metadata={"help": "Fraction of prompts that get cot_instruction instead of instruction (Appendix D.2)."},
    )
    instruction: str = field(
        default="Provide the final answer within \\boxed{}.",
        metadata={"help": "Appended to each question: the direct prompt (validation always uses it)."},
    )
    cot_instruction: str = field(
        default="Think step by step, then provide the final answer within \\boxed{}.",
        metadata={"help": "Appended to the questions of the cot_ratio share of prompts: the chain-of-thought prompt."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "A system turn for the chat template."})
    reward_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "One weight per reward function; the reward is their weighted sum. If None, all weights are 1."
        },
    )
    reward_timeout: float | None = field(
        default=300.0,
        metadata={
            "help": "Seconds a reward function may take per call before its samples get failure_reward. None: no "
            "limit."
        },
    )
    failure_reward: float = field(
        default=0.0, metadata={"help": "The reward of samples whose reward function timed out."}
    )
    eval_steps: int | None = field(
        default=50,
        metadata={
            "help": "Validate the deterministic policy every this many steps and at the end (with an eval dataset). "
            "None: never during training."
        },
    )
    eval_num_examples: int | None = field(
        default=None, metadata={"help": "How many validation prompts are used. None: all."}
    )
    load_best_model_at_end: bool = field(
        default=False,
        metadata={
            "help": "Keep the adapter of the validation with the best eval_reward (ties: the earlier) as the run's "
            "adapter, rather than the last step's; needs eval_steps. The last weights stay in the checkpoints."
        },
    )
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Prompts per process and validation batch."})
    save_steps: int = field(default=50, metadata={"help": "Save a checkpoint every this many steps and at the end."})
    seed: int = field(
        default=42, metadata={"help": "Seeds the data order, the CoT assignment, the budgets drawn and sampling."}
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "'no', 'bf16' or 'fp16': the adapter's update, through Accelerate."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the final adapter with its model card to hub_model_id."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "The Hub repository to push to (e.g. 'user/smollm2-token-adapter')."}
    )
    hub_private_repo: bool | None = field(
        default=None,
        metadata={"help": "Make the Hub repository private when it is created. None: the Hub's default."},
    )
    plot: bool = field(
        default=True,
        metadata={"help": "Write PNG plots of the action probabilities and rewards to output_dir/plots."},
    )
    beta: float | None = renamed_field("entropy_coef", "the entropy bonus; in TRL, beta is the KL coefficient")
    max_new_tokens: int | None = renamed_field("max_completion_length", "TRL's name for the largest completion")
    scale_advantages: bool | None = renamed_field(
        "scale_rewards", "TRL's name; scale_advantages=true is scale_rewards='batch'"
    )

    def __post_init__(self):
        self._check_renamed_and_trackers()
        if self.token_budgets is None:
            self.token_budgets = [self.max_completion_length]
        if str(self.scale_rewards).lower() in ("true", "false"):  # as TRL's: a bool from a YAML file or the CLI
            self.scale_rewards = "group" if str(self.scale_rewards).lower() == "true" else "none"
        positive_ints = ("max_steps", "per_device_train_batch_size", "num_generations", "max_completion_length")
        for name in positive_ints + ("save_steps", "logging_steps", "per_device_eval_batch_size"):
            self._check_int(name, 1)
        for name in ("eval_steps", "eval_num_examples", "save_total_limit"):
            self._check_int(name, 1, optional=True)
        self._check("learning_rate", self.learning_rate > 0, "> 0")
        self._check("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1]")
        self._check("entropy_coef", self.entropy_coef >= 0, ">= 0")
        self._check("baseline", self.baseline in BASELINES, f"one of {BASELINES}")
        self._check("baseline_momentum", 0 <= self.baseline_momentum < 1, "in [0, 1)")
        self._check("scale_rewards", self.scale_rewards in SCALE_REWARDS, f"one of {SCALE_REWARDS}")
        group_ok = self.scale_rewards != "group" or self.num_generations >= 2
        self._check("scale_rewards", group_ok, "'none' or 'batch' with num_generations=1 (a group of one)")
        self._check("cot_ratio", 0 <= self.cot_ratio <= 1, "in [0, 1]")
        best_ok = not self.load_best_model_at_end or self.eval_steps is not None
        self._check("load_best_model_at_end", best_ok, "False when eval_steps is None (nothing is validated)")
        threshold = self.max_prob_threshold
        self._check("max_prob_threshold", threshold is None or 0 < threshold <= 1, "None or in (0, 1]")
        for name in ("token_budgets", "parallel_budgets"):
            budgets = getattr(self, name)
            valid = isinstance(budgets, list) and budgets and all(isinstance(b, int) and b >= 1 for b in budgets)
            self._check(name, valid, "a non-empty list of ints >= 1")
        self._check(
            "token_budgets",
            max(self.token_budgets) <= self.max_completion_length,
            f"at most max_completion_length={self.max_completion_length}",
        )
        _ = self.pass_k  # validates reward_aggregation
        self._check("action_sampling", self.action_sampling in ACTION_SAMPLING, f"one of {ACTION_SAMPLING}")
        enough = self.action_sampling != "all" or self.num_generations >= max(self.parallel_budgets)
        self._check(
            "num_generations",
            enough,
            f">= max(parallel_budgets)={max(self.parallel_budgets)} with "
            "action_sampling='all' (every budget's reward comes from an action's num_generations samples)",
        )
        if isinstance(self.vllm_engine_kwargs, str):
            try:
                self.vllm_engine_kwargs = json.loads(self.vllm_engine_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"AdapterTrainerConfig.vllm_engine_kwargs must be a dict or a JSON object string, got "
                    f"{self.vllm_engine_kwargs!r} ({error})."
                ) from error
        kwargs_ok = self.vllm_engine_kwargs is None or isinstance(self.vllm_engine_kwargs, dict)
        self._check("vllm_engine_kwargs", kwargs_ok, "None, a dict or a JSON object string")
        self._check("mixed_precision", self.mixed_precision in ("no", "bf16", "fp16"), "no|bf16|fp16")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub=True needs hub_model_id (e.g. 'user/smollm2-token-adapter').")

    @property
    def pass_k(self) -> int | None:
        """`k` of `reward_aggregation="pass@k"`, else `None`."""
        if self.reward_aggregation in ("mean", "best_of_b"):
            return None
        match = re.fullmatch(r"pass@([1-9]\d*)", str(self.reward_aggregation))
        self._check("reward_aggregation", match, "'mean', 'best_of_b' or 'pass@k' (k >= 1)")
        k = int(match.group(1))
        self._check("reward_aggregation", k <= min(self.parallel_budgets), "k <= min(B)")
        return k
