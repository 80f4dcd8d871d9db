"""What the adapter and draft trainers share: their configurations' checks and renamed fields, and the scaffolding of
a run (its folder, checkpoints, trackers, metrics log, progress bar and training loop)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from . import checkpointing
from .reporting import MetricsWriter

logger = logging.getLogger(__name__)

REPORT_TO = ("none", "all", "tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive")
# The fields made by `renamed_field`, each with its new name and why. (Not in the fields' metadata: HfArgumentParser
# passes that on to argparse.)
_RENAMED: dict[Field, tuple[str, str]] = {}


def renamed_field(new_name: str, note: str) -> Any:
    """
    A dataclass field under a name the configuration no longer uses, kept only to refuse it: a YAML file, JSON dict or
    command line written for an older version fails with an error that names the new field (see
    [`BaseTrainerConfig`]) instead of training with the new field's default.

    Args:
        new_name (`str`): the field's current name.
        note (`str`): why it was renamed.
    """
    spec = field(default=None, metadata={"help": f"Renamed to {new_name} ({note}); setting it is an error."})
    _RENAMED[spec] = (new_name, note)
    return spec


@dataclass
class BaseTrainerConfig:
    """
    What [`AdapterTrainerConfig`] and [`DraftTrainerConfig`] share: the settings of a run's bookkeeping, the checks
    of `__post_init__`, the refusal of renamed fields ([`renamed_field`]), the trackers and `to_dict`.

    Parameters:
        save_total_limit (`int`, *optional*): keep at most this many checkpoints (all when `None`).
        logging_steps (`int`): log the training metrics every this many steps (and at the last).
        report_to (`list[str]`): trackers the metrics also go to ([`REPORT_TO`]); `["none"]` by default.
        run_name (`str`, *optional*): the trackers' run name (default: the trainer's `tracker_project_name`).
        disable_tqdm (`bool`): no progress bars.
    """

    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints, deleting the oldest. None: keep all."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Log the training metrics every this many steps."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": f"Trackers the metrics also go to, among {', '.join(REPORT_TO)}."},
    )
    run_name: str | None = field(
        default=None,
        metadata={
            "help": "The trackers' run name (default: hf_adaptive_decoding, or hf_adaptive_decoding_draft for a "
            "draft adapter)."
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    def _check_renamed_and_trackers(self) -> None:
        """Refuse a renamed field that is set; accept a single tracker name for `report_to`."""
        for spec in fields(self):
            new_name, note = _RENAMED.get(spec, (None, None))
            if new_name is not None and getattr(self, spec.name) is not None:
                raise ValueError(
                    f"{type(self).__name__}.{spec.name} is now `{new_name}` ({note}): set `{new_name}` instead "
                    f"(`{new_name}:` in a YAML or JSON config, `--{new_name}` on the command line)."
                )
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        unknown = sorted(set(self.report_to) - set(REPORT_TO))
        if unknown:
            raise ValueError(f"{type(self).__name__}.report_to has {unknown}; allowed: {list(REPORT_TO)}.")

    def _check(self, name: str, ok: Any, allowed: str) -> None:
        """Raise a `ValueError` naming the field `name` and what it may be, unless `ok`."""
        if not ok:
            raise ValueError(f"{type(self).__name__}.{name} must be {allowed}, got {getattr(self, name)!r}.")

    def _check_int(self, name: str, minimum: int, optional: bool = False) -> None:
        """The field `name` is an int (not a bool) of at least `minimum`, or `None` when `optional`."""
        value = getattr(self, name)
        is_int = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        allowed = f"{'None or ' if optional else ''}an int >= {minimum}"
        self._check(name, is_int or (optional and value is None), allowed)

    @classmethod
    def renamed_fields(cls) -> dict[str, str]:
        """The old names this configuration refuses, each with its current name."""
        return {spec.name: _RENAMED[spec][0] for spec in fields(cls) if spec in _RENAMED}

    @classmethod
    def with_current_names(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Settings recorded by an older version (a checkpoint's `config`), with renamed keys under their new names."""
        renamed = cls.renamed_fields()
        return {renamed.get(key, key): value for key, value in settings.items()}

    @property
    def trackers(self) -> list[str]:
        """The trackers of `report_to`, without `"none"`."""
        return [name for name in self.report_to if name != "none"]

    def to_dict(self) -> dict[str, Any]:
        """The settings, without the renamed fields."""
        renamed = self.renamed_fields()
        return {key: value for key, value in asdict(self).items() if key not in renamed}


