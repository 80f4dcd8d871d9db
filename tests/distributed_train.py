"""Run by `test_trainer_distributed.py` under `torchrun --nproc_per_node 2`: one training run, two gloo ranks."""

import json
import sys
from pathlib import Path

import torch

from tests.training.test_trainer import make_trainer

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    trainer = make_trainer(folder, max_steps=3, save_steps=3, eval_steps=3, plot=False)
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    trainer.train()
    rank = trainer.accelerator.process_index
    torch.save(trainer.unwrapped_adapter.state_dict(), folder / f"adapter-rank{rank}.pt")
    (folder / f"indices-rank{rank}.json").write_text(json.dumps(trainer._train_indices(0)))
