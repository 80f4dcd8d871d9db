"""Data parallelism on CPU with two real gloo processes (`accelerate launch --cpu --num_processes 2` starts one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_two_gloo_processes_train_one_adapter(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(ROOT / "tests" / "distributed_train.py"), str(tmp_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    rank0 = torch.load(tmp_path / "adapter-rank0.pt")
    rank1 = torch.load(tmp_path / "adapter-rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # gradients were synchronised
    indices = [json.loads((tmp_path / f"indices-rank{r}.json").read_text()) for r in (0, 1)]
    assert not set(indices[0]) & set(indices[1])  # each rank rolled out its own prompts
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if "reward" in line]
    per_device, generations = 4, 2
    assert all(line["num_prompts"] == 2 * per_device for line in train)  # metrics cover both ranks' prompts
    token_rows = 2 * per_device * generations
    assert all(line["num_samples"] == token_rows for line in train)
    evals = [line for line in lines if "eval_reward" in line]
    assert evals and all(line["eval_num_prompts"] == 4 for line in evals)  # the 4 validation prompts, split 2 + 2
