import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_adaptive_decoding.training import checkpointing
from tests.training.test_trainer import adapter_state, make_trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("moment", ["before_rename", "after_rename"])
def test_a_process_killed_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, moment):
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "killable_train.py"), str(tmp_path), moment],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "saving").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = tmp_path / "run"
    assert checkpointing.resolve_checkpoint(run, True).name == "checkpoint-2"
    assert [p.name for p in checkpointing.complete_checkpoints(run)] == ["checkpoint-1", "checkpoint-2"]

    resumed = make_trainer(tmp_path, max_steps=5, save_steps=1, eval_steps=None, plot=False, save_total_limit=None)
    resumed.train(resume_from_checkpoint=True)
    assert [p.name for p in checkpointing.complete_checkpoints(run)][-3:] == [
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-5",
    ]
    assert not list(run.glob(".staging-*"))
    uninterrupted = make_trainer(tmp_path / "reference", max_steps=5, eval_steps=None, plot=False)
    uninterrupted.train()
    expected, actual = adapter_state(uninterrupted), adapter_state(resumed)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_resume_refuses_what_is_not_a_complete_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpointing.resolve_checkpoint(tmp_path, True)
    (tmp_path / "checkpoint-7").mkdir()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpointing.resolve_checkpoint(tmp_path, tmp_path / "checkpoint-7")
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        checkpointing.resolve_checkpoint(tmp_path, tmp_path / "missing")


def test_rotation_keeps_the_newest(tmp_path):
    for step in (1, 2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpointing.COMPLETE_MARKER).write_text("{}")
    checkpointing.rotate_checkpoints(tmp_path, 2)
    assert [p.name for p in checkpointing.complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def test_a_recipes_resume_argument(tmp_path):
    run = tmp_path / "run"
    assert checkpointing.parse_resume_argument("auto", run) == (None, True)  # nothing to resume: start over
    assert checkpointing.parse_resume_argument(None, run) == (None, None)
    assert checkpointing.parse_resume_argument("False", run) == (None, None)
    assert checkpointing.parse_resume_argument("latest", run) == (True, None)
    assert checkpointing.parse_resume_argument(str(run / "checkpoint-3"), run) == (str(run / "checkpoint-3"), None)
    (run / "checkpoint-3").mkdir(parents=True)
    assert checkpointing.parse_resume_argument("auto", run) == (None, True)  # not complete: it does not count
    (run / "checkpoint-3" / checkpointing.COMPLETE_MARKER).write_text("{}")
    assert checkpointing.parse_resume_argument("auto", run) == (True, False)
