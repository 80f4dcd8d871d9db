"""Measuring decoders: Pass@k of adapters and baselines on the same problems, reports, and static action selection."""
