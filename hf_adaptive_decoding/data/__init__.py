"""Datasets and prompts: GSM8K / MATH / HumanEval / CodeContests loaders, the built-in arithmetic tasks, prompt
encoding."""
