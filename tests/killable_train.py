"""Run by `test_checkpointing.py` in a subprocess that gets SIGKILLed while writing checkpoint-3."""

import os
import sys
import time
from pathlib import Path

from hf_adaptive_decoding.training import checkpointing
from tests.training.test_trainer import make_trainer

if __name__ == "__main__":
    folder, moment = Path(sys.argv[1]), sys.argv[2]
    real_replace = os.replace

    def replace_then_hang(source, target):
        if str(target).endswith("checkpoint-3"):
            if moment == "after_rename":  # renamed, but the completion marker is not written yet
                real_replace(source, target)
            (folder / "saving").touch()
            time.sleep(600)
        return real_replace(source, target)

    checkpointing.os.replace = replace_then_hang
    make_trainer(folder, max_steps=5, save_steps=1, eval_steps=None, plot=False, save_total_limit=None).train()
