"""Seeds that do not depend on torch's global random state, the device or the process.

Two kinds, one helper each:

- :func:`name_generator`: the initial values of a tensor are drawn from a generator seeded with the
  tensor's name (temporal layers, Motion Attention, the weight fingerprint, the tiny word encoder),
  so a model built twice, anywhere, starts from the same weights.
- :func:`step_generator`: the randomness of step ``k`` of a seeded run (tuning's order, timestep and
  noise; sampling's fresh noise at eta > 0; a fixed shuffle, drawn as step -1) comes from a
  generator seeded with ``(seed, k)``, so a resumed run draws what an uninterrupted one would have.

Every draw happens on the host; callers copy the result to their device.
"""

from __future__ import annotations

import hashlib

import torch

_MAX_SEED = 2**63 - 1


def name_seed(name: str) -> int:
    """A 63-bit seed derived from a name (stable across runs, machines and torch versions)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") % _MAX_SEED


def name_generator(name: str) -> torch.Generator:
    """A host generator seeded with :func:`name_seed` of ``name``."""
    return torch.Generator().manual_seed(name_seed(name))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The host generator of step ``step`` of a run seeded with ``seed``. Any integer seed works
    (ComfyUI's go up to 2**64 - 1); neighbouring seeds give unrelated streams."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % _MAX_SEED)