class BaseAdapterTrainer:
    """
    The scaffolding of [`AdapterTrainer`] and [`DraftTrainer`]: an adapter updated through Accelerate for
    `args.max_steps` steps, with its run folder (`output_dir`) prepared under the overwrite and resume rules,
    crash-safe checkpoints every `save_steps`, trackers (`report_to`), the metrics log (`metrics.jsonl`) every
    `logging_steps`, a progress bar, and validation every `eval_steps`.

    A subclass calls `super().__init__(args, ...)` before preparing its adapter with `self.accelerator`, sets
    `self.adapter`, and implements `_training_step`, `_evaluate_during_training` and `_finish`; the other hooks are
    optional.

    Args:
        args ([`BaseTrainerConfig`]): the configuration; besides its own fields, it has `output_dir`,
            `overwrite_output_dir`, `max_steps`, `eval_steps` and `save_steps`.
        accelerator_kwargs: passed on to [`~accelerate.Accelerator`].
    """

    #: The trackers' project name when `run_name` is not set.
    tracker_project_name: str = "hf_adaptive_decoding"
    #: The progress bar's description.
    progress_description: str = "Training"
    #: The entries of `state` a checkpoint restores, and those it restores when it has them.
    resumed_state: tuple[str, ...] = ("global_step", "log_history")
    optional_resumed_state: tuple[str, ...] = ("best_metric", "best_step")
    #: The validation metric [`_keep_if_best`] compares (higher is better).
    metric_for_best_model: str = "eval_reward"
    #: Settings that may change when a run is resumed without changing what it computes until its old end; any other
    #: change, or another number of processes, is warned about. `None`: resuming compares nothing.
    resumable_changes: frozenset[str] | None = None

    def __init__(self, args: Any, **accelerator_kwargs: Any):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            log_with=args.trackers or None, project_dir=str(self.output_dir), **accelerator_kwargs
        )
        self.state: dict[str, Any] = {"global_step": 0, "log_history": []}
        self.adapter: Any = None

    @property
    def unwrapped_adapter(self) -> PreTrainedModel:
        """The adapter without Accelerate's wrapper."""
        return self.accelerator.unwrap_model(self.adapter)

    # ----------------------------------------------------------------------------------------------- hooks

    def _before_loop(self) -> None:
        """Runs after the run folder and the trackers are ready, before the first step (or the resumed one)."""

    def _training_step(self, step: int) -> dict[str, float]:
        """Update the adapter once; `step` counts from 1. Returns the step's metrics."""
        raise NotImplementedError

    def _progress_postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows of a step's metrics."""
        return {}

    def _evaluate_during_training(self, step: int) -> None:
        """Validate at `step` (called when `eval_steps` says so) and log the results."""
        raise NotImplementedError

    def _finish(self) -> dict[str, Any]:
        """Save the final adapter and what goes with it; returns what [`train`] returns."""
        raise NotImplementedError

    def _discard_previous_run(self) -> None:
        """(Main process) What `overwrite_output_dir` deletes of an earlier run: its checkpoints, metrics and the
        copies of its best adapters."""
        checkpointing.discard_checkpoints_after(self.output_dir, -1)
        (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
        for folder in self.output_dir.glob("best-*"):
            shutil.rmtree(folder)

    # ----------------------------------------------------------------------------------------------- best model

    def _keep_if_best(self, step: int, results: dict[str, Any]) -> None:
        """Record `step` as the best so far when its `metric_for_best_model` beats every earlier validation (ties
        keep the earlier step), and with `load_best_model_at_end` keep a copy of the adapter in `best-<step>/`."""
        value = results[self.metric_for_best_model]
        if value > self.state.get("best_metric", float("-inf")):
            self.state.update(best_metric=value, best_step=step)
            if getattr(self.args, "load_best_model_at_end", False) and self.accelerator.is_main_process:
                # Before the checkpoint that records it, and kept after the run: a resumed or extended run may
                # still end on it. (A few copies of a small adapter.)
                self.unwrapped_adapter.save_pretrained(self.output_dir / f"best-{step}")

    def _best_adapter(self) -> PreTrainedModel | None:
        """The best validated adapter when `load_best_model_at_end` and there is one, else `None`."""
        if not getattr(self.args, "load_best_model_at_end", False) or "best_step" not in self.state:
            return None
        return type(self.unwrapped_adapter).from_pretrained(self.output_dir / f"best-{self.state['best_step']}")

    # ----------------------------------------------------------------------------------------------- loop

    def train(self, resume_from_checkpoint: bool | str | os.PathLike | None = None) -> dict[str, Any]:
        """
        Train for `max_steps` steps, logging every `logging_steps`, validating every `eval_steps` and checkpointing
        every `save_steps` (each also at the last step).

        Args:
            resume_from_checkpoint (`bool` or `str`, *optional*): `True` resumes from the newest complete checkpoint
                in `output_dir`, a path from that checkpoint; the run then continues exactly as if uninterrupted.

        Returns:
            `dict`: [`AdapterTrainer`]: the final metrics (the last logged training metrics and validation results);
            [`DraftTrainer`]: the validation results of the saved adapter.
        """
        args, accelerator = self.args, self.accelerator
        self._prepare_output_dir(resume_from_checkpoint)
        self._init_trackers()
        self._before_loop()
        progress = self._progress_bar(total=args.max_steps, initial=self.state["global_step"])
        while self.state["global_step"] < args.max_steps:
            step = self.state["global_step"] + 1
            metrics = self._training_step(step)
            self.state["global_step"] = step
            progress.update(1)
            progress.set_postfix(self._progress_postfix(metrics))
            if self._is_due(step, args.logging_steps):
                self._log({"step": step, **metrics})
            if self._is_due(step, args.eval_steps):
                self._evaluate_during_training(step)
            if self._is_due(step, args.save_steps):
                checkpointing.save_and_rotate(accelerator, self.output_dir, step, self.state, args.save_total_limit)
        progress.close()
        result = self._finish()
        accelerator.end_training()
        return result

    def _is_due(self, step: int, every: int | None) -> bool:
        """Whether something done every `every` steps (never when `None`) is due at `step`: also at the last step."""
        return bool(every) and (step % every == 0 or step == self.args.max_steps)

    def _progress_bar(self, iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
        """A progress bar on the local main process, unless `disable_tqdm`."""
        kwargs.setdefault("desc", self.progress_description)
        disable = self.args.disable_tqdm or not self.accelerator.is_local_main_process
        return tqdm(iterable, disable=disable, **kwargs)

    def _prepare_output_dir(self, resume_from_checkpoint: bool | str | os.PathLike | None) -> None:
        """Resume (dropping whatever a previous attempt wrote after the checkpoint), or start in a fresh folder."""
        args, accelerator = self.args, self.accelerator
        self.state["config"], self.state["num_processes"] = args.to_dict(), accelerator.num_processes
        self._metrics = MetricsWriter(self.output_dir, enabled=accelerator.is_main_process)
        if resume_from_checkpoint:
            checkpoint = checkpointing.resolve_checkpoint(self.output_dir, resume_from_checkpoint)
            saved = checkpointing.load_checkpoint(accelerator, checkpoint)
            self._warn_about_changed_settings(saved, checkpoint)
            self.state.update({key: saved[key] for key in self.resumed_state})
            self.state.update({key: saved[key] for key in self.optional_resumed_state if key in saved})
            if accelerator.is_main_process:
                checkpointing.discard_checkpoints_after(self.output_dir, self.state["global_step"])
                self._metrics.truncate(self.state["global_step"])
            logger.info("Resumed from %s at step %d.", checkpoint, self.state["global_step"])
        elif checkpointing.complete_checkpoints(self.output_dir) or self._metrics.path.exists():
            if not args.overwrite_output_dir:
                raise ValueError(
                    f"output_dir {str(self.output_dir)!r} already holds a training run. Pass "
                    "resume_from_checkpoint=True to continue it, overwrite_output_dir=True to start over there, or "
                    "another output_dir."
                )
            if accelerator.is_main_process:
                self._discard_previous_run()
        accelerator.wait_for_everyone()

    def _warn_about_changed_settings(self, saved: dict[str, Any], checkpoint: Path) -> None:
        """Warn when `resumable_changes` is set and the run is resumed with other settings than it was saved with."""
        if self.resumable_changes is None:
            return
        processes = self.accelerator.num_processes
        changed = sorted(
            key
            for key, value in type(self.args).with_current_names(saved.get("config", {})).items()
            if key not in self.resumable_changes and self.state["config"].get(key) != value
        )
        if changed or saved.get("num_processes", processes) != processes:
            logger.warning(
                "Resuming %s with other settings than it was saved with (%s; processes %s -> %d): the run will not "
                "continue as it would have uninterrupted.",
                checkpoint,
                ", ".join(changed) or "none",
                saved.get("num_processes"),
                processes,
            )

    def _init_trackers(self) -> None:
        if self.args.trackers:
            # Trackers' hyperparameter tables take scalars only (tensorboard refuses lists and None).
            config = {
                key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
                for key, value in self.args.to_dict().items()
            }
            self.accelerator.init_trackers(self.args.run_name or self.tracker_project_name, config=config)

    def _log(self, entry: dict[str, Any]) -> None:
        """Record `entry` (with its `step`) in the log history, `metrics.jsonl` and the trackers."""
        self.state["log_history"].append(entry)
        self._metrics.write(entry)
        if self.args.trackers:
            self.accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=entry["step"])
