"""Decoding adapters: the action space, the policy model, `AutoDecodingAdapter` and the shipped adapters."""
