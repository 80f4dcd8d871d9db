"""Random numbers that belong to a row: keyed by (problem, sample, position), never by what the other rows do.

`torch.multinomial` on a batch draws from one shared stream, so a row's sample depends on how many rows came before it,
which rows finished, and how many random numbers the policy drew. Here every random number is a hash of the row's key,
the decoding position and a stream id, so two decoders that agree on a prefix draw the same next token, whatever the
other rows of their batches do: decoders can be compared pair by pair (common random numbers).

A token is drawn by inverse-CDF sampling with one keyed uniform per row and step (the same coupling vLLM and SGLang get
from their per-request generators, at the cost of one cumulative sum instead of a vocabulary of noise). The policy's
actions are drawn the same way from a stream of their own, so the tokens do not depend on whether, or how often, a
policy draws an action: a static decoder and a policy that always picks its action produce the same text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

TOKEN_STREAM = 0
ACTION_STREAM = 1
_MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # < 2**27: every product of a 32-bit lane stays below 2**63, so int64 never overflows


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (full avalanche) on int64 tensors holding values in [0, 2**32)."""
    x = ((x >> 16) ^ x) * _MULTIPLIER & _MASK32
    x = ((x >> 16) ^ x) * _MULTIPLIER & _MASK32
    return (x >> 16) ^ x


def _combine(hashed: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Mix `value` into already-mixed keys (a Python int stays on the host side: no device copy)."""
    return _mix32(hashed ^ (value & _MASK32))


def derive_keys(keys: torch.Tensor, index: torch.Tensor | int) -> torch.LongTensor:
    """New keys from `keys` (any int64) and an index (e.g. a row's sample index within its problem), in [0, 2**32).

    Row keys are 32-bit: among `N` rows, about `N**2 / 2**33` pairs share their noise (0.2 pairs at 5,000 problems x
    64 samples). Such rows belong to different problems, so their prompts differ; comparisons stay paired.
    """
    keys = keys.long()
    return _combine(_mix32(_mix32(keys & _MASK32) ^ ((keys >> 32) & _MASK32)), index)


def keyed_uniforms(keys: torch.Tensor, position: torch.Tensor | int, stream: int) -> torch.DoubleTensor:
    """One uniform in [0, 1) per key, a function of (key, position, stream) only: one of 2**32 values spread over
    53-bit doubles (a probability below 2**-32 is drawn at a rate off by at most that much)."""
    hashed = _combine(_combine(_mix32(keys.long() & _MASK32), position), stream)
    high, low = hashed >> 5, _mix32(hashed ^ 0x9E3779B9) >> 6  # 27 + 26 bits
    return (high * 67108864 + low).double() / 2.0**53


def sample_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.LongTensor:
    """Inverse-CDF sampling: per row, the first index whose cumulative probability exceeds `uniform * total`.

    Entries of probability 0 are never chosen; rows need not be normalised.
    """
    cdf = probs.double().cumsum(dim=-1)
    targets = uniforms.to(cdf.device, cdf.dtype) * cdf[:, -1]
    picked = torch.searchsorted(cdf, targets[:, None], right=True).squeeze(-1)
    return picked.clamp(max=probs.shape[-1] - 1)


def sample_from_logits(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.LongTensor:
    """[`sample_from_probs`] of `softmax(scores)` (`-inf` entries are never chosen)."""
    return sample_from_probs(scores.float().softmax(dim=-1), uniforms)


def choose_actions(
    probs: torch.Tensor, deterministic: bool = False, noise: torch.Tensor | None = None
) -> torch.LongTensor:
    """A policy's action per row from its probabilities: the argmax, or an inverse-CDF draw from `noise` (one uniform
    per row; drawn from torch's global generator when not given)."""
    if deterministic:
        return probs.argmax(dim=-1)
    valid = torch.isfinite(probs).all(dim=-1) & (probs >= 0).all(dim=-1) & (probs.sum(dim=-1) > 0)
    if not bool(valid.all()):  # one host sync per decision, as torch.multinomial's own check
        rows = (~valid).nonzero().flatten().tolist()
        raise ValueError(
            f"The policy's action probabilities of row(s) {rows[:16]} are not a distribution (NaN, inf, negative or "
            f"all zero), e.g. {probs[rows[0]].tolist()}: the adapter's outputs diverged (fp16 overflow or training)."
        )
    if noise is None:
        noise = torch.rand(probs.shape[0], device=probs.device, dtype=torch.float64)
    return sample_from_probs(probs, noise)


def noise_keys(seed: int, ids: Sequence[int | str]) -> torch.LongTensor:
    """Stable keys for problems: a hash of `(seed, id)`, the same whichever batch or order a problem is run in."""
    digests = [hashlib.blake2b(f"{seed}:{problem}".encode(), digest_size=8).digest() for problem in ids]
    return torch.tensor([int.from_bytes(digest, "little") >> 1 for digest in digests], dtype=torch.long)


def global_generator_key(device: torch.device | str = "cpu") -> int:
    """A key read off the state of torch's default generator for `device`, without advancing it: a seeded call gets
    the same key, and later calls (after the generator moved on) other keys, while the stream that transformers'
    own sampling draws from stays exactly as it would be without us."""
    device = torch.device(device)
    if device.type == "cpu":
        state = torch.random.get_rng_state()
    else:  # the generator transformers draws that device's tokens from (CUDA, MPS, XPU, ...)
        module = torch.get_device_module(device.type)
        state = module.get_rng_state(device) if device.index is not None else module.get_rng_state()
    return int.from_bytes(hashlib.blake2b(state.cpu().numpy().tobytes(), digest_size=8).digest(), "little") >> 1


def random_keys(count: int, device: torch.device | str | None = None) -> torch.LongTensor:
    """Fresh keys drawn from torch's global generator (what a seeded training run uses)."""
    return torch.randint(0, 2**62, (count,), device=device)
