"""Speculative decoding with a learned draft length: draft adapters, candidate sources, exact replay, cost model and
the draft trainer."""
