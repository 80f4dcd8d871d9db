"""Crash-safe checkpoints: a checkpoint folder either is complete or does not exist under its final name."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete.json"
STAGING_PREFIX = ".staging-"


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, trainer_state: dict) -> Path:
    """
    Write the full training state (adapter, optimizer, scheduler, every process's RNG states and the objects
    registered with `accelerator.register_for_checkpointing`) to `output_dir/checkpoint-{step}`.

    Everything goes to a staging folder, is flushed to disk and renamed into place in one atomic `os.replace`; the
    completion marker is written last. Only folders with the marker count: a run killed at any point leaves the
    previous checkpoints usable, and at worst an unmarked folder that resuming ignores and the next save replaces.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    staging = output_dir / f"{STAGING_PREFIX}{PREFIX}{step}"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob(f"{STAGING_PREFIX}*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        _fsync_tree(staging)
        if final.exists():  # the same step saved again after a resume
            _remove(final)
        os.replace(staging, final)
        marker = final / COMPLETE_MARKER
        marker.write_text(json.dumps({"global_step": step}))
        _fsync_tree(final)
    accelerator.wait_for_everyone()
    return final


def save_and_rotate(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    trainer_state: dict,
    save_total_limit: int | None,
) -> Path:
    """[`save_checkpoint`], then (main process) [`rotate_checkpoints`]."""
    saved = save_checkpoint(accelerator, output_dir, step, trainer_state)
    if accelerator.is_main_process:
        rotate_checkpoints(output_dir, save_total_limit)
    return saved


def is_complete(folder: str | os.PathLike) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if (match := re.fullmatch(rf"{PREFIX}(\d+)", path.name)) and is_complete(path)
    ]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: bool | str | os.PathLike) -> Path:
    """`True`: the newest complete checkpoint in `output_dir`; a path: that checkpoint, which must be complete."""
    if resume_from_checkpoint is True:
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"resume_from_checkpoint=True, but {str(output_dir)!r} holds no complete checkpoint "
                f"({PREFIX}<step> with {COMPLETE_MARKER})."
            )
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint folder at {str(path)!r}.")
    if not is_complete(path):
        raise ValueError(
            f"{str(path)!r} is not a complete checkpoint (no {COMPLETE_MARKER}: the run was killed while writing it). "
            f"Complete ones in its folder: {[p.name for p in complete_checkpoints(path.parent)]}."
        )
    return path


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict:
    """Restore what [`save_checkpoint`] wrote; returns the trainer state."""
    accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / "trainer_state.json").read_text())


def discard_checkpoints_after(output_dir: str | os.PathLike, step: int) -> None:
    """Delete the checkpoints (complete or not) of steps after `step`, and staging folders: what a run that is
    resumed from `step`, or started over (`step=-1`), must not find later."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for path in output_dir.iterdir():
        match = re.fullmatch(rf"(?:{re.escape(STAGING_PREFIX)})?{PREFIX}(\d+)", path.name)
        if match and (int(match.group(1)) > step or path.name.startswith(STAGING_PREFIX)):
            _remove(path)


def rotate_checkpoints(output_dir: str | os.PathLike, save_total_limit: int | None) -> None:
    """Delete the oldest complete checkpoints beyond `save_total_limit`."""
    if save_total_limit is None:
        return
    for old in complete_checkpoints(output_dir)[:-save_total_limit]:
        _remove(old)


def _remove(checkpoint: Path) -> None:
    # The marker goes first: a deletion cut short must not leave a half-deleted folder that looks complete.
    (checkpoint / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(checkpoint, ignore_errors=True)


def parse_resume_argument(value: str | None, output_dir: str | os.PathLike) -> tuple[bool | str | None, bool | None]:
    """
    A recipe's `--resume_from_checkpoint` as [`~BaseAdapterTrainer.train`] takes it.

    Args:
        value (`str`, *optional*): `"true"` or `"latest"` (the newest complete checkpoint in `output_dir`), a
            checkpoint folder, `"false"`, `"none"` or nothing (start a new run), or `"auto"`: the newest checkpoint if
            `output_dir` holds one, else start over in `output_dir` (what a killed run that is simply started again
            needs).
        output_dir (`str` or `os.PathLike`): the run's folder.

    Returns:
        `tuple`: `resume_from_checkpoint` for `train`, and `True` when the run must start over in `output_dir`
        (`"auto"` without a checkpoint: set `overwrite_output_dir`), `False` when it must not (`"auto"` with one),
        `None` when the settings decide.
    """
    lowered = str(value).lower()
    if lowered == "auto":
        resume = bool(complete_checkpoints(output_dir))
        return (True if resume else None), not resume
    if lowered in ("true", "latest"):
        return True, None
    if value is None or lowered in ("false", "none", ""):
        return None, None
    return value, None
